"""People's downloads on S3 (docs/storage.md, "Downloads to people"): a package version, a dataset
file, a run's trained package and its artifacts answer 307 to a presigned GET that S3 answers with the
file's name and type; the console's badcase images too, and its pages let the S3 origin's images in.
With redirects off, without credentials, and on a local store, the API streams as before.

S3 is a real SeaweedFS (tests/s3.py) that checks every signature; the presigned URLs are followed with
a plain client that holds no token.
"""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from api.core import downloads
from api.core.config import Settings
from api.core.downloads import attachment
from api.core.s3blobs import S3BlobStore
from tests.api.access_kit import make_member, make_user, member_token, token_for
from tests.api.world import BASE_PACKAGE_ZIP, agent_client, make_world, ok, report, start_run, take_commands
from tests.conftest import ADMIN_TOKEN, settings_for
from tests.console.kit import make_person, sign_in
from tests.console.test_evaluation import PNG, evaluated_run
from tests.s3 import on_s3, s3, s3_server

__all__ = ["s3", "s3_server"]  # fixtures of tests/s3.py: its client and the session's SeaweedFS

# Quotes, a parameter of its own and more than ASCII: only RFC 6266's encoded form. A route's path
# holds no line break (Starlette's `path` matches none); the store's URL is given one below.
HOSTILE = 'plots/résumé "final"; x=1.csv'
CURVE = b"epoch,loss\n1,0.5\n"
FILES = {"cat.png": b"\x89PNG cat", "labels.csv": b"cat,1\n"}


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """conftest's settings on S3 (the default here), on S3 with redirects off (`indirect` "streamed"),
    or on the local folder ("local")."""
    mode = getattr(request, "param", "s3")
    store: dict[str, Any] = {}
    if mode != "local":
        store = on_s3(request.getfixturevalue("s3_server"), monkeypatch)
    return settings_for(database_url, tmp_path, s3_redirect_downloads=mode != "streamed", **store)


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


async def seeded(client: AsyncClient, app: FastAPI) -> tuple[str, list[tuple[str, bytes, str, str]]]:
    """A project with a package, a dataset and a finished run with an artifact of a hostile name; the
    project and each download as (route, content, filename, media type)."""
    world = await make_world(client)
    parts = [("files", (name, content, "application/octet-stream")) for name, content in FILES.items()]
    ok(await client.post(f"/projects/{world.project}/datasets/pets/versions", files=parts), 201)
    async with agent_client(app, world.agent_token) as agent:
        ok(await agent.post("/hello", json={"agent_version": "0.9.0"}))
        run_id = (await start_run(client, world))["id"]
        await take_commands(agent, "start_run")
        await report(agent, run_id, "launched")
        ok(await agent.put(f"/runs/{run_id}/outputs/artifacts/{quote(HOSTILE)}", content=CURVE))
        await report(agent, run_id, "exited", exit_code=0)
        await report(agent, run_id, "finished")  # uploads the trained package, 1.1
    project = f"/projects/{world.project}"
    return world.project, [
        (f"{project}/packages/pkg/versions/1.0/download", BASE_PACKAGE_ZIP, "pkg-1.0.zip", "application/zip"),
        (f"{project}/packages/pkg/versions/1.1/download", BASE_PACKAGE_ZIP, "pkg-1.1.zip", "application/zip"),
        (f"{project}/datasets/pets/versions/1/files/cat.png", FILES["cat.png"], "cat.png", "image/png"),
        (f"{project}/runs/{run_id}/artifacts/{quote(HOSTILE)}", CURVE, HOSTILE, "text/csv"),
    ]


async def test_downloads_redirect_to_a_presigned_get_that_names_the_file(
    client: AsyncClient, app: FastAPI, s3: httpx.AsyncClient
) -> None:
    _, routes = await seeded(client, app)
    for route, content, filename, media_type in routes:
        answer = await client.get(route)
        assert answer.status_code == 307, (route, answer.text)
        assert answer.headers["etag"] == f'"{sha(content)}"'
        assert answer.headers["cache-control"] == "private, no-store"
        location = answer.headers["location"]
        query = parse_qs(urlsplit(location).query)
        assert query["X-Amz-Expires"] == ["300"]  # DOWNLOAD_URL_LIFETIME: minutes
        assert urlsplit(location).path.endswith(S3BlobStore.key_of(sha(content)))
        got = await s3.get(location)
        assert got.status_code == 200, got.text
        assert got.content == content
        assert got.headers["content-type"] == media_type
        assert got.headers["content-disposition"] == attachment(filename)
        # Held already: 304 from the API, no URL.
        held = await client.get(route, headers={"If-None-Match": f'"{sha(content)}"'})
        assert held.status_code == 304 and "location" not in held.headers

    hostile = (await s3.get((await client.get(routes[-1][0])).headers["location"])).headers
    assert hostile["content-disposition"] == (
        "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22%3B%20x%3D1.csv"
    )
    # A name with a line break in it, asked of the store itself: no header ends early, none is added.
    store = app.state.blobs
    assert isinstance(store, S3BlobStore)
    url = await store.download_url(
        sha(CURVE), timedelta(minutes=1), filename='a "b"\r\nX-Evil: 1\r\n.csv', media_type="text/csv"
    )
    assert url is not None
    broken = await s3.get(url)
    assert broken.status_code == 200 and broken.content == CURVE
    assert (
        broken.headers["content-disposition"] == "attachment; filename*=UTF-8''a%20%22b%22X-Evil%3A%201.csv"
    )
    assert "x-evil" not in broken.headers


async def test_a_url_reads_its_one_object_as_signed_until_it_expires(
    client: AsyncClient, app: FastAPI, s3: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, routes = await seeded(client, app)
    package, picture = routes[0], routes[2]
    location = (await client.get(package[0])).headers["location"]
    other = location.replace(S3BlobStore.key_of(sha(package[1])), S3BlobStore.key_of(sha(picture[1])))
    assert other != location and (await s3.get(other)).status_code == 403
    retyped = location.replace("application%2Fzip", "text%2Fhtml")
    assert retyped != location and (await s3.get(retyped)).status_code == 403
    assert (await s3.put(location, content=b"forged")).status_code == 403

    monkeypatch.setattr(downloads, "DOWNLOAD_URL_LIFETIME", timedelta(seconds=1))
    short = (await client.get(package[0])).headers["location"]
    assert parse_qs(urlsplit(short).query)["X-Amz-Expires"] == ["1"]
    await asyncio.sleep(2.5)  # past the URL's life whatever the timing: only later can make it older
    assert (await s3.get(short)).status_code == 403


async def test_a_client_that_follows_sends_its_token_only_to_the_api(
    client: AsyncClient, app: FastAPI
) -> None:
    """httpx drops `Authorization` on a redirect to another origin (`_redirect_headers`): seen here on
    the very request it sends to S3 (SeaweedFS would not tell: it ignores a bearer token beside a
    presigned URL's signature)."""
    _, routes = await seeded(client, app)
    route, content, _, _ = routes[0]
    location = (await client.get(route)).headers["location"]
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    async with AsyncClient(
        mounts={"http://trainyard.test": ASGITransport(app=app)},  # the API in process, S3 for real
        base_url="http://trainyard.test/api/v1",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        follow_redirects=True,
        event_hooks={"request": [record]},
    ) as person:
        got = await person.get(route)
    assert got.status_code == 200 and got.content == content
    assert [r.url.host for r in sent] == ["trainyard.test", urlsplit(location).hostname]
    assert "authorization" in sent[0].headers and "authorization" not in sent[1].headers


async def test_without_the_permission_there_is_no_url(client: AsyncClient, app: FastAPI) -> None:
    project, routes = await seeded(client, app)
    ok(await client.post("/roles", json={"name": "onlooker", "permissions": ["projects.view"]}), 201)
    onlooker = await member_token(client, project, "olga", "onlooker")
    await make_user(client, "stranger")
    stranger = await token_for(client, "stranger")
    for token, status in ((onlooker, 403), (stranger, 404)):
        for route, *_ in routes:
            answer = await client.get(route, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == status, (route, answer.text)
            assert "location" not in answer.headers and "X-Amz" not in answer.text
    await make_member(client, project, "stranger", "viewer")
    assert (
        await client.get(routes[0][0], headers={"Authorization": f"Bearer {stranger}"})
    ).status_code == 307


@pytest.mark.parametrize("settings", ["streamed", "local"], indirect=True)
async def test_redirects_off_or_a_local_store_stream_as_before(client: AsyncClient, app: FastAPI) -> None:
    _, routes = await seeded(client, app)
    for route, content, filename, media_type in routes:
        answer = await client.get(route)
        assert answer.status_code == 200 and answer.content == content, route
        assert answer.headers["content-disposition"] == attachment(filename)
        assert answer.headers["content-type"].partition(";")[0] == media_type


async def test_without_static_credentials_the_api_streams(client: AsyncClient, app: FastAPI) -> None:
    """An instance role or web identity gives no signer of ours (`Presigner.from_environment`)."""
    store = app.state.blobs
    assert isinstance(store, S3BlobStore) and store.presigner is not None
    store.presigner = None
    _, routes = await seeded(client, app)
    for route, content, *_ in routes:
        answer = await client.get(route)
        assert answer.status_code == 200 and answer.content == content, route


# -- the console ----------------------------------------------------------------------------------------


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as http:
        yield http


@pytest.mark.parametrize("settings", ["s3", "streamed", "local"], indirect=True)
async def test_badcase_images_come_from_s3_and_the_pages_let_them_in(
    client: AsyncClient, app: FastAPI, browser: AsyncClient, s3: httpx.AsyncClient, settings: Settings
) -> None:
    world, run_id = await evaluated_run(client, app)
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    base = f"/ui/projects/{world.project}/runs/{run_id}/evaluation"
    page = await browser.get(base)
    assert page.status_code == 200, page.text
    image_sources = page.headers["content-security-policy"].split("img-src ")[1].split(";")[0]
    image = await browser.get(f"{base}/files/test/3/b.png")
    if settings.s3_endpoint_url is None or not settings.s3_redirect_downloads:
        assert image_sources == "'self' data:"
        assert image.status_code == 200 and image.content == PNG
        return
    origin = settings.s3_endpoint_url.rstrip("/")
    assert image_sources == f"'self' {origin} data:"  # that one origin, nothing wider
    assert image.status_code == 307 and image.headers["location"].startswith(f"{origin}/")
    got = await s3.get(image.headers["location"])
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["content-type"] == "image/png"
    assert got.headers["content-disposition"] == 'attachment; filename="b.png"'
    # An SVG or a page is bytes to save, on S3 as through the API.
    svg = await s3.get((await browser.get(f"{base}/files/test/8/vector.svg")).headers["location"])
    assert svg.headers["content-type"] == "application/octet-stream"
    assert svg.headers["content-disposition"] == 'attachment; filename="vector.svg"'
