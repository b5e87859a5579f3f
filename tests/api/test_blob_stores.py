"""The blob-store contract, on both stores: the local folder and S3 (a real SeaweedFS, tests/s3.py).

Each test runs once per store through the `BlobStore` protocol only; what a test looks at beside the
store (the objects really stored, the scratch files) it reads through the store's own medium: the
folder, or the bucket through a client of the test's own. The last test drives the API on S3.
"""

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import obstore
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from pydantic import ValidationError

from api.core.blobs import CHUNK_BYTES, BlobCorrupt, BlobStore, LocalBlobStore
from api.core.config import Settings
from api.core.errors import InvalidInput, NotFound, PayloadTooLarge
from api.core.s3blobs import PART_BYTES, S3BlobStore, blob_store
from tests.api.packages_kit import upload_package, valid_package, versions_path, zip_bytes
from tests.api.world import ok
from tests.conftest import settings_for
from tests.s3 import S3Server, keys_under, new_prefix, on_s3, s3_server

__all__ = ["s3_server"]  # the session's SeaweedFS, a fixture of tests/s3.py


@dataclass
class Subject:
    """A store under test and a look behind it: what is stored, and how to damage it."""

    store: BlobStore
    stored: Callable[[], list[str]]  # the sha256 of every stored blob
    scratch: Callable[[], list[Path]]  # the scratch files on the API's disk
    tamper: Callable[[str, bytes], None]  # replace a stored blob's bytes behind the store's back


def _local(tmp_path: Path) -> Subject:
    store = LocalBlobStore(tmp_path / "blobs")

    def tamper(sha256: str, content: bytes) -> None:
        store.path_of(sha256).write_bytes(content)

    return Subject(
        store,
        stored=lambda: sorted(path.name for path in (store.root / "sha256").rglob("*") if path.is_file()),
        scratch=lambda: sorted(store.temp_dir.iterdir()),
        tamper=tamper,
    )


def _s3(tmp_path: Path, server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Subject:
    for name, value in server.environment().items():  # the client reads its credentials from these
        monkeypatch.setenv(name, value)
    prefix = new_prefix()
    settings = Settings(
        data_dir=tmp_path / "data", blob_store=server.url(prefix), s3_endpoint_url=server.endpoint
    )
    store = blob_store(settings)
    assert isinstance(store, S3BlobStore)

    def tamper(sha256: str, content: bytes) -> None:
        obstore.put(server.client(prefix), S3BlobStore.key_of(sha256), content)

    return Subject(
        store,
        stored=lambda: sorted(key.rpartition("/")[2] for key in keys_under(server, f"{prefix}/sha256")),
        scratch=lambda: sorted(store.temp_dir.iterdir()),
        tamper=tamper,
    )


@pytest.fixture(params=["local", "s3"])
def subject(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Subject:
    if request.param == "local":
        return _local(tmp_path)
    return _s3(tmp_path, request.getfixturevalue("s3_server"), monkeypatch)


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


async def stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(store: BlobStore, sha256: str) -> bytes:
    return b"".join([chunk async for chunk in await store.open(sha256)])


def pattern(size: int, seed: int = 0) -> bytes:
    """Content that differs from one MiB to the next, so a shuffled or repeated part shows."""
    block = hashlib.sha256(str(seed).encode()).digest() * (CHUNK_BYTES // 32)
    return b"".join(bytes([index % 251]) + block[1:] for index in range(size // CHUNK_BYTES + 1))[:size]


# -- the round trip -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [b"", b"hello", pattern(3 * CHUNK_BYTES + 17)], ids=["empty", "small", "3MiB"]
)
async def test_put_open_exists_size_delete(subject: Subject, content: bytes) -> None:
    store = subject.store
    blob = await store.put(stream(content[:5], content[5:]), max_bytes=len(content))
    assert (blob.sha256, blob.size, blob.created) == (sha(content), len(content), True)
    assert await read_all(store, blob.sha256) == content
    assert await store.exists(blob.sha256)
    assert await store.size(blob.sha256) == len(content)
    assert subject.stored() == [blob.sha256]
    assert subject.scratch() == []

    await store.delete(blob.sha256)
    await store.delete(blob.sha256)  # deleting what is not there is not an error
    assert not await store.exists(blob.sha256)
    assert subject.stored() == []
    with pytest.raises(NotFound) as missing:
        await store.open(blob.sha256)
    assert missing.value.code == "blob_not_found"
    with pytest.raises(NotFound):
        await store.size(blob.sha256)


async def test_a_temp_file_is_adopted_and_gone(subject: Subject) -> None:
    content = pattern(PART_BYTES + 5, seed=1)  # past one part: a multipart upload on S3
    with subject.store.temp_file() as path:
        path.write_bytes(content)
        blob = await subject.store.put_file(path)
        assert not path.exists()
    assert (blob.sha256, blob.size, blob.created) == (sha(content), len(content), True)
    assert await read_all(subject.store, blob.sha256) == content
    assert subject.scratch() == []


# -- streams, both ways -------------------------------------------------------------------------------


async def test_a_large_blob_streams_through_without_being_held(subject: Subject) -> None:
    size = 5 * PART_BYTES + 3  # 40 MiB: several parts of a multipart upload on S3
    produced = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal produced
        digest = hashlib.sha256()
        for index in range(size // CHUNK_BYTES + 1):
            part = pattern(CHUNK_BYTES, seed=index)[: size - produced]
            digest.update(part)
            produced += len(part)
            yield part
        source.sha256 = digest.hexdigest()  # type: ignore[attr-defined]

    tracemalloc.start()
    try:
        blob = await subject.store.put(source(), max_bytes=size)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        chunks = 0
        largest = 0
        async for chunk in await subject.store.open(blob.sha256):
            digest.update(chunk)
            chunks += 1
            largest = max(largest, len(chunk))
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert produced == size and blob.size == size
    assert blob.sha256 == digest.hexdigest() == source.sha256  # type: ignore[attr-defined]
    # Loose bounds, far below the 40 MiB: a few MiB of chunks in flight, never the whole blob.
    assert put_peak < 12 * CHUNK_BYTES and read_peak < 12 * CHUNK_BYTES, (put_peak, read_peak)
    assert chunks >= size // (2 * CHUNK_BYTES) and largest <= 2 * CHUNK_BYTES
    assert subject.scratch() == []


async def test_over_the_limit_is_refused_and_leaves_nothing(subject: Subject) -> None:
    with pytest.raises(PayloadTooLarge) as refused:
        await subject.store.put(stream(b"x" * 600, b"x" * 600), max_bytes=1000)
    assert refused.value.code == "upload_too_large"
    assert subject.stored() == [] and subject.scratch() == []
    exact = await subject.store.put(stream(b"y" * 1000), max_bytes=1000)
    assert subject.stored() == [exact.sha256]


async def test_a_source_that_fails_leaves_nothing(subject: Subject) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"half of it"
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await subject.store.put(failing(), max_bytes=1 << 20)
    assert subject.stored() == [] and subject.scratch() == []


# -- written once ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, PART_BYTES + 1], ids=["one-request", "multipart"])
async def test_identical_content_is_stored_once(subject: Subject, size: int) -> None:
    content = pattern(size, seed=7)
    blobs = await asyncio.gather(*(subject.store.put(stream(content), max_bytes=size) for _ in range(4)))
    assert {blob.sha256 for blob in blobs} == {sha(content)}
    assert any(blob.created for blob in blobs)
    assert subject.stored() == [sha(content)]
    assert await read_all(subject.store, sha(content)) == content

    again = await subject.store.put(stream(content), max_bytes=size)
    assert (again.sha256, again.created) == (sha(content), False)
    with subject.store.temp_file() as path:
        path.write_bytes(content)
        adopted = await subject.store.put_file(path)
    assert (adopted.sha256, adopted.created) == (sha(content), False)
    assert subject.stored() == [sha(content)] and subject.scratch() == []


# -- verified -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, 3 * CHUNK_BYTES], ids=["one-chunk", "several-chunks"])
async def test_a_tampered_blob_is_never_handed_out_whole(subject: Subject, size: int) -> None:
    content = pattern(size, seed=3)
    blob = await subject.store.put(stream(content), max_bytes=size)
    forged = b"!" + content[1:]  # the same size: only the hash tells
    subject.tamper(blob.sha256, forged)

    received = bytearray()
    with pytest.raises(BlobCorrupt) as refused:
        async for chunk in await subject.store.open(blob.sha256):
            received += chunk
    assert refused.value.code == "blob_corrupt" and refused.value.status_code == 500
    assert len(received) < size  # the last chunk is withheld: the reader never holds the forgery whole


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "A" * 64, "0" * 63, "0" * 65, "0" * 63 + "/", "", "0" * 62 + "\n0"]
)
async def test_a_name_that_is_not_a_sha256_is_refused(subject: Subject, name: str) -> None:
    for operation in (subject.store.open, subject.store.exists, subject.store.size, subject.store.delete):
        with pytest.raises(InvalidInput) as refused:
            await operation(name)
        assert refused.value.code == "invalid_sha256"


# -- presigned URLs -------------------------------------------------------------------------------------


async def test_a_presigned_url_reads_one_blob_until_it_expires(subject: Subject) -> None:
    content, other = b"the one blob", b"another blob"
    blob = await subject.store.put(stream(content), max_bytes=100)
    neighbour = await subject.store.put(stream(other), max_bytes=100)
    url = await subject.store.url_for(blob.sha256, timedelta(minutes=5))
    if isinstance(subject.store, LocalBlobStore):
        assert url is None  # the API serves a folder's blobs itself
        return
    assert url is not None
    async with httpx.AsyncClient() as http:
        fetched = await http.get(url)
        assert fetched.status_code == 200 and fetched.content == content
        # Scoped: the same signature neither reads another key nor writes this one.
        elsewhere = url.replace(S3BlobStore.key_of(blob.sha256), S3BlobStore.key_of(neighbour.sha256))
        assert elsewhere != url
        assert (await http.get(elsewhere)).status_code == 403
        assert (await http.put(url, content=b"forged")).status_code == 403
        assert await read_all(subject.store, blob.sha256) == content

        short = await subject.store.url_for(blob.sha256, timedelta(seconds=1))
        assert short is not None
        await asyncio.sleep(2.5)  # past the URL's life whatever the timing: only later can make it older
        assert (await http.get(short)).status_code == 403
    with pytest.raises(ValueError):
        await subject.store.url_for(blob.sha256, timedelta(days=8))


# -- the API on S3 --------------------------------------------------------------------------------------

PROJECT = "vision"


@pytest.fixture
def settings(
    database_url: str, tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """conftest's settings, on S3: the `app` and `client` fixtures of this module serve from SeaweedFS."""
    return settings_for(database_url, tmp_path, **on_s3(s3_server, monkeypatch))


async def test_packages_and_datasets_land_in_s3(
    app: FastAPI, client: AsyncClient, settings: Settings, s3_server: S3Server
) -> None:
    assert isinstance(app.state.blobs, S3BlobStore) and settings.s3_bucket_and_prefix is not None
    prefix = settings.s3_bucket_and_prefix[1]
    ok(await client.post("/projects", json={"name": PROJECT}), 201)

    package = zip_bytes(valid_package())
    version = ok(await upload_package(client, PROJECT, "digits", package), 201)
    assert version["sha256"] == sha(package)
    # People's downloads answer 307 to a presigned GET (tests/api/test_download_redirects.py).
    download = await client.get(f"{versions_path(PROJECT, 'digits')}/1.0/download")
    assert download.status_code == 307
    async with httpx.AsyncClient() as http:
        assert (await http.get(download.headers["location"])).content == package

    files = {"cat.png": b"\x89PNG cat", "dog.png": b"\x89PNG dog", "labels.csv": b"cat,1\ndog,2\n"}
    parts = [("files", (name, content, "application/octet-stream")) for name, content in files.items()]
    ok(await client.post(f"/projects/{PROJECT}/datasets/pets/versions", files=parts), 201)
    one = await client.get(f"/projects/{PROJECT}/datasets/pets/versions/1/files/dog.png")
    assert one.status_code == 307
    async with httpx.AsyncClient() as http:
        assert (await http.get(one.headers["location"])).content == files["dog.png"]

    stored = keys_under(s3_server, prefix)
    assert {key.rpartition("/")[2] for key in stored} == {sha(package)} | {sha(c) for c in files.values()}
    assert all(key == S3BlobStore.key_of(key.rpartition("/")[2]) for key in stored)
    # Nothing left on the API's disk: no blob, no scratch file.
    assert [path for path in (settings.data_dir / "blobs").rglob("*") if path.is_file()] == []


# -- the setting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "bucket_and_prefix", "folder"),
    [
        (None, None, "data/blobs"),
        ("/srv/blobs", None, "/srv/blobs"),
        ("s3://trainyard", ("trainyard", ""), "data/blobs"),
        ("s3://trainyard/prod/eu/", ("trainyard", "prod/eu"), "data/blobs"),
    ],
)
def test_the_blob_store_setting(
    value: str | None, bucket_and_prefix: tuple[str, str] | None, folder: str
) -> None:
    settings = Settings(data_dir=Path("data"), blob_store=value)
    assert settings.s3_bucket_and_prefix == bucket_and_prefix
    assert settings.blob_folder == Path(folder)  # an S3 store keeps its scratch files there


@pytest.mark.parametrize(
    "fields",
    [
        {"blob_store": "s3://"},
        {"blob_store": "s3:///prefix"},
        {"blob_store": "gs://bucket"},
        {"s3_endpoint_url": "minio:9000"},
    ],
)
def test_a_malformed_blob_store_setting_stops_the_start(fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Settings(**fields)  # type: ignore[arg-type]
