"""A run's working folder on the target machine, and the content-addressed blob cache it is fed from.

Layout under the agent's work dir (DESIGN.md, "What runs on the target machine"):

    cache/sha256/ab/cd/<sha256>      every input file once, by hash, read-only
    runs/<run_id>/package/           the package version unpacked (the run's current directory)
    runs/<run_id>/data/              the dataset, hard-linked from the cache (else copied), read-only
    runs/<run_id>/test_data/         the test dataset, when the run names one
    runs/<run_id>/artifacts/         empty and writable
    runs/<run_id>/.prepared          written last: everything above is complete

Each part is built under a temporary name and renamed into place, so a part that exists is whole; a
second `prepare_run` for the same run (an agent restart) reuses the parts that exist and redoes the
rest. Downloads land in a temporary name and are renamed, so runs sharing a file never see half of it.
"""

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from agent.client import ApiClient, ChecksumMismatch
from agent.config import AgentSettings
from shared.archive import extract_zip
from shared.protocol import DatasetManifest, ManifestFile, StartRunPayload

DOWNLOAD_CONCURRENCY = 8
READ_ONLY = 0o444
PREPARED_MARKER = ".prepared"
_TEMP_SUFFIX = ".tmp"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1024 * 1024
# A hard link cannot be made: another filesystem, a filesystem without links, or too many links.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


@dataclass(frozen=True)
class RunFolder:
    root: Path
    package: Path
    data: Path
    test_data: Path | None
    artifacts: Path
    outcome: Path
    spool: Path
    stdout: Path
    stderr: Path


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _temp_name(folder: Path, name: str) -> Path:
    return folder / f".{name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"


class BlobCache:
    """Input files by sha256 under `<work_dir>/cache/sha256/ab/cd/<sha256>`, each read-only.

    A cached file is hashed once per cache object (again whenever its inode, size or mtime changes);
    one whose content does not match its name is removed and fetched again.
    """

    def __init__(self, work_dir: Path, *, concurrency: int = DOWNLOAD_CONCURRENCY) -> None:
        self.root = Path(work_dir) / "cache" / "sha256"
        self._downloads = asyncio.Semaphore(concurrency)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._verified: set[tuple[str, int, int, int]] = set()

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(char not in "0123456789abcdef" for char in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    async def ensure(self, client: ApiClient, run_id: uuid.UUID, sha256: str, size: int) -> Path:
        """The cached file for `sha256`, downloaded for `run_id` only when missing or damaged, and
        marked used now (its atime), so `prune` leaves it alone while a run links it in."""
        path = self.path_for(sha256)
        async with self._holding(sha256):
            if await self._is_good(path, sha256, size):
                return path
            async with self._downloads:
                await self._download(client, run_id, sha256, size, path)
            return path

    @contextlib.asynccontextmanager
    async def _holding(self, sha256: str) -> AsyncIterator[None]:
        """One lock per hash while someone needs it: runs needing the same file fetch it once, and
        `prune` never removes a file between its check and its use."""
        lock, users = self._locks.get(sha256, (asyncio.Lock(), 0))
        self._locks[sha256] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[sha256]
            if users == 1:
                del self._locks[sha256]
            else:
                self._locks[sha256] = (lock, users - 1)

    async def prune(self, older_than: float) -> tuple[int, int]:
        """Remove the cached files that no run folder links (one link: the cache's own) and no run
        has used for `older_than` seconds, and downloads an interrupted agent left; (files, bytes).

        A file a run folder holds as a hard link is never removed, however old; one copied into a run
        folder (no hard links on that filesystem) is the run's own copy, the cache's may go. Each
        removal is decided again under the hash's lock, so a run taking the file at that moment
        either marks it used first or finds it gone and fetches it again.
        """
        removed = freed = 0
        for sha256 in await asyncio.to_thread(self._idle, older_than):
            async with self._holding(sha256):
                size = await asyncio.to_thread(self._remove_if_idle, sha256, older_than)
            if size is not None:
                removed, freed = removed + 1, freed + size
        return removed, freed

    def _idle(self, older_than: float) -> list[str]:
        """The hashes of files idle for `older_than` seconds; stale temporaries are removed here."""
        if not self.root.is_dir():
            return []
        now, found = time.time(), []
        for first in self.root.iterdir():
            for second in first.iterdir() if first.is_dir() else ():
                for entry in second.iterdir() if second.is_dir() else ():
                    try:
                        info = os.lstat(entry)
                    except FileNotFoundError:
                        continue
                    if now - max(info.st_atime, info.st_mtime) < older_than:
                        continue
                    if entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX):
                        _unlink(entry)
                    elif info.st_nlink == 1 and _SHA256.fullmatch(entry.name):
                        found.append(entry.name)
        return found

    def _remove_if_idle(self, sha256: str, older_than: float) -> int | None:
        path = self.path_for(sha256)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        if info.st_nlink != 1 or time.time() - info.st_atime < older_than:
            return None  # linked into a run, or used since the scan
        path.unlink()
        self._verified.discard((sha256, info.st_ino, info.st_size, info.st_mtime_ns))
        return info.st_size

    async def _is_good(self, path: Path, sha256: str, size: int) -> bool:
        return await asyncio.to_thread(self._check, path, sha256, size)

    def _check(self, path: Path, sha256: str, size: int) -> bool:
        """Whether the cached file is whole; a damaged one is removed (never kept under its name)."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return False
        if (sha256, info.st_ino, info.st_size, info.st_mtime_ns) in self._verified:
            self._mark_used(path)
            return True
        if not (stat.S_ISREG(info.st_mode) and info.st_size == size and _sha256_of(path) == sha256):
            os.unlink(path)
            return False
        if stat.S_IMODE(info.st_mode) != READ_ONLY:
            os.chmod(path, READ_ONLY)
        self._remember(path, sha256)
        self._mark_used(path)
        return True

    @staticmethod
    def _mark_used(path: Path) -> None:
        """The atime says when a run last used the file (set here, explicitly: mount options make
        the kernel's own atime unreliable); the mtime, part of what `_verified` keys on, stays."""
        info = os.lstat(path)
        os.utime(path, ns=(time.time_ns(), info.st_mtime_ns), follow_symlinks=False)

    def _remember(self, path: Path, sha256: str) -> None:
        info = os.lstat(path)
        self._verified.add((sha256, info.st_ino, info.st_size, info.st_mtime_ns))

    async def _download(
        self, client: ApiClient, run_id: uuid.UUID, sha256: str, size: int, path: Path
    ) -> None:
        await asyncio.to_thread(os.makedirs, path.parent, exist_ok=True)
        temporary = _temp_name(path.parent, sha256)
        try:
            await client.download_blob(run_id, sha256, temporary)  # verifies the sha256
            await asyncio.to_thread(self._install, temporary, path, sha256, size)
        finally:
            await asyncio.to_thread(_unlink, temporary)

    def _install(self, temporary: Path, path: Path, sha256: str, size: int) -> None:
        actual = os.lstat(temporary).st_size
        if actual != size:
            raise ChecksumMismatch(f"blob {sha256}: {actual} bytes, {size} expected")
        os.chmod(temporary, READ_ONLY)
        os.replace(temporary, path)
        self._remember(path, sha256)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _relative(manifest_path: str) -> PurePosixPath:
    """A manifest's file path, refused unless it stays inside the folder it is written into."""
    path = PurePosixPath(manifest_path)
    if path.is_absolute() or "\\" in manifest_path or any(part in ("", ".", "..") for part in path.parts):
        raise ValueError(f"unsafe path in the dataset manifest: {manifest_path!r}")
    if not path.parts:
        raise ValueError("empty path in the dataset manifest")
    return path


def _materialise(blob: Path, target: Path) -> None:
    """`target` as a hard link to `blob` when possible, else a read-only copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(blob, target)
        return
    except OSError as error:
        if error.errno not in _NO_LINK:
            raise
    shutil.copyfile(blob, target, follow_symlinks=False)
    os.chmod(target, READ_ONLY)


async def _fill(
    client: ApiClient,
    cache: BlobCache,
    run_id: uuid.UUID,
    files: Iterable[ManifestFile],
    folder: Path,
) -> None:
    """Every file of a manifest under `folder`, with at most the cache's concurrency of workers."""
    pending = iter(files)

    async def worker() -> None:
        for entry in pending:  # shared by the workers: each file is taken once
            target = folder.joinpath(*_relative(entry.path).parts)
            blob = await cache.ensure(client, run_id, entry.sha256, entry.size)
            await asyncio.to_thread(_materialise, blob, target)

    async with asyncio.TaskGroup() as group:
        for _ in range(DOWNLOAD_CONCURRENCY):
            group.create_task(worker())


def _remove(path: Path) -> None:
    """Remove a file or a folder tree, if there."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _clear_temporaries(folder: Path) -> None:
    """Create the run's folder, or remove what an interrupted preparation left in it."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX):
            _remove(entry)


async def _build(final: Path, build_into: Callable[[Path], Awaitable[None]]) -> None:
    """Build a part under a temporary name, then rename it into place; nothing left on failure."""
    if await asyncio.to_thread(os.path.isdir, final):
        return  # renamed into place only once whole
    temporary = _temp_name(final.parent, final.name)
    await asyncio.to_thread(os.mkdir, temporary)
    try:
        await build_into(temporary)
        await asyncio.to_thread(os.rename, temporary, final)
    finally:
        await asyncio.to_thread(_remove, temporary)


async def _unpack_package(client: ApiClient, payload: StartRunPayload, run_dir: Path, folder: Path) -> None:
    archive = _temp_name(run_dir, "package.zip")
    try:
        await client.download_package(payload.run_id, archive, payload.package_sha256)
        prefix = payload.package_root or ""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        await asyncio.to_thread(extract_zip, archive, folder, strip_prefix=prefix)
    finally:
        await asyncio.to_thread(_unlink, archive)


async def _fetch_dataset(
    client: ApiClient, cache: BlobCache, run_id: uuid.UUID, test: bool, folder: Path
) -> None:
    manifest: DatasetManifest = await client.dataset_manifest(run_id, test=test)
    await _fill(client, cache, run_id, manifest.files, folder)


async def _nothing(folder: Path) -> None:
    """A run without a dataset gets an empty `data/`."""


def open_run_file(path: Path) -> BinaryIO | None:
    """A file of the run's folder, open for reading; None when it is missing or not a regular file.
    The folder is the package's: a symlink there (to a file only the agent's user may read) or a FIFO
    (whose read would block a thread for good) is not followed, so never shipped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


# Under this much free space a run's failure is put down to a full disk: its traceback, outcome and
# logs may not have been written, so the run's detail says it in words (docs/telemetry.md). Not 0: by
# the time the agent looks, the exited package has given back its spool's unused 4 MiB.
DISK_FULL_BYTES = 16 * 1024 * 1024


def disk_full(path: Path) -> str | None:
    """A sentence saying the disk under `path` is full, or None when it has room (or cannot be read)."""
    try:
        found = os.statvfs(path)
    except OSError:
        return None
    free = found.f_bavail * found.f_frsize
    if free >= DISK_FULL_BYTES:
        return None
    return (
        f"the disk is full: {free} bytes free under {path} (the agent's work dir), so the run's writes "
        "(its checkpoints, outcome, logs, metrics) may have failed with 'No space left on device'"
    )


def run_folder(settings: AgentSettings, payload: StartRunPayload) -> RunFolder:
    """The paths of a run's working folder (nothing is created)."""
    root = Path(settings.agent_work_dir) / "runs" / str(payload.run_id)
    return RunFolder(
        root=root,
        package=root / "package",
        data=root / "data",
        test_data=root / "test_data" if payload.test_dataset else None,
        artifacts=root / "artifacts",
        outcome=root / "outcome.json",
        spool=root / "spool.jsonl",
        stdout=root / "stdout.log",
        stderr=root / "stderr.log",
    )


async def prepare_run(
    client: ApiClient, settings: AgentSettings, payload: StartRunPayload, *, cache: BlobCache
) -> RunFolder:
    """Make (or finish making) the run's working folder; `.prepared` is written once all is whole."""
    folder = run_folder(settings, payload)
    marker = folder.root / PREPARED_MARKER
    if await asyncio.to_thread(os.path.isfile, marker):
        return folder
    await asyncio.to_thread(_clear_temporaries, folder.root)
    await _build(folder.package, partial(_unpack_package, client, payload, folder.root))
    data = partial(_fetch_dataset, client, cache, payload.run_id, False) if payload.dataset else _nothing
    await _build(folder.data, data)
    if folder.test_data is not None:
        await _build(folder.test_data, partial(_fetch_dataset, client, cache, payload.run_id, True))
    await asyncio.to_thread(_finish, folder, marker)
    return folder


def _finish(folder: RunFolder, marker: Path) -> None:
    folder.artifacts.mkdir(exist_ok=True)
    temporary = _temp_name(folder.root, PREPARED_MARKER)
    temporary.write_text(f"{folder.root.name}\n", encoding="utf-8")
    os.replace(temporary, marker)
