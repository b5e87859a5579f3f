"""What every request and answer is held to (api/transport.py, docs/deployment.md): secrets in URLs,
header floods, the headers every answer carries, downloads as attachments, the data dir's modes.

The first tests drive the real app in process on both databases; the last ones a real `trainyard-api
serve` process over raw sockets, as a hostile client would."""

import io
import stat
import zipfile
from pathlib import Path

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from api.access_log import RedactSecrets
from api.transport import MAX_REQUEST_HEADERS, SECRET_QUERY_NAMES
from tests.api.world import agent_client, make_world, ok, problem, report, start_run, take_commands
from tests.conftest import ADMIN_TOKEN

PASSWORD = "correct horse battery staple"
# Every spelling a client or an attacker might use, on paths with and without authentication.
SECRET_SPELLINGS = [
    "token",
    "TOKEN",
    "Access_Token",
    "api-key",
    "ApiKey",
    "KEY",
    "password",
    "Secret",
    "t%6Fken",
]
UNAUTHENTICATED_PATHS = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/no/such/path",
    "/api/v1/auth/login",
]


def _assert_transport_headers(headers: object) -> None:
    assert headers["x-content-type-options"] == "nosniff", headers  # type: ignore[index]


async def test_a_secret_in_the_query_string_is_refused_on_every_path_in_any_case(
    anon: AsyncClient, client: AsyncClient
) -> None:
    for name in SECRET_SPELLINGS:
        for path in UNAUTHENTICATED_PATHS:
            for method in ("GET", "POST"):
                response = await anon.request(method, f"{path}?{name}=sekrit")
                problem(response, 400, "token_in_url")
                _assert_transport_headers(response.headers)
        # Authenticated, with a valid header: still refused, before the route changes anything.
        problem(await client.post(f"/projects?limit=5&{name}=x", json={"name": "p"}), 400, "token_in_url")
    assert ok(await client.get("/projects"))["items"] == []
    # A value that merely looks like a secret, under an ordinary name, is served.
    ok(await client.get("/projects", params={"cursor_hint": "token=x"}))


def test_the_documented_names_are_lowercase_with_underscores() -> None:
    assert all(name == name.lower() and "-" not in name for name in SECRET_QUERY_NAMES)
    assert {"token", "access_token", "api_key", "apikey", "key", "password", "secret"} <= SECRET_QUERY_NAMES


def test_the_access_log_redacts_secret_values() -> None:
    import logging

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', None, None
    )
    record.args = ("127.0.0.1:1", "GET", "/healthz?limit=3&TOKEN=sekrit&api-key=k2&t%6Fken=k3", "1.1", 400)
    assert RedactSecrets().filter(record)
    line = record.getMessage()
    assert "sekrit" not in line and "k2" not in line and "k3" not in line, line
    assert "limit=3" in line and "TOKEN=REDACTED" in line, line


async def test_too_many_headers_are_refused_before_authentication(anon: AsyncClient) -> None:
    headers = [(f"x-filler-{i}", "1") for i in range(MAX_REQUEST_HEADERS + 1)]
    response = await anon.get("/api/v1/projects", headers=headers)
    problem(response, 431, "too_many_headers")
    ok(await anon.get("/healthz", headers=headers[: MAX_REQUEST_HEADERS // 2]))


async def test_every_answer_is_nosniff_and_secrets_are_not_stored(
    anon: AsyncClient, client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    answers = {
        "healthz": await anon.get("/healthz"),
        "404": await anon.get("/nowhere"),
        "401": await anon.get("/api/v1/projects"),
        "422": await client.post("/projects", json={"name": 5}),
        "list": await client.get("/projects"),
    }
    for name, response in answers.items():
        _assert_transport_headers(response.headers)
        assert response.headers["cache-control"] == "no-store", name
    ok(await client.post("/users", json={"name": "alice", "password": PASSWORD}), 201)
    with_secrets = {
        "login": await anon.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}),
        "token": await client.post("/tokens", json={"name": "ci"}),
        "bot token": await client.post("/users/alice/tokens", json={"name": "bot"}),
        "machine": await client.post("/machines", json={"name": "gpu-9", "address": "10.0.0.9"}),
        "rotate": await client.post(f"/machines/{world.machine}/rotate-token"),
    }
    for name, response in with_secrets.items():
        assert response.status_code in (200, 201), (name, response.text)
        assert response.headers["cache-control"] == "no-store", name
        _assert_transport_headers(response.headers)


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


async def test_downloads_are_attachments_with_a_safe_name(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    page = b"<html><script>alert(document.cookie)</script></html>"
    datasets = f"/projects/{world.project}/datasets"
    ok(
        await client.post(f"{datasets}/web/versions", files={"file": ("d.zip", _zip({"a/x.html": page}))}),
        201,
    )
    dataset_file = await client.get(f"{datasets}/web/versions/1/files/a/x.html")
    assert dataset_file.content == page
    assert dataset_file.headers["content-disposition"] == 'attachment; filename="x.html"'
    _assert_transport_headers(dataset_file.headers)

    package = await client.get(f"/projects/{world.project}/packages/pkg/versions/1.0/download")
    assert package.headers["content-disposition"] == 'attachment; filename="pkg-1.0.zip"'

    async with agent_client(app, world.agent_token) as agent:
        run = await start_run(client, world)
        await take_commands(agent, "start_run")
        await report(agent, run["id"], "launched")
        name = 'r"e; filename=evil.exe é.html'  # quotes, a second parameter, a non-ASCII letter
        ok(await agent.put(f"/runs/{run['id']}/outputs/artifacts/plots/{name}", content=page))
    artifacts = ok(await client.get(f"/projects/{world.project}/runs/{run['id']}/artifacts"))
    artifact = await client.get(
        f"/projects/{world.project}/runs/{run['id']}/artifacts/{artifacts[0]['path']}"
    )
    assert artifact.content == page
    disposition = artifact.headers["content-disposition"]
    assert disposition == "attachment; filename*=UTF-8''r%22e%3B%20filename%3Devil.exe%20%C3%A9.html"


@pytest.fixture
def admin_token() -> str:
    return ADMIN_TOKEN


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
