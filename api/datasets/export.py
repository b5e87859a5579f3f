"""A whole dataset version as one zip, written into a scratch file of the blob store.

Blobs are read as streams and written in bounded chunks from worker threads, so no file is ever held
whole in memory. Every entry carries the version's creation time, so one version always makes the same
zip; its `ETag` is the sha256 of those bytes (DESIGN.md, downloads).
"""

import contextlib
import hashlib
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, BinaryIO

import anyio.to_thread

from api.core.blobs import CHUNK_BYTES, BlobStore
from api.datasets.staging import ManifestEntry

# Formats that are compressed already: deflating them again costs time and saves nothing.
STORED_SUFFIXES = frozenset(
    {
        ".7z", ".avi", ".avif", ".bz2", ".gz", ".heic", ".jpeg", ".jpg", ".jp2", ".mkv", ".mov", ".mp3",
        ".mp4", ".npz", ".ogg", ".parquet", ".png", ".rar", ".tgz", ".webm", ".webp", ".xz", ".zip", ".zst",
    }
)  # fmt: skip
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class BuiltZip:
    size: int
    sha256: str


def compression_for(path: str) -> int:
    return zipfile.ZIP_STORED if Path(path).suffix.lower() in STORED_SUFFIXES else zipfile.ZIP_DEFLATED


def _date_time(when: datetime) -> tuple[int, int, int, int, int, int]:
    stamp = (when.year, when.month, when.day, when.hour, when.minute, when.second)
    return max(stamp, _ZIP_EPOCH)


def _entry(path: str, size: int, when: tuple[int, int, int, int, int, int]) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(path, date_time=when)
    info.compress_type = compression_for(path)
    info.file_size = size  # known in advance, so zipfile decides on ZIP64 before writing
    info.external_attr = 0o644 << 16
    return info


async def write_zip(
    blobs: BlobStore, files: Iterable[ManifestEntry], target: Path, created_at: datetime
) -> BuiltZip:
    """Write `files` (path, sha256, size) as a zip into `target`; the caller removes it on any error."""
    when = _date_time(created_at)
    handle: BinaryIO = await anyio.to_thread.run_sync(target.open, "w+b")
    archive = zipfile.ZipFile(handle, "w", allowZip64=True)  # writes nothing yet
    member: IO[bytes] | None = None
    try:
        for path, sha256, size in files:
            chunks = await blobs.open(sha256)
            member = await anyio.to_thread.run_sync(archive.open, _entry(path, size, when), "w")
            async for chunk in chunks:
                await anyio.to_thread.run_sync(member.write, chunk)
            await anyio.to_thread.run_sync(member.close)
            member = None
        await anyio.to_thread.run_sync(archive.close)
        return await anyio.to_thread.run_sync(_seal, handle)
    except BaseException:
        # Close the zip's handles, half-written as they are (the caller removes the file), so that
        # zipfile's finaliser does not try to finish it later.
        with contextlib.suppress(Exception):
            if member is not None:
                member.close()
            archive.close()
        raise
    finally:
        handle.close()


def _seal(handle: BinaryIO) -> BuiltZip:
    handle.flush()
    handle.seek(0)
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK_BYTES):
        digest.update(chunk)
    return BuiltZip(size=os.fstat(handle.fileno()).st_size, sha256=digest.hexdigest())
