"""The blob store: package zips, dataset files and run outputs, addressed by the sha256 of their content.

Callers see only `BlobStore`, so an S3-compatible store can replace `LocalBlobStore` without touching
them. Content addressing makes a write idempotent (identical content is stored once, whoever wrote
it first) and lets a reader trust a name: `ETag` is the hash, and the agent's cache fetches only what
it lacks.

`LocalBlobStore` keeps `<root>/sha256/<ab>/<cd>/<sha256>` and writes through `<root>/tmp` on the same
filesystem, so a blob appears whole or not at all (fsync, then one `os.replace`). Nothing half-written
is ever visible under a hash, and a failed or cut-off upload leaves no file behind.

Both stores verify on reading: `open()` hashes what it streams and withholds the last chunk until the
hash matches the name, so a blob changed behind the store's back (a disk error, a hand in the bucket)
is never handed out whole: the reader gets `BlobCorrupt` instead of the end of it.
`api/core/s3blobs.py` holds the S3-compatible store (docs/storage.md); `api/core/blob_gc.py` the
collector that removes what nothing refers to any more, through `listing`, `info` and `delete`.
"""

import hashlib
import os
import re
import stat
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Generator, Iterator
from contextlib import AbstractContextManager, aclosing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Protocol, Self

import anyio.to_thread

from api.core.config import BLOBS_FOLDER
from api.core.errors import InvalidInput, NotFound, PayloadTooLarge, TrainyardError

# One thread hop per MiB: large enough that hopping costs nothing next to the I/O, small enough that
# a read never holds much in memory.
CHUNK_BYTES = 1024 * 1024
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_HASH_ON_THREAD_BYTES = 64 * 1024
_LISTING_BATCH = 1000  # blobs per batch of a listing: one thread hop, or one ListObjectsV2 page


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    created: bool  # False when identical content was already stored
    # The store that holds it: recording the blob asks the store again whether it still is, since the
    # collector may have taken it in between (`record_blobs`). None for a blob known from a row or a
    # document rather than from a put.
    store: "BlobStore | None" = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob as the store lists it: what the collector needs to judge an object with no row."""

    sha256: str
    size: int
    modified: datetime  # aware, UTC: when the object was written


def check_sha256(value: str) -> str:
    """Return `value` if it is a sha256 in lowercase hex, else raise InvalidInput.

    Every path in the store is built from a hash, so this check is what keeps a name such as
    `../../etc/passwd` from ever reaching the filesystem.
    """
    if not SHA256_PATTERN.fullmatch(value):
        raise InvalidInput("a blob is named by its sha256: 64 lowercase hex digits", code="invalid_sha256")
    return value


class BlobCorrupt(TrainyardError):
    """A stored blob whose content no longer matches its name: the server's fault, never the reader's."""

    status_code = 500

    def __init__(self, sha256: str, actual: str) -> None:
        super().__init__(f"the stored blob {sha256} reads as {actual}: refused", code="blob_corrupt")


def blob_not_found(sha256: str) -> NotFound:
    return NotFound(f"no blob {sha256}", code="blob_not_found")


async def verified(sha256: str, chunks: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """Pass `chunks` through, hashing them; the last chunk comes only once the hash matches `sha256`.

    A large chunk is hashed on a worker thread (hashlib lets go of the GIL): about 0.5 ms a MiB that
    the event loop would otherwise spend on every download."""
    digest = hashlib.sha256()
    held: bytes | None = None
    async with aclosing(chunks):  # a reader that stops early closes the store's stream at once
        async for chunk in chunks:
            if held is not None:
                yield held
            if len(chunk) >= _HASH_ON_THREAD_BYTES:
                await anyio.to_thread.run_sync(digest.update, chunk)
            else:
                digest.update(chunk)
            held = chunk
    if digest.hexdigest() != sha256:
        raise BlobCorrupt(sha256, digest.hexdigest())
    if held is not None:
        yield held


async def spool(
    chunks: AsyncIterable[bytes], temp_dir: Path, *, max_bytes: int, sync: bool
) -> tuple[Path, str, int]:
    """Write a stream to a new file in `temp_dir`, hashing it on the way: (file, sha256, size).

    Refused with `upload_too_large` at the first byte past `max_bytes`; on any error or cancellation
    the file is gone. `sync` makes the bytes durable before a rename puts them under their hash."""
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")
    handle, temp = await anyio.to_thread.run_sync(_create_temp, temp_dir)
    digest = hashlib.sha256()
    size = 0
    pending = bytearray()  # small network chunks gathered so each thread hop writes about a MiB
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"the upload is larger than {max_bytes} bytes", code="upload_too_large")
            pending += chunk
            if len(pending) >= CHUNK_BYTES:
                await anyio.to_thread.run_sync(_write_hashed, handle, digest, pending)
                pending.clear()
        await anyio.to_thread.run_sync(_seal, handle, digest, pending, sync)
    except BaseException:
        # Synchronous on purpose: under cancellation a further await could be cancelled too,
        # and the temporary file must go whatever happened.
        handle.close()
        temp.unlink(missing_ok=True)
        raise
    return temp, digest.hexdigest(), size


@contextmanager
def scratch_file(temp_dir: Path) -> Iterator[Path]:
    """`BlobStore.temp_file()` for a store whose scratch files live in `temp_dir`."""
    descriptor, name = tempfile.mkstemp(dir=temp_dir, prefix="upload-", suffix=".part")
    os.close(descriptor)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # already gone when put_file adopted it


def remove_stale(temp_dir: Path, older_than_seconds: float) -> int:
    """Remove scratch files a crash left in `temp_dir`; returns how many (see `cleanup_temp`)."""
    cutoff = time.time() - older_than_seconds
    removed = 0
    with os.scandir(temp_dir) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


class BlobStore(Protocol):
    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StoredBlob:
        """Store a stream; refuse it with `upload_too_large` past `max_bytes`, leaving nothing behind."""
        ...

    async def put_file(self, path: Path) -> StoredBlob:
        """Adopt a file made with `temp_file()` (for callers that validate a file before storing it)."""
        ...

    async def open(self, sha256: str) -> AsyncIterator[bytes]:
        """Raise `blob_not_found` now, or return the content as a stream of chunks, verified: the stream
        raises `BlobCorrupt` instead of yielding its last chunk when the content does not match."""
        ...

    async def exists(self, sha256: str) -> bool: ...

    async def size(self, sha256: str) -> int: ...

    async def delete(self, sha256: str) -> None:
        """Remove a blob; deleting one that is not there is not an error."""
        ...

    async def info(self, sha256: str) -> BlobInfo | None:
        """The blob's size and time of writing, or None when it is not stored."""
        ...

    def listing(self) -> AsyncIterator[list[BlobInfo]]:
        """Every stored blob, in batches, in no promised order; a name that is not a blob's is skipped."""
        ...

    def temp_file(self) -> AbstractContextManager[Path]:
        """A scratch file that `put_file` can adopt cheaply; removed on exit unless adopted."""
        ...

    async def url_for(self, sha256: str, expires: timedelta) -> str | None:
        """A URL that reads this one blob without the API, valid for `expires`; None when the store
        has no such thing (the local folder). Nothing is checked: the blob may not exist."""
        ...

    async def download_url(
        self, sha256: str, expires: timedelta, *, filename: str, media_type: str
    ) -> str | None:
        """A URL that lets a person's client read this one blob without the API for `expires`, the
        answer naming it `filename` (`attachment`) in `media_type`; None when the store has none (the
        local folder, an S3 store without static credentials). Nothing is checked: the blob may not
        exist."""
        ...

    def download_origin(self) -> str | None:
        """The origin (`scheme://host[:port]`) of the URLs `download_url` gives, for a page's
        Content-Security-Policy; None when it gives none."""
        ...

    def cleanup_temp(self, older_than_seconds: float) -> int:
        """Remove scratch files a crash left behind; returns how many. Run it at start-up.

        Only files older than the threshold go, so uploads in flight in other API processes survive.
        """
        ...


class LocalBlobStore(BlobStore):
    """Blobs in a local folder (the default, `$TRAINYARD_DATA_DIR/blobs`); file I/O runs in threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp_dir = root / "tmp"
        self._blobs = root / "sha256"
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self._blobs.mkdir(parents=True, exist_ok=True)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Self:
        return cls(data_dir / BLOBS_FOLDER)

    def path_of(self, sha256: str) -> Path:
        """Where a blob lives; two levels of fan-out keep any one folder small."""
        check_sha256(sha256)
        return self._blobs / sha256[:2] / sha256[2:4] / sha256

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StoredBlob:
        temp, sha256, size = await spool(chunks, self.temp_dir, max_bytes=max_bytes, sync=True)
        return await anyio.to_thread.run_sync(self._adopt, temp, sha256, size)

    async def put_file(self, path: Path) -> StoredBlob:
        if path.parent.resolve() != self.temp_dir.resolve():
            # Only the temp folder is known to share the store's filesystem, so the rename is atomic.
            raise ValueError(f"{path} was not made by temp_file()")
        return await anyio.to_thread.run_sync(self._put_file, path)

    async def open(self, sha256: str) -> AsyncIterator[bytes]:
        path = self.path_of(sha256)
        if not await anyio.to_thread.run_sync(path.is_file):
            raise blob_not_found(sha256)
        return verified(sha256, self._stream(sha256, path))

    async def exists(self, sha256: str) -> bool:
        return await anyio.to_thread.run_sync(self.path_of(sha256).is_file)

    async def size(self, sha256: str) -> int:
        path = self.path_of(sha256)
        try:
            return (await anyio.to_thread.run_sync(path.stat)).st_size
        except FileNotFoundError as error:
            raise blob_not_found(sha256) from error

    async def delete(self, sha256: str) -> None:
        # The fan-out folders stay: removing one could race a concurrent put that just created it.
        await anyio.to_thread.run_sync(self.path_of(sha256).unlink, True)

    async def info(self, sha256: str) -> BlobInfo | None:
        try:
            found = await anyio.to_thread.run_sync(self.path_of(sha256).stat)
        except FileNotFoundError:
            return None
        return BlobInfo(sha256, found.st_size, datetime.fromtimestamp(found.st_mtime, UTC))

    async def listing(self) -> AsyncIterator[list[BlobInfo]]:
        batches = _walk(self._blobs)
        try:
            while batch := await anyio.to_thread.run_sync(_next_batch, batches):
                yield batch
        finally:
            batches.close()

    async def url_for(self, sha256: str, expires: timedelta) -> None:
        check_sha256(sha256)
        return None  # a folder has no URL of its own: the API serves it

    async def download_url(self, sha256: str, expires: timedelta, *, filename: str, media_type: str) -> None:
        check_sha256(sha256)
        return None

    def download_origin(self) -> None:
        return None

    def temp_file(self) -> AbstractContextManager[Path]:
        return scratch_file(self.temp_dir)

    def cleanup_temp(self, older_than_seconds: float) -> int:
        return remove_stale(self.temp_dir, older_than_seconds)

    async def _stream(self, sha256: str, path: Path) -> AsyncGenerator[bytes, None]:
        try:
            handle = await anyio.to_thread.run_sync(_open_for_reading, path)
        except FileNotFoundError as error:  # deleted between open() and the first read
            raise blob_not_found(sha256) from error
        try:
            while chunk := await anyio.to_thread.run_sync(handle.read, CHUNK_BYTES):
                yield chunk
        finally:
            handle.close()

    def _put_file(self, path: Path) -> StoredBlob:
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
            os.fsync(handle.fileno())  # the caller wrote it and may not have synced it
        return self._adopt(path, digest.hexdigest(), size)

    def _adopt(self, temp: Path, sha256: str, size: int) -> StoredBlob:
        """Move a synced temporary file under its hash, or drop it when that content is already stored.

        Two puts of the same content may both find it missing and both rename: the second replaces
        identical bytes (readers of the first keep their open file), and both report `created`.
        """
        target = self.path_of(sha256)
        try:
            if target.is_file():
                temp.unlink()
                return StoredBlob(sha256, size, created=False, store=self)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, target)
            _fsync_folder(target.parent)  # the rename itself must survive a power cut
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return StoredBlob(sha256, size, created=True, store=self)


def _next_batch(batches: Generator[list[BlobInfo]]) -> list[BlobInfo]:
    return next(batches, [])


def _walk(blobs: Path) -> Generator[list[BlobInfo]]:
    """The blobs under `<root>/sha256/<ab>/<cd>/`, in batches; anything else found there is skipped.
    A file removed while the walk passes is skipped too (the collector itself removes as it goes)."""
    batch: list[BlobInfo] = []
    for first in _folders(blobs):
        for second in _folders(first):
            with os.scandir(second) as entries:
                for entry in entries:
                    if not SHA256_PATTERN.fullmatch(entry.name) or entry.name[:4] != first.name + second.name:
                        continue
                    try:
                        found = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISREG(found.st_mode):
                        continue
                    batch.append(
                        BlobInfo(entry.name, found.st_size, datetime.fromtimestamp(found.st_mtime, UTC))
                    )
                    if len(batch) >= _LISTING_BATCH:
                        yield batch
                        batch = []
    if batch:
        yield batch


def _folders(parent: Path) -> list[Path]:
    with os.scandir(parent) as entries:
        return sorted(Path(entry.path) for entry in entries if entry.is_dir(follow_symlinks=False))


def _write_hashed(handle: BinaryIO, digest: "hashlib._Hash", data: bytearray) -> None:
    digest.update(data)
    handle.write(data)


def _create_temp(temp_dir: Path) -> tuple[BinaryIO, Path]:
    descriptor, name = tempfile.mkstemp(dir=temp_dir, prefix="put-", suffix=".part")
    return os.fdopen(descriptor, "wb"), Path(name)


def _seal(handle: BinaryIO, digest: "hashlib._Hash", rest: bytearray, sync: bool) -> None:
    """Write the last bytes and, for a file about to be renamed into place, sync them to disk."""
    _write_hashed(handle, digest, rest)
    handle.flush()
    if sync:
        os.fsync(handle.fileno())
    handle.close()


def _open_for_reading(path: Path) -> BinaryIO:
    return path.open("rb")


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
