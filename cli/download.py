"""Downloads streamed to disk with a byte progress bar on stderr, checked against their sha256.

On an S3 store the API answers a download `307` to a presigned URL of the bucket (docs/storage.md,
"Downloads to people"). httpx follows it and drops `Authorization` on the way, since the bucket is
another origin (`tests/cli/test_downloads.py` sees the request it sends): the token never reaches S3.
The API's `ETag` (on the 307, or on the answer it streams itself) is the file's sha256, so what lands
on disk is hashed on the way and kept only when it matches; S3's own `ETag` is not a sha256 and is not
read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, BinaryIO

import httpx
import typer

from cli import output
from cli.client import Api, api_error
from cli.errors import ApiError, Unreachable, UsageProblem
from cli.upload import progress_bar

# No bound on reading (a large package on a slow link); a stalled connection still ends.
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_CHUNK_BYTES = 1024 * 1024

OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="The file to write, or a folder to write it in (default: here)."),
]


@dataclass(frozen=True)
class Saved:
    path: Path
    sha256: str
    size: int


def target(output_option: Path | None, default_name: str) -> Path:
    """`-o`'s file, or `default_name` inside `-o`'s folder, or in the current folder."""
    if output_option is None:
        return Path(default_name)
    return output_option / default_name if output_option.is_dir() else output_option


def report(saved: Saved, as_json: bool) -> None:
    if as_json:
        output.print_json({"path": str(saved.path), "sha256": saved.sha256, "size": saved.size})
    else:
        output.out.print(output.text(f"Saved {saved.path} ({output.size(saved.size)})."))


def save(api: Api, path: str, destination: Path, *, quiet: bool) -> Saved:
    """GET `path` of the API into `destination` (following a redirect to the store), written whole or
    not at all: a scratch file beside it, renamed once its sha256 matches the API's `ETag`."""
    folder = destination.parent
    if not folder.is_dir():
        raise UsageProblem(f"no folder {folder} to save into")
    descriptor, scratch = tempfile.mkstemp(dir=folder, prefix=".trainyard-", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            sha256, size, expected = _stream(api, path, handle, destination.name, quiet)
        if expected is not None and expected != sha256:
            raise ApiError(
                502,
                {"title": "the download is damaged", "detail": f"got sha256 {sha256}, expected {expected}"},
            )
        os.replace(scratch, destination)
    finally:
        Path(scratch).unlink(missing_ok=True)
    return Saved(destination, sha256, size)


def _stream(api: Api, path: str, handle: BinaryIO, label: str, quiet: bool) -> tuple[str, int, str | None]:
    digest = hashlib.sha256()
    size = 0
    try:
        with api.http.stream("GET", path, follow_redirects=True, timeout=DOWNLOAD_TIMEOUT) as response:
            if response.status_code != 200:
                response.read()
                raise api_error(response)
            first = response.history[0] if response.history else response
            expected = first.headers.get("etag", "").strip('"') or None
            total = int(response.headers.get("content-length", 0)) or None
            with progress_bar(quiet) as progress:
                task = progress.add_task(f"downloading {output.safe(label)}", total=total)
                for chunk in response.iter_bytes(_CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
                    progress.advance(task, len(chunk))
    except httpx.TimeoutException:
        raise Unreachable(f"{api.url} (or its file store) did not answer in time") from None
    except httpx.TransportError as error:
        raise Unreachable(f"cannot fetch {path}: {error or type(error).__name__}") from None
    return digest.hexdigest(), size, expected
