"""The local blob store: content in and out byte for byte, and nothing left behind when a put fails."""

import asyncio
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.core.blobs import CHUNK_BYTES, LocalBlobStore, StoredBlob
from api.core.errors import InvalidInput, NotFound, PayloadTooLarge


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore.in_data_dir(tmp_path / "data")


async def stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)  # let concurrent puts interleave, as network reads would
        yield part


async def read_all(store: LocalBlobStore, sha256: str) -> bytes:
    return b"".join([chunk async for chunk in await store.open(sha256)])


def stored_files(store: LocalBlobStore) -> list[Path]:
    return sorted(path for path in (store.root / "sha256").rglob("*") if path.is_file())


def temp_files(store: LocalBlobStore) -> list[Path]:
    return list(store.temp_dir.iterdir())


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([], id="empty"),
        pytest.param([b""], id="one-empty-chunk"),
        pytest.param([b"x"], id="one-byte"),
        pytest.param([b"a" * 1000, b"", b"b" * (CHUNK_BYTES + 7), b"c"], id="multi-chunk"),
    ],
)
async def test_round_trip_is_byte_for_byte(store: LocalBlobStore, parts: list[bytes]) -> None:
    content = b"".join(parts)
    blob = await store.put(stream(*parts), max_bytes=len(content))

    assert blob == StoredBlob(hashlib.sha256(content).hexdigest(), len(content), created=True)
    assert await read_all(store, blob.sha256) == content
    assert await store.exists(blob.sha256)
    assert await store.size(blob.sha256) == len(content)
    assert stored_files(store) == [store.root / "sha256" / blob.sha256[:2] / blob.sha256[2:4] / blob.sha256]
    assert temp_files(store) == []


async def test_identical_content_is_stored_once(store: LocalBlobStore) -> None:
    first = await store.put(stream(b"same ", b"bytes"), max_bytes=100)
    second = await store.put(stream(b"same bytes"), max_bytes=100)

    assert first.sha256 == second.sha256
    assert (first.created, second.created) == (True, False)
    assert len(stored_files(store)) == 1
    assert temp_files(store) == []


async def test_over_the_limit_leaves_no_temp_file_and_no_blob(store: LocalBlobStore) -> None:
    with pytest.raises(PayloadTooLarge) as raised:
        await store.put(stream(b"12345", b"678901"), max_bytes=10)

    assert raised.value.code == "upload_too_large"
    assert temp_files(store) == []
    assert stored_files(store) == []


async def test_exactly_the_limit_is_accepted(store: LocalBlobStore) -> None:
    blob = await store.put(stream(b"12345", b"67890"), max_bytes=10)
    assert blob.size == 10


async def test_a_cut_off_upload_leaves_nothing(store: LocalBlobStore) -> None:
    async def cut_off() -> AsyncIterator[bytes]:
        yield b"x" * (2 * CHUNK_BYTES)  # enough that part of it reached the temporary file
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put(cut_off(), max_bytes=10 * CHUNK_BYTES)

    assert temp_files(store) == []
    assert stored_files(store) == []


async def test_a_cancelled_upload_leaves_nothing(store: LocalBlobStore) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"partial"
        started.set()
        await asyncio.Event().wait()  # a client that stops sending
        yield b"never"

    task = asyncio.create_task(store.put(stalls(), max_bytes=100))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert temp_files(store) == []
    assert stored_files(store) == []


async def test_concurrent_puts_of_the_same_content_both_succeed_with_one_file(
    store: LocalBlobStore,
) -> None:
    content = random.Random(7).randbytes(3 * CHUNK_BYTES + 11)
    parts = [content[i : i + 65536] for i in range(0, len(content), 65536)]

    blobs = await asyncio.gather(*(store.put(stream(*parts), max_bytes=len(content)) for _ in range(4)))

    assert {blob.sha256 for blob in blobs} == {hashlib.sha256(content).hexdigest()}
    assert len(stored_files(store)) == 1
    assert temp_files(store) == []
    assert await read_all(store, blobs[0].sha256) == content


async def test_open_streams_in_bounded_chunks(store: LocalBlobStore) -> None:
    content = random.Random(3).randbytes(3 * CHUNK_BYTES + 5)
    blob = await store.put(stream(content), max_bytes=len(content))

    chunks = [chunk async for chunk in await store.open(blob.sha256)]

    assert len(chunks) > 1
    assert max(len(chunk) for chunk in chunks) <= CHUNK_BYTES
    assert b"".join(chunks) == content


async def test_missing_blobs_are_not_found(store: LocalBlobStore) -> None:
    missing = hashlib.sha256(b"never stored").hexdigest()

    assert not await store.exists(missing)
    with pytest.raises(NotFound) as raised:
        await store.open(missing)
    assert raised.value.code == "blob_not_found"
    with pytest.raises(NotFound):
        await store.size(missing)


async def test_delete_is_idempotent(store: LocalBlobStore) -> None:
    blob = await store.put(stream(b"to delete"), max_bytes=100)

    await store.delete(blob.sha256)
    await store.delete(blob.sha256)

    assert not await store.exists(blob.sha256)
    assert stored_files(store) == []


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "",
        "a" * 63,
        "a" * 65,
        "A" * 64,
        "g" * 64,
        "../" + "a" * 61,
        "ab/cd/" + "a" * 58,
        "a" * 63 + "\n",
    ],
)
async def test_invalid_hashes_are_refused_before_any_file_access(
    store: LocalBlobStore, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_filesystem(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the filesystem was touched")

    monkeypatch.setattr(Path, "is_file", no_filesystem)
    monkeypatch.setattr(Path, "stat", no_filesystem)
    monkeypatch.setattr(Path, "unlink", no_filesystem)

    for call in (store.open, store.exists, store.size, store.delete):
        with pytest.raises(InvalidInput) as raised:
            await call(name)
        assert raised.value.code == "invalid_sha256"


async def test_a_temp_file_is_adopted_by_put_file(store: LocalBlobStore) -> None:
    with store.temp_file() as path:
        assert path.parent == store.temp_dir
        path.write_bytes(b"validated first")
        blob = await store.put_file(path)
        assert not path.exists()

    assert blob.sha256 == hashlib.sha256(b"validated first").hexdigest()
    assert await read_all(store, blob.sha256) == b"validated first"
    assert temp_files(store) == []


async def test_put_file_of_stored_content_drops_the_temp_file(store: LocalBlobStore) -> None:
    await store.put(stream(b"twice"), max_bytes=100)
    with store.temp_file() as path:
        path.write_bytes(b"twice")
        blob = await store.put_file(path)

    assert not blob.created
    assert len(stored_files(store)) == 1
    assert temp_files(store) == []


async def test_an_unadopted_temp_file_is_removed_on_exit(store: LocalBlobStore) -> None:
    with pytest.raises(ValueError, match="invalid package"), store.temp_file() as path:
        path.write_bytes(b"refused by validation")
        raise ValueError("invalid package")

    assert temp_files(store) == []


async def test_put_file_refuses_a_file_outside_the_temp_folder(store: LocalBlobStore, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(b"not ours")

    with pytest.raises(ValueError, match="temp_file"):
        await store.put_file(elsewhere)
    assert elsewhere.exists()


def test_cleanup_temp_removes_only_stale_files(store: LocalBlobStore) -> None:
    stale = store.temp_dir / "put-crashed.part"
    fresh = store.temp_dir / "put-in-flight.part"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"still being written")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))

    assert store.cleanup_temp(older_than_seconds=86400) == 1
    assert temp_files(store) == [fresh]
