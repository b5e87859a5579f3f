"""The Datasets page in process, on SQLite and PostgreSQL: uploads streamed through the console (a
zip that is the version, files added to the previous one), folders browsed a page at a time, one
file and the whole version downloaded, refusals with the API's messages, CSRF, a viewer's forged
upload, deletions as the API allows."""

import io
import zipfile
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from api.console.views import datasets as page
from tests.console.kit import csrf_of, seed_project, sign_in

BASE = "/ui/projects/digits/datasets/"
HOSTILE = "<img src=x onerror=alert(1)>.png"


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


@pytest.fixture
async def seeded(client: AsyncClient) -> AsyncClient:
    return await seed_project(client)


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


async def test_upload_browse_download(browser: AsyncClient, seeded: AsyncClient) -> None:
    await sign_in(browser, "ann")
    csrf = csrf_of(await browser.get(BASE))
    data = _zip({"train/0/a.png": b"a", "train/1/b.png": b"bb", "test/c.png": b"ccc", "labels.csv": b"x"})
    made = await browser.post(
        f"{BASE}upload",
        data={"dataset": "digits", "description": "8x8"},
        files={"file": ("digits.zip", data, "application/zip")},
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert made.status_code == 201, made.text
    assert made.json() == {"url": f"{BASE}digits/versions/1/", "version": 1}
    added = await browser.post(
        f"{BASE}upload",
        data={"csrf_token": csrf, "dataset": "digits", "path": "test"},
        files=[("files", (HOSTILE, b"dd", "image/png")), ("files", ("e.png", b"e", "image/png"))],
    )
    assert added.status_code == 303 and added.headers["location"] == f"{BASE}digits/versions/2/"
    root = await browser.get(f"{BASE}digits/versions/2/")
    assert root.status_code == 200
    for shown in ("test/", "train/", "labels.csv"):
        assert shown in root.text
    assert "c.png" not in root.text  # inside test/: shown there, not at the root
    inside = await browser.get(f"{BASE}digits/versions/2/", params={"folder": "test"})
    assert inside.status_code == 200 and "c.png" in inside.text and "e.png" in inside.text
    assert HOSTILE not in inside.text and "&lt;img src=x" in inside.text
    one = await browser.get(f"{BASE}digits/versions/2/files/test/c.png")
    assert one.status_code == 200 and one.content == b"ccc"
    whole = await browser.get(f"{BASE}digits/versions/1/download")
    assert whole.status_code == 200
    assert sorted(zipfile.ZipFile(io.BytesIO(whole.content)).namelist()) == sorted(
        ["train/0/a.png", "train/1/b.png", "test/c.png", "labels.csv"]
    )
    assert (await browser.get(f"{BASE}digits/versions/2/", params={"folder": "nothing"})).status_code == 404


async def test_a_folder_is_paged_and_each_sub_folder_listed_once(
    browser: AsyncClient, seeded: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(page, "ENTRIES_PER_PAGE", 3)
    monkeypatch.setattr(page, "_READ_AHEAD", 2)
    files = {f"a/{n}.txt": b"x" for n in range(5)} | {f"b{n}.txt": b"y" for n in range(4)}
    files |= {f"c/d/{n}.txt": b"z" for n in range(3)}
    upload = {"file": ("d.zip", _zip(files), "application/zip")}
    assert (await seeded.post("/projects/digits/datasets/d/versions", files=upload)).status_code == 201
    await sign_in(browser, "ann")
    seen: list[str] = []
    url, params = f"{BASE}d/versions/1/", {}
    for _ in range(4):
        shown = await browser.get(url, params=params)
        assert shown.status_code == 200
        seen += [
            name for name in ("a/", "b0.txt", "b1.txt", "b2.txt", "b3.txt", "c/") if f">{name}<" in shown.text
        ]
        marker = shown.text.find("cursor=")
        if marker < 0:
            break
        params = {"cursor": shown.text[marker + 7 : shown.text.index('"', marker)]}
    assert seen == ["a/", "b0.txt", "b1.txt", "b2.txt", "b3.txt", "c/"]


async def test_refusals_csrf_and_a_viewers_forged_upload(browser: AsyncClient, seeded: AsyncClient) -> None:
    await sign_in(browser, "ann")
    csrf = csrf_of(await browser.get(BASE))
    files = {"files": ("a.txt", b"a", "text/plain")}
    outside = await browser.post(
        f"{BASE}upload", data={"csrf_token": csrf, "dataset": "d", "path": "../up"}, files=files
    )
    assert outside.status_code == 422 and "path &#39;../up&#39;" in outside.text
    assert (await browser.post(f"{BASE}upload", data={"dataset": "d"}, files=files)).status_code == 403
    browser.cookies.clear()
    await sign_in(browser, "vera")
    listing = await browser.get(BASE)
    assert 'enctype="multipart/form-data"' not in listing.text
    forged = await browser.post(
        f"{BASE}upload", data={"csrf_token": csrf_of(listing), "dataset": "d"}, files=files
    )
    assert forged.status_code == 403
    assert (await seeded.get("/projects/digits/datasets")).json()["items"] == []


async def test_deletion_as_the_api_allows(browser: AsyncClient, seeded: AsyncClient) -> None:
    upload = {"files": ("a.txt", b"a", "text/plain")}
    assert (await seeded.post("/projects/digits/datasets/d/versions", files=upload)).status_code == 201
    assert (await seeded.post("/model-types", json={"name": "classifier"})).status_code in (201, 409)
    template = {"name": "t", "model_type": "classifier", "dataset": "d", "dataset_version": 1}
    assert (await seeded.post("/projects/digits/templates", json=template)).status_code == 201
    await sign_in(browser, "ann")
    csrf = csrf_of(await browser.get(f"{BASE}d/"))
    refused = await browser.post(f"{BASE}d/versions/1/delete", data={"csrf_token": csrf})
    assert refused.status_code == 409
    assert (await seeded.delete("/projects/digits/templates/t")).status_code == 204
    assert (await browser.post(f"{BASE}d/versions/1/delete", data={"csrf_token": csrf})).status_code == 303
    assert (await browser.post(f"{BASE}d/delete", data={"csrf_token": csrf})).status_code == 303
    assert (await seeded.get("/projects/digits/datasets/d")).status_code == 404


async def test_an_upload_past_the_json_body_limit_streams_in(
    browser: AsyncClient, seeded: AsyncClient
) -> None:
    """The console's upload routes stream as the REST ones do: not held to the 1 MiB of other bodies."""
    await sign_in(browser, "ann")
    csrf = csrf_of(await browser.get(BASE))
    big = bytes(range(256)) * (9 * 1024)  # 2.25 MiB
    made = await browser.post(
        f"{BASE}upload", data={"csrf_token": csrf, "dataset": "big"}, files={"files": ("big.bin", big, "x/y")}
    )
    assert made.status_code == 303, made.text
    assert (await seeded.get("/projects/digits/datasets/big/versions/1")).json()["total_bytes"] == len(big)
