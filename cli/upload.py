"""Uploads streamed from disk with a byte progress bar on stderr.

httpx reads a multipart file part in 64 KiB chunks as it sends them, so a file object that counts
what was read from it measures what went out; nothing is held in memory whole. A folder is zipped
to a temporary file first (a package or a dataset is a zip on the API's side).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cli import output
from cli.client import Api
from cli.errors import UsageProblem

# No bound on sending (a large dataset on a slow link), nor on the checks the API makes before it answers.
UPLOAD_TIMEOUT = httpx.Timeout(None, connect=10.0)


class CountingReader:
    """A binary file whose reads move a progress task; size and `seek` pass through, so httpx sends
    a Content-Length and may rewind it."""

    def __init__(self, handle: BinaryIO, progress: Progress, task: TaskID) -> None:
        self._handle, self._progress, self._task = handle, progress, task
        self._position = handle.tell()

    def _moved(self) -> None:
        position = self._handle.tell()
        self._progress.advance(self._task, position - self._position)
        self._position = position

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._moved()
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        result = self._handle.seek(offset, whence)
        self._moved()
        return result

    def tell(self) -> int:
        return self._handle.tell()

    def fileno(self) -> int:
        return self._handle.fileno()


def zip_folder(folder: Path, target: BinaryIO) -> int:
    """Every file under `folder` (symbolic links not followed), by its path inside it; the count."""
    count = 0
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                if path.is_symlink() or not path.is_file():
                    continue
                archive.write(path, path.relative_to(folder).as_posix())
                count += 1
    target.flush()
    return count


@contextmanager
def zipped(path: Path) -> Iterator[Path]:
    """`path` itself when it is a file, else a temporary zip of the folder, removed afterwards."""
    if path.is_file():
        yield path
        return
    if not path.is_dir():
        raise UsageProblem(f"{path} is neither a file nor a folder")
    with tempfile.NamedTemporaryFile(prefix="trainyard-", suffix=".zip") as handle:
        count = zip_folder(path, cast(BinaryIO, handle))
        output.note(f"zipped {path} ({count} files, {output.size(handle.tell())})")
        yield Path(handle.name)


def progress_bar(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=output.err,
        disable=quiet,
    )


def send_files(
    api: Api, path: str, parts: list[tuple[str, Path, str]], *, data: dict[str, str], quiet: bool
) -> Any:
    """POST `parts` ((field, file, name shown)) as multipart with `data`, with one bar for all of them."""
    total = sum(file.stat().st_size for _, file, _ in parts)
    label = output.safe(parts[0][2] if len(parts) == 1 else f"{len(parts)} files")
    with progress_bar(quiet) as progress, ExitStack() as stack:
        task = progress.add_task(f"uploading {label}", total=total)
        files = [
            (field, (Path(name).name, CountingReader(stack.enter_context(file.open("rb")), progress, task)))
            for field, file, name in parts
        ]
        response = api.send("POST", path, files=files, data=data, timeout=UPLOAD_TIMEOUT)
        progress.update(task, completed=total)
    return response.json()
