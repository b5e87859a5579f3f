"""Datasets through the API: uploads (a zip, or files onto the previous version), versions, manifests,
downloads, hostile archives refused with nothing left behind, and deletes refused while in use."""

import asyncio
import hashlib
import io
import os
import stat
import unicodedata
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response

from api.core.blobs import LocalBlobStore
from api.core.config import Settings
from tests.api.conftest import DatabaseDump
from tests.api.world import make_machine, ok, problem

Dump = Callable[[], Awaitable[DatabaseDump]]
PROJECT = "home"
DATASETS = f"/projects/{PROJECT}/datasets"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
FILES = {
    "labels.csv": b"path,label\nimages/cat/1.png,cat\n",
    "images/cat/1.png": PNG,
    "images/dog/2.png": PNG[::-1],
    "images/dog/empty.txt": b"",
    "notes/résumé.txt": "caractères accentués\n".encode(),
    "big.bin": os.urandom(3 * 1024 * 1024 + 11),  # several chunks of the store
}


def zip_of(files: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def zip_with(info: zipfile.ZipInfo, content: bytes = b"x") -> bytes:
    """A zip holding one entry described exactly as given (names and modes zipfile would not write)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, content)
    return buffer.getvalue()


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def manifest_hash(files: dict[str, bytes]) -> str:
    lines = "".join(f"{path}\t{sha(content)}\t{len(content)}\n" for path, content in sorted(files.items()))
    return sha(lines.encode())


async def upload_zip(client: AsyncClient, dataset: str, data: bytes, **fields: str) -> Response:
    return await client.post(
        f"{DATASETS}/{dataset}/versions", files={"file": ("data.zip", data, "application/zip")}, data=fields
    )


async def upload_files(client: AsyncClient, dataset: str, files: dict[str, bytes], **fields: str) -> Response:
    parts = [("files", (name, content, "application/octet-stream")) for name, content in files.items()]
    return await client.post(f"{DATASETS}/{dataset}/versions", files=parts, data=fields)


async def all_files(
    client: AsyncClient, dataset: str, version: int | str, limit: int = 1000, **params: Any
) -> list[dict[str, Any]]:
    """The whole manifest, following next_cursor."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": limit, **params} | ({"cursor": cursor} if cursor else {})
        page = ok(await client.get(f"{DATASETS}/{dataset}/versions/{version}/files", params=query))
        assert len(page["items"]) <= limit
        found += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def blob_files(app: FastAPI) -> list[Path]:
    store: LocalBlobStore = app.state.blobs
    return sorted(path for path in (store.root / "sha256").rglob("*") if path.is_file())


def scratch_files(app: FastAPI) -> list[Path]:
    store: LocalBlobStore = app.state.blobs
    return list(store.temp_dir.iterdir())


@pytest.fixture(autouse=True)
async def home(client: AsyncClient) -> None:
    ok(await client.post("/projects", json={"name": PROJECT}), 201)


# -- uploads and downloads ----------------------------------------------------------------------------


async def test_a_zip_round_trips_byte_for_byte(client: AsyncClient, app: FastAPI) -> None:
    archive = dict(FILES) | {"__MACOSX/._labels.csv": b"junk", "images/.DS_Store": b"junk"}
    version = ok(await upload_zip(client, "pets", zip_of(archive), description="Cats and dogs"), 201)
    assert version["dataset"] == "pets" and version["number"] == 1
    assert version["file_count"] == len(FILES)
    assert version["total_bytes"] == sum(len(content) for content in FILES.values())
    assert version["content_hash"] == manifest_hash(FILES)

    dataset = ok(await client.get(f"{DATASETS}/pets"))
    assert (dataset["name"], dataset["description"], dataset["latest_version"]) == (
        "pets",
        "Cats and dogs",
        1,
    )
    listed = await all_files(client, "pets", 1)
    assert listed == [{"path": p, "sha256": sha(c), "size": len(c)} for p, c in sorted(FILES.items())]

    for path, content in FILES.items():
        for spelling in {path, unicodedata.normalize("NFD", path)}:
            response = await client.get(f"{DATASETS}/pets/versions/1/files/{spelling}")
            assert response.status_code == 200, response.text
            assert response.content == content
            assert response.headers["etag"] == f'"{sha(content)}"'
            assert response.headers["content-length"] == str(len(content))
        cached = await client.get(
            f"{DATASETS}/pets/versions/latest/files/{path}",
            headers={"If-None-Match": f'W/"x", "{sha(content)}"'},
        )
        assert cached.status_code == 304 and cached.content == b""
        assert cached.headers["etag"] == f'"{sha(content)}"'
    media = await client.get(f"{DATASETS}/pets/versions/1/files/images/cat/1.png")
    assert media.headers["content-type"] == "image/png"
    assert (await client.get(f"{DATASETS}/pets/versions/1/files/big.bin")).headers[
        "content-type"
    ] == "application/octet-stream"
    problem(await client.get(f"{DATASETS}/pets/versions/1/files/images/cat"), 404, "dataset_file_not_found")
    problem(await client.get(f"{DATASETS}/pets/versions/1/files/._labels.csv"), 404, "dataset_file_not_found")
    assert len(blob_files(app)) == len({sha(c) for c in FILES.values()})
    assert scratch_files(app) == []


async def test_versions_that_share_files_store_each_blob_once(client: AsyncClient, app: FastAPI) -> None:
    first = {"a.txt": b"alpha", "b.txt": b"beta", "same/a.txt": b"alpha"}
    second = {"a.txt": b"alpha", "b.txt": b"beta", "c.txt": b"gamma"}
    one = ok(await upload_zip(client, "shared", zip_of(first)), 201)
    assert len(blob_files(app)) == 2  # a.txt and same/a.txt are one blob
    two = ok(await upload_zip(client, "shared", zip_of(second, compression=zipfile.ZIP_STORED)), 201)
    assert len(blob_files(app)) == 3
    again = ok(await upload_zip(client, "shared", zip_of(dict(reversed(first.items())))), 201)
    assert len(blob_files(app)) == 3
    assert [one["number"], two["number"], again["number"]] == [1, 2, 3]
    assert again["content_hash"] == one["content_hash"] != two["content_hash"]
    # A dataset of another name holding the same files shares the blobs too.
    ok(await upload_files(client, "other", second), 201)
    assert len(blob_files(app)) == 3


async def test_files_are_added_onto_the_previous_version(client: AsyncClient) -> None:
    ok(await upload_zip(client, "docs", zip_of({"x/1.txt": b"one", "y.txt": b"why"})), 201)
    two = ok(await upload_files(client, "docs", {"1.txt": b"ONE", "2.txt": b"two"}, path="x"), 201)
    expected = {"x/1.txt": b"ONE", "x/2.txt": b"two", "y.txt": b"why"}
    assert two["number"] == 2 and two["content_hash"] == manifest_hash(expected)
    assert [f["path"] for f in await all_files(client, "docs", "latest")] == sorted(expected)
    assert (await client.get(f"{DATASETS}/docs/versions/2/files/x/1.txt")).content == b"ONE"
    assert (await client.get(f"{DATASETS}/docs/versions/1/files/x/1.txt")).content == b"one"
    # Without a path the files go to the root; a zip replaces everything, under its path.
    three = ok(await upload_files(client, "docs", {"z.txt": b"zed"}), 201)
    assert three["file_count"] == 4
    four = ok(await upload_zip(client, "docs", zip_of({"k.txt": b"k"}), path="sub/dir"), 201)
    assert [f["path"] for f in await all_files(client, "docs", 4)] == ["sub/dir/k.txt"]
    assert four["number"] == 4
    # The first upload of a dataset in this form is just these files.
    first = ok(await upload_files(client, "fresh", {"only.txt": b"o"}, path="a/b"), 201)
    assert first["number"] == 1
    assert [f["path"] for f in await all_files(client, "fresh", 1)] == ["a/b/only.txt"]


async def test_version_numbers_grow_and_are_never_reused(client: AsyncClient) -> None:
    for expected in (1, 2, 3):
        version = ok(await upload_files(client, "nums", {f"{expected}.txt": b"x"}), 201)
        assert version["number"] == expected
    assert (await client.delete(f"{DATASETS}/nums/versions/3")).status_code == 204
    problem(await client.delete(f"{DATASETS}/nums/versions/3"), 404, "dataset_version_not_found")
    assert ok(await upload_files(client, "nums", {"4.txt": b"x"}), 201)["number"] == 4
    assert (await client.delete(f"{DATASETS}/nums/versions/2")).status_code == 204
    assert ok(await client.get(f"{DATASETS}/nums/versions/latest"))["number"] == 4
    assert ok(await client.get(f"{DATASETS}/nums"))["latest_version"] == 4
    problem(await client.get(f"{DATASETS}/nums/versions/2"), 404, "dataset_version_not_found")
    problem(await client.get(f"{DATASETS}/nums/versions/2/files"), 404, "dataset_version_not_found")
    listed = ok(await client.get(f"{DATASETS}/nums/versions"))["items"]
    assert [v["number"] for v in listed] == [1, 4]
    # Version 4 built on version 2, which held 1.txt and 2.txt (3 was deleted before 4 came).
    assert [f["path"] for f in await all_files(client, "nums", 4)] == ["1.txt", "2.txt", "4.txt"]
    assert (await client.delete(f"{DATASETS}/nums/versions/latest")).status_code == 204
    assert ok(await client.get(f"{DATASETS}/nums/versions/latest"))["number"] == 1
    assert (await client.delete(f"{DATASETS}/nums/versions/1")).status_code == 204
    assert ok(await client.get(f"{DATASETS}/nums"))["latest_version"] is None
    problem(await client.get(f"{DATASETS}/nums/versions/latest"), 409, "dataset_empty")
    assert ok(await upload_files(client, "nums", {"5.txt": b"x"}), 201)["number"] == 5
    for bad in ("0", "01", "-1", "newest", "1.0"):
        body = problem(await client.get(f"{DATASETS}/nums/versions/{bad}"), 422, "validation_error")
        assert body["field"] == "version", body


async def test_two_first_uploads_at_once_make_one_dataset(client: AsyncClient) -> None:
    replies = await asyncio.gather(*(upload_files(client, "raced", {f"{i}.txt": b"x"}) for i in range(4)))
    assert sorted(ok(reply, 201)["number"] for reply in replies) == [1, 2, 3, 4]
    datasets = ok(await client.get(DATASETS))["items"]
    assert [(d["name"], d["latest_version"]) for d in datasets] == [("raced", 4)]


async def test_the_manifest_pages_by_path_and_filters_by_folder(client: AsyncClient) -> None:
    files = {f"a/{i:02}.txt": b"a%d" % i for i in range(12)}
    files |= {"a/sub/deep.txt": b"deep", "ab/x.txt": b"ab", "a b/y.txt": b"space", "a%/z.txt": b"pct"}
    files |= {"Z.txt": b"Z", "é.txt": b"e", "中.txt": b"zh", "b_c.txt": b"_"}
    ok(await upload_zip(client, "many", zip_of(files)), 201)
    everything = sorted(files)  # code-point order, on both databases
    for limit in (1, 5, 1000):
        assert [f["path"] for f in await all_files(client, "many", 1, limit=limit)] == everything
    inside = await all_files(client, "many", 1, limit=4, prefix="a")
    assert [f["path"] for f in inside] == sorted(p for p in files if p.startswith("a/"))
    assert [f["path"] for f in await all_files(client, "many", 1, prefix="a/sub/")] == ["a/sub/deep.txt"]
    assert [f["path"] for f in await all_files(client, "many", 1, prefix="a%")] == ["a%/z.txt"]
    problem(
        await client.get(f"{DATASETS}/many/versions/1/files", params={"prefix": "nope"}),
        404,
        "dataset_path_not_found",
    )
    problem(
        await client.get(f"{DATASETS}/many/versions/1/files", params={"prefix": "../a"}), 422, "invalid_path"
    )
    for cursor in ("!!!", "", "AAAA"):
        body = problem(
            await client.get(f"{DATASETS}/many/versions/1/files", params={"cursor": cursor or "="}),
            422,
            "invalid_cursor",
        )
        assert body["field"] == "cursor"


async def test_a_whole_version_downloads_as_one_zip(client: AsyncClient, app: FastAPI) -> None:
    ok(await upload_zip(client, "pets", zip_of(FILES)), 201)
    response = await client.get(f"{DATASETS}/pets/versions/latest/download")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["etag"] == f'"{sha(response.content)}"'
    assert response.headers["content-length"] == str(len(response.content))
    assert 'filename="pets-1.zip"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        assert {info.filename: archive.read(info) for info in archive.infolist()} == FILES
        assert archive.getinfo("images/cat/1.png").compress_type == zipfile.ZIP_STORED
        assert archive.getinfo("labels.csv").compress_type == zipfile.ZIP_DEFLATED
    # One version always makes the same zip, so its ETag holds.
    cached = await client.get(
        f"{DATASETS}/pets/versions/1/download", headers={"If-None-Match": response.headers["etag"]}
    )
    assert cached.status_code == 304 and cached.content == b""
    assert scratch_files(app) == []


# -- refusals: each leaves the database, the store and the scratch folder as they were ------------------


def _traversal() -> bytes:
    return zip_with(zipfile.ZipInfo("../evil.txt"))


def _absolute() -> bytes:
    return zip_with(zipfile.ZipInfo("/etc/evil.txt"))


def _symlink() -> bytes:
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return zip_with(info, b"/etc/passwd")


def _bomb() -> bytes:
    return zip_of({"zeros.bin": bytes(50 * 1024 * 1024)})


@pytest.mark.parametrize(
    ("build", "code"),
    [
        pytest.param(_traversal, "unsafe_path", id="traversal"),
        pytest.param(_absolute, "unsafe_path", id="absolute"),
        pytest.param(_symlink, "symlink", id="symlink"),
        pytest.param(_bomb, "zip_bomb", id="ratio-bomb"),
        pytest.param(lambda: b"not a zip at all", "not_a_zip", id="not-a-zip"),
    ],
)
async def test_a_hostile_zip_is_refused_and_changes_nothing(
    client: AsyncClient, app: FastAPI, dump_database: Dump, build: Callable[[], bytes], code: str
) -> None:
    ok(await upload_zip(client, "safe", zip_of({"keep.txt": b"keep"})), 201)
    before, blobs = await dump_database(), blob_files(app)
    # On a new dataset and on an existing one.
    for dataset in ("fresh", "safe"):
        body = problem(await upload_zip(client, dataset, build()), 422, code)
        assert body["field"] == "file"
    assert await dump_database() == before
    assert blob_files(app) == blobs
    assert scratch_files(app) == []


def lie_about_size(data: bytes, name: str, declared: int) -> bytes:
    """The zip with `name`'s uncompressed size rewritten in both of its headers."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = archive.getinfo(name).header_offset
    patched = bytearray(data)
    patched[local + 22 : local + 26] = declared.to_bytes(4, "little")
    central = patched.index(b"PK\x01\x02", local)
    while patched[central + 46 : central + 46 + len(name)] != name.encode():
        central = patched.index(b"PK\x01\x02", central + 1)
    patched[central + 24 : central + 28] = declared.to_bytes(4, "little")
    return bytes(patched)


async def test_a_zip_that_lies_about_a_size_is_refused_as_it_inflates(
    client: AsyncClient, app: FastAPI, dump_database: Dump
) -> None:
    """Headers that pass inspection but understate a member: caught one byte past the lie."""
    honest = zip_of({"a.txt": b"first", "b.bin": os.urandom(100)}, compression=zipfile.ZIP_STORED)
    liar = lie_about_size(honest, "b.bin", 10)
    with zipfile.ZipFile(io.BytesIO(liar)) as archive:
        assert archive.getinfo("b.bin").file_size == 10
    before = await dump_database()
    problem(await upload_zip(client, "liar", liar), 422, "zip_bomb")
    assert await dump_database() == before
    assert scratch_files(app) == []
    # The member before the lie reached the store, as a blob no row names (see api/datasets/staging.py).
    assert len(blob_files(app)) <= 1


async def test_an_upload_in_flight_holds_no_database_connection(client: AsyncClient) -> None:
    """On SQLite the app has one connection: an upload holding it would stall every other request."""
    boundary = "b0undary"
    midway, finish = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield f"--{boundary}\r\n".encode()
        yield b'Content-Disposition: form-data; name="files"; filename="slow.txt"\r\n\r\n'
        yield b"first half, "
        midway.set()
        await finish.wait()
        yield b"second half"
        yield f"\r\n--{boundary}--\r\n".encode()

    slow = asyncio.create_task(
        client.post(
            f"{DATASETS}/slow/versions",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    )
    await asyncio.wait_for(midway.wait(), 10)
    async with asyncio.timeout(10):
        assert ok(await client.get(DATASETS))["items"] == []
        ok(await upload_files(client, "fast", {"a.txt": b"a"}), 201)
    finish.set()
    assert ok(await slow, 201)["file_count"] == 1
    assert (
        await client.get(f"{DATASETS}/slow/versions/1/files/slow.txt")
    ).content == b"first half, second half"


async def test_archive_limits_come_from_the_settings(
    client: AsyncClient, app: FastAPI, settings: Settings, dump_database: Dump
) -> None:
    before = await dump_database()
    settings.max_archive_files = 2
    problem(
        await upload_zip(client, "limited", zip_of({"1": b"1", "2": b"2", "3": b"3"})), 422, "too_many_files"
    )
    settings.max_archive_files, settings.max_archive_bytes = 100, 1024
    problem(await upload_zip(client, "limited", zip_of({"big": os.urandom(2048)})), 422, "too_large")
    assert await dump_database() == before
    assert blob_files(app) == [] and scratch_files(app) == []


async def test_an_upload_over_the_limit_is_413_and_leaves_nothing(
    client: AsyncClient, app: FastAPI, settings: Settings, dump_database: Dump
) -> None:
    before = await dump_database()
    settings.max_dataset_bytes = 4096
    # Refused while it streams in, and (far over the limit) from its declared length alone.
    for size in (5000, 200_000):
        problem(await upload_files(client, "huge", {"big.bin": os.urandom(size)}), 413, "upload_too_large")
        problem(
            await upload_zip(client, "huge", zip_of({"big.bin": os.urandom(size)})), 413, "upload_too_large"
        )
    assert await dump_database() == before
    assert blob_files(app) == [] and scratch_files(app) == []


async def test_malformed_uploads_are_422_and_change_nothing(
    client: AsyncClient, app: FastAPI, dump_database: Dump
) -> None:
    ok(await upload_files(client, "docs", {"y.txt": b"why"}), 201)
    before, blobs = await dump_database(), blob_files(app)
    versions = f"{DATASETS}/docs/versions"
    problem(await client.post(versions, json={"file": "x"}), 422, "multipart_required")
    problem(
        await client.post(versions, content=b"PK\x03\x04", headers={"Content-Type": "application/zip"}),
        422,
        "multipart_required",
    )
    problem(
        await client.post(versions, data={"path": "x"}, files={}), 422, "multipart_required"
    )  # urlencoded
    problem(await client.post(versions, files={"path": (None, "x")}), 422, "empty_upload")
    problem(await upload_zip(client, "docs", zip_of({})), 422, "empty_upload")
    problem(await upload_zip(client, "docs", zip_of({"folder/": b""})), 422, "empty_upload")
    two = [("file", ("a.zip", zip_of({"a": b"a"}), "application/zip"))] * 2
    problem(await client.post(versions, files=two), 422, "invalid_upload")
    mixed = [("file", ("a.zip", zip_of({"a": b"a"}))), ("files", ("b.txt", b"b"))]
    problem(await client.post(versions, files=mixed), 422, "invalid_upload")
    assert (
        problem(await client.post(versions, files={"upload": ("a.txt", b"a")}), 422, "unexpected_field")[
            "field"
        ]
        == "upload"
    )
    problem(await upload_files(client, "docs", {"a.txt": b"a"}, colour="red"), 422, "unexpected_field")
    for bad_name in ("../evil.txt", "a/b.txt", "..", "a\\b.txt", "x" * 256):
        problem(await upload_files(client, "docs", {bad_name: b"a"}), 422, "invalid_filename")
    for bad_path in ("../up", "/abs", "a/../../b", "."):
        problem(await upload_files(client, "docs", {"a.txt": b"a"}, path=bad_path), 422, "invalid_path")
    problem(await upload_files(client, "docs", {"a.txt": b"a"}, path="d" * 1020), 422, "path_too_long")
    problem(await upload_files(client, "docs", {"z.txt": b"z"}, path="y.txt"), 409, "path_clash")
    problem(await upload_files(client, "bad name!", {"a.txt": b"a"}), 422, "invalid_name")
    problem(
        await upload_files(client, "docs", {"a.txt": b"a"}, description="d" * 4097),
        422,
        "invalid_description",
    )
    problem(
        await client.post("/projects/nowhere/datasets/docs/versions", files={"files": ("a", b"a")}),
        404,
        "project_not_found",
    )
    assert await dump_database() == before
    assert scratch_files(app) == []
    # Only the path clash got as far as the store, with content it already held.
    assert len(blob_files(app)) == len(blobs) + 1


# -- reading and deleting -----------------------------------------------------------------------------


async def test_datasets_list_get_and_unknowns(client: AsyncClient) -> None:
    for name in ("b-set", "a-set", "数据集"):
        ok(await upload_files(client, name, {"f.txt": name.encode()}), 201)
    ok(await upload_files(client, "a-set", {"g.txt": b"g"}), 201)
    pages = [ok(await client.get(DATASETS, params={"limit": 2}))]
    pages.append(ok(await client.get(DATASETS, params={"limit": 2, "cursor": pages[0]["next_cursor"]})))
    assert pages[1]["next_cursor"] is None
    listed = [(d["name"], d["latest_version"]) for page in pages for d in page["items"]]
    assert listed == [("b-set", 1), ("a-set", 2), ("数据集", 1)]
    assert ok(await client.get(f"{DATASETS}/{unicodedata.normalize('NFD', '数据集')}"))["name"] == "数据集"
    problem(await client.get(f"{DATASETS}/nope"), 404, "dataset_not_found")
    problem(await client.get(f"{DATASETS}/nope/versions"), 404, "dataset_not_found")
    problem(await client.delete(f"{DATASETS}/nope"), 404, "dataset_not_found")
    problem(await client.get(f"{DATASETS}/a-set/versions/9/download"), 404, "dataset_version_not_found")
    problem(await client.get("/projects/nowhere/datasets"), 404, "project_not_found")


async def test_deletes_are_refused_while_a_template_uses_the_dataset(
    client: AsyncClient, app: FastAPI, dump_database: Dump
) -> None:
    ok(await upload_files(client, "used", {"a.txt": b"a"}), 201)
    ok(await upload_files(client, "used", {"b.txt": b"b"}), 201)
    ok(await client.post("/model-types", json={"name": "clf"}), 201)
    template = {"name": "tpl", "model_type": "clf", "dataset": "used", "dataset_version": 1}
    ok(await client.post(f"/projects/{PROJECT}/templates", json=template), 201)
    before = await dump_database()
    problem(await client.delete(f"{DATASETS}/used"), 409, "dataset_in_use")
    problem(await client.delete(f"{DATASETS}/used/versions/1"), 409, "dataset_version_in_use")
    assert await dump_database() == before
    assert (await client.delete(f"{DATASETS}/used/versions/2")).status_code == 204
    # As a test set it counts too.
    test_set = {"dataset": None, "test_dataset": "used", "test_dataset_version": 1}
    ok(await client.patch(f"/projects/{PROJECT}/templates/tpl", json=test_set))
    problem(await client.delete(f"{DATASETS}/used"), 409, "dataset_in_use")
    problem(await client.delete(f"{DATASETS}/used/versions/1"), 409, "dataset_version_in_use")
    assert (await client.delete(f"/projects/{PROJECT}/templates/tpl")).status_code == 204
    blobs = blob_files(app)
    assert (await client.delete(f"{DATASETS}/used")).status_code == 204
    problem(await client.get(f"{DATASETS}/used"), 404, "dataset_not_found")
    assert blob_files(app) == blobs  # blobs stay: other versions may share them
    # The name is free again, and a new dataset of it starts at version 1.
    assert ok(await upload_files(client, "used", {"c.txt": b"c"}), 201)["number"] == 1


async def test_deletes_are_refused_while_a_run_uses_the_version(client: AsyncClient) -> None:
    ok(await upload_files(client, "train", {"a.txt": b"a"}), 201)
    ok(await upload_files(client, "train", {"b.txt": b"b"}), 201)
    ok(await client.post("/model-types", json={"name": "clf"}), 201)
    template = {"name": "tpl", "model_type": "clf", "dataset": "train"}  # `latest`: pins no number
    ok(await client.post(f"/projects/{PROJECT}/templates", json=template), 201)
    machine, _ = await make_machine(client, "gpu-1")
    process = ok(
        await client.post(f"/projects/{PROJECT}/templates/tpl/processes", json={"machine": machine["name"]}),
        201,
    )
    process_path = f"/projects/{PROJECT}/processes/{process['id']}"
    run = ok(await client.post(f"{process_path}/start"), 201)["latest_run"]
    assert run["status"] == "starting"
    problem(await client.delete(f"{DATASETS}/train/versions/2"), 409, "dataset_version_in_use")
    problem(await client.delete(f"{DATASETS}/train/versions/latest"), 409, "dataset_version_in_use")
    assert (await client.delete(f"{DATASETS}/train/versions/1")).status_code == 204
    ok(await upload_files(client, "train", {"c.txt": b"c"}), 201)
    problem(await client.delete(f"{DATASETS}/train/versions/2"), 409, "dataset_version_in_use")
    ok(await client.post(f"{process_path}/stop"), 202)
    assert ok(await client.get(process_path))["latest_run"]["status"] == "stopped"
    assert (await client.delete(f"{DATASETS}/train/versions/2")).status_code == 204
