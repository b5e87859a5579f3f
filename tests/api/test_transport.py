"""What every request and answer is held to (api/core/transport.py, docs/deployment.md): secrets in URLs,
header floods, the headers every answer carries, downloads as attachments, the data dir's modes.

The first tests drive the real app in process on both databases; the last ones a real `trainyard-api
serve` process over raw sockets, as a hostile client would."""

import contextlib
import io
import socket
import stat
import zipfile
from pathlib import Path

import httpx
from fastapi import FastAPI
from httpx import AsyncClient

from api.core.access_log import RedactSecrets
from api.core.transport import MAX_REQUEST_HEADERS, SECRET_QUERY_NAMES
from tests.api.packages_kit import upload_package, valid_package, zip_bytes
from tests.api.test_cli import http, serving, trainyard_api
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


async def test_an_unexpected_error_is_a_problem_with_the_same_headers(app: FastAPI) -> None:
    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://trainyard.test") as anon:
        response = await anon.get("/boom")
    problem(response, 500, "internal_error")
    assert "a bug" not in response.text
    _assert_transport_headers(response.headers)
    assert response.headers["cache-control"] == "no-store"


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


# -- a real `trainyard-api serve`, as a hostile client and an operator meet it ------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _raw(base_url: str, head: bytes) -> bytes:
    """Send a request's head on a socket of its own; what came back (b"" if the server cut it off)."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        # Refused while still sending: the answer, if any, is read below.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.sendall(head)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received


def _get(path: str, *headers: bytes) -> bytes:
    return (
        b"\r\n".join([f"GET {path} HTTP/1.1".encode(), b"Host: x", b"Connection: close", *headers])
        + b"\r\n\r\n"
    )


def test_a_real_server_bounds_heads_and_keeps_serving(tmp_path: Path) -> None:
    assert trainyard_api(tmp_path, "migrate").returncode == 0
    with serving(tmp_path, bootstrap_token=ADMIN_TOKEN) as server:
        url = server.base_url
        # One header of 8 MiB: 431, or the connection cut while it was still being sent.
        huge = _raw(url, _get("/api/v1/projects", b"X-Big: " + b"a" * (8 * 1024 * 1024)))
        assert huge == b"" or huge.startswith(b"HTTP/1.1 431 "), huge[:200]
        # 5,000 header fields, long enough together to pass the head's bound: 431 from the server.
        many = _raw(url, _get("/healthz", *(f"X-Filler-{i}: {i}".encode() for i in range(5000))))
        assert many.startswith(b"HTTP/1.1 431 ") and b'"request_head_too_large"' in many, many[:300]
        # 5,000 tiny ones fit the bound: 431 from the app, which counts them.
        tiny = _raw(url, _get("/healthz", *([b"a:1"] * 5000)))
        assert tiny.startswith(b"HTTP/1.1 431 ") and b'"too_many_headers"' in tiny, tiny[:300]
        # A secret in the URL: refused, and its value in no log line.
        refused = _raw(url, _get("/healthz?limit=1&ToKeN=sekrit-value-123"))
        assert refused.startswith(b"HTTP/1.1 400 ") and b'"token_in_url"' in refused, refused[:300]
        # A body is never a head: one sent whole with its head, and an upload of many reads.
        body = b"a" * (300 * 1024)
        post = b"POST /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        post += f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        assert _raw(url, post).startswith(b"HTTP/1.1 405 ")
        admin = httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with admin:
            admin.post("/projects", json={"name": "up"}).raise_for_status()
            not_a_zip = {"file": ("big.zip", b"b" * (8 * 1024 * 1024), "application/zip")}
            upload = admin.post("/projects/up/packages/big/versions", files=not_a_zip)
        # Read whole and refused for what it is, not for its size.
        assert upload.status_code == 422 and upload.json()["code"] == "not_a_zip", upload.text
        # Still serving, an ordinary request with a head near the bound included.
        assert httpx.get(f"{url}/healthz", headers={"X-Near": "a" * 60_000}).status_code == 200
        answer = httpx.get(f"{url}/api/v1/projects", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert answer.status_code == 200 and answer.headers["x-content-type-options"] == "nosniff"
    log = server.output()
    assert "sekrit-value-123" not in log and "ToKeN=REDACTED" in log, log[-3000:]


async def test_the_data_dir_is_private_and_an_open_one_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert trainyard_api(tmp_path, "migrate").returncode == 0
    assert (_mode(data), _mode(data / "trainyard.db")) == (0o700, 0o600)
    # As an older version, or a copy made under another umask, would have left them.
    data.chmod(0o755)
    (data / "trainyard.db").chmod(0o644)
    with serving(tmp_path, bootstrap_token=ADMIN_TOKEN) as server:
        async with http(f"{server.base_url}/api/v1", ADMIN_TOKEN) as admin:
            ok(await admin.post("/projects", json={"name": "p"}), 201)
            ok(await upload_package(admin, "p", "pkg", zip_bytes(valid_package())), 201)
        assert _mode(data) == 0o700
        for name in ("trainyard.db", "trainyard.db-wal", "trainyard.db-shm", "secret_key"):
            assert _mode(data / name) == 0o600, name
        blobs = data / "blobs"
        assert [p for p in blobs.rglob("*") if p.is_dir() and _mode(p) != 0o700] == []
        stored = [p for p in blobs.rglob("*") if p.is_file()]
        assert stored and [p for p in stored if _mode(p) != 0o600] == []
    assert "open to other users: tightened to 700" in server.output()
    assert "open to other users: tightened to 600" in server.output()
