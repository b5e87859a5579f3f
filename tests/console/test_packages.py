"""The Packages page in process, on SQLite and PostgreSQL: an upload streamed through the console
(the script's header, or a plain form's field) makes the version the REST upload would, a refused
one shows the API's message and stores nothing, CSRF and a viewer's forged upload are refused; a
version's page shows its declared parameters; downloads and deletions as the API allows."""

import hashlib
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from tests.console.kit import csrf_of, seed_project, sign_in
from tests.examples.conftest import EXAMPLES, PACKAGES, load_module

zip_package = load_module(EXAMPLES / "zip_package.py", "trainyard_example_zip_package")
BASE = "/ui/projects/digits/packages/"
HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


@pytest.fixture
async def seeded(client: AsyncClient) -> AsyncClient:
    return await seed_project(client)


def _digits() -> bytes:
    return zip_package.zip_folder(PACKAGES / "digits-classifier")


async def test_an_upload_from_the_script_makes_the_next_major_version(
    browser: AsyncClient, seeded: AsyncClient
) -> None:
    await sign_in(browser, "ann")
    page = await browser.get(BASE)
    assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.text
    csrf = csrf_of(page)
    data = _digits()
    for expected in ("1.0", "2.0"):
        answer = await browser.post(
            f"{BASE}upload",
            data={"package": "digits"},
            files={"file": ("digits.zip", data, "application/zip")},
            headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
        )
        assert answer.status_code == 201, answer.text
        assert answer.json() == {"url": f"{BASE}digits/versions/{expected}/", "version": expected}
    stored = (await seeded.get("/projects/digits/packages/digits/versions/2.0")).json()
    assert stored["sha256"] == hashlib.sha256(data).hexdigest()
    version = await browser.get(f"{BASE}digits/versions/2.0/")
    assert version.status_code == 200
    assert "learning_rate_decay" in version.text and "0.003" in version.text
    download = await browser.get(f"{BASE}digits/versions/2.0/download")
    assert download.status_code == 200 and download.content == data
    assert download.headers["etag"] == f'"{stored["sha256"]}"'


async def test_a_plain_form_upload_and_its_refusals(browser: AsyncClient, seeded: AsyncClient) -> None:
    await sign_in(browser, "ann")
    csrf = csrf_of(await browser.get(BASE))
    files = {"file": ("digits.zip", _digits(), "application/zip")}
    made = await browser.post(f"{BASE}upload", data={"csrf_token": csrf, "package": "Цифры"}, files=files)
    assert made.status_code == 303
    assert made.headers["location"] == f"{BASE}%D0%A6%D0%B8%D1%84%D1%80%D1%8B/versions/1.0/"
    not_a_zip = {"file": ("x.zip", b"not a zip", "application/zip")}
    refused = await browser.post(f"{BASE}upload", data={"csrf_token": csrf, "package": "p"}, files=not_a_zip)
    assert refused.status_code == 422 and "the archive was refused" in refused.text
    hostile = await browser.post(f"{BASE}upload", data={"csrf_token": csrf, "package": HOSTILE}, files=files)
    assert hostile.status_code == 422
    assert HOSTILE not in hostile.text and "&lt;img" in hostile.text
    names = [item["name"] for item in (await seeded.get("/projects/digits/packages")).json()["items"]]
    assert names == ["Цифры"]


async def test_csrf_and_a_viewers_forged_upload_are_refused(
    browser: AsyncClient, seeded: AsyncClient
) -> None:
    files = {"file": ("digits.zip", _digits(), "application/zip")}
    await sign_in(browser, "ann")
    no_token = await browser.post(f"{BASE}upload", data={"package": "digits"}, files=files)
    assert no_token.status_code == 403
    wrong = await browser.post(
        f"{BASE}upload", data={"package": "digits"}, files=files, headers={"X-CSRF-Token": "forged"}
    )
    assert wrong.status_code == 403 and wrong.json()["code"] == "csrf_failed"
    browser.cookies.clear()
    await sign_in(browser, "vera")
    page = await browser.get(BASE)
    assert page.status_code == 200 and 'enctype="multipart/form-data"' not in page.text
    forged = await browser.post(
        f"{BASE}upload", data={"csrf_token": csrf_of(page), "package": "digits"}, files=files
    )
    assert forged.status_code == 403
    assert (await seeded.get("/projects/digits/packages")).json()["items"] == []


async def test_deletion_as_the_api_allows(browser: AsyncClient, seeded: AsyncClient) -> None:
    files = {"file": ("digits.zip", _digits(), "application/zip")}
    assert (await seeded.post("/projects/digits/packages/digits/versions", files=files)).status_code == 201
    await sign_in(browser, "ann")
    csrf = csrf_of(await browser.get(f"{BASE}digits/"))
    refused = await browser.post(f"{BASE}digits/delete", data={"csrf_token": csrf})
    assert refused.status_code == 409 and "still has 1 versions" in refused.text
    gone = await browser.post(f"{BASE}digits/versions/1.0/delete", data={"csrf_token": csrf})
    assert gone.status_code == 303
    assert (await browser.post(f"{BASE}digits/delete", data={"csrf_token": csrf})).status_code == 303
    assert (await seeded.get("/projects/digits/packages/digits")).status_code == 404


async def test_bad_input_in_a_url_is_refused_never_a_500(browser: AsyncClient, seeded: AsyncClient) -> None:
    await sign_in(browser, "ann")
    for url in (
        f"{BASE}?cursor=not-a-cursor",
        f"{BASE}nothing/",
        f"{BASE}nothing/versions/1.0/",
        "/ui/projects/digits/datasets/?cursor=not-a-cursor",
        "/ui/projects/digits/datasets/nothing/versions/x/",
        "/ui/projects/digits/templates/?cursor=not-a-cursor",
        "/ui/projects/digits/templates/nothing/",
        "/ui/projects/digits/templates/package?package=nothing",
    ):
        answer = await browser.get(url)
        assert answer.status_code in (404, 422), (url, answer.status_code)
