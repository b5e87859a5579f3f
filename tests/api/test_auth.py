"""Bearer tokens: every way of getting one wrong has its own problem code, and none is kept in clear."""

import hashlib
from collections.abc import Awaitable, Callable

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import ValidationError

from api.core.config import Settings
from api.main import create_app
from tests.api.conftest import DatabaseDump, count_rows, text_of
from tests.api.world import agent_client, make_machine, make_world, ok, problem
from tests.conftest import ADMIN_TOKEN

Dump = Callable[[], Awaitable[DatabaseDump]]


def _settings_like(settings: Settings, **changes: object) -> Settings:
    """Another start of the API on the same database and data dir, with some settings changed."""
    fields = settings.model_dump(include={"data_dir", "database_url", "bootstrap_token", "secret_key"})
    fields = {k: v.get_secret_value() if hasattr(v, "get_secret_value") else v for k, v in fields.items()}
    return Settings(**(fields | changes | {"sweep_interval": 3600}))


def _assert_bearer_challenge(response_headers: object) -> None:
    headers = dict(response_headers)  # type: ignore[call-overload]
    assert headers.get("www-authenticate", "").lower().startswith("bearer"), headers


async def test_no_header_is_401_missing_token_with_a_challenge(anon: AsyncClient) -> None:
    for path in ("/api/v1/projects", "/api/v1/machines", "/api/v1/agent/commands"):
        response = await anon.get(path)
        problem(response, 401, "missing_token")
        _assert_bearer_challenge(response.headers)
    response = await anon.post("/api/v1/projects", json={"name": "sneaky"})
    problem(response, 401, "missing_token")


MALFORMED_HEADERS = [
    "Token " + ADMIN_TOKEN,
    "Basic dXNlcjpwYXNzd29yZA==",
    "Bearer",
    "Bearer ",
    "Bearer    ",
    ADMIN_TOKEN,
    f"Bearer {ADMIN_TOKEN} extra",
    f"Bearer{ADMIN_TOKEN}",
]
UNKNOWN_TOKENS = [
    "ty_000000000000_not-a-real-token",
    ADMIN_TOKEN[:-1],
    ADMIN_TOKEN + "0",
    ADMIN_TOKEN.upper(),
    hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
]


async def test_a_malformed_header_is_401_malformed_authorization(anon: AsyncClient) -> None:
    for header in MALFORMED_HEADERS:
        for path in ("/api/v1/projects", "/api/v1/agent/commands"):
            response = await anon.get(path, headers={"Authorization": header})
            problem(response, 401, "malformed_authorization")
            _assert_bearer_challenge(response.headers)


async def test_the_scheme_is_case_insensitive(anon: AsyncClient) -> None:
    ok(await anon.get("/api/v1/projects", headers={"Authorization": f"bearer {ADMIN_TOKEN}"}))
    ok(await anon.get("/api/v1/projects", headers={"Authorization": f"BEARER {ADMIN_TOKEN}"}))


async def test_an_unknown_token_is_401_invalid_token(anon: AsyncClient) -> None:
    for token in UNKNOWN_TOKENS:
        for path in ("/api/v1/projects", "/api/v1/agent/commands"):
            response = await anon.get(path, headers={"Authorization": f"Bearer {token}"})
            problem(response, 401, "invalid_token")
            _assert_bearer_challenge(response.headers)


async def test_a_token_in_the_url_is_refused_even_with_a_valid_header(
    client: AsyncClient, app: FastAPI, dump_database: Dump
) -> None:
    world = await make_world(client)
    before = await dump_database()
    for name in ("token", "access_token"):
        for value in (ADMIN_TOKEN, "whatever"):
            problem(await client.get("/projects", params={name: value}), 400, "token_in_url")
            problem(
                await client.post("/projects", params={name: value}, json={"name": "x"}), 400, "token_in_url"
            )
            problem(await client.delete(world.process_path, params={name: value}), 400, "token_in_url")
        async with agent_client(app, world.agent_token) as agent:
            problem(await agent.get("/commands", params={name: world.agent_token}), 400, "token_in_url")
    assert await dump_database() == before
    ok(await client.get(world.process_path))  # the header alone works


async def test_an_agent_token_is_refused_on_user_routes(
    client: AsyncClient, app: FastAPI, dump_database: Dump
) -> None:
    world = await make_world(client)
    before = await dump_database()
    async with AsyncClient(
        transport=ASGITransport(app=app),
        base_url="http://trainyard.test/api/v1",
        headers={"Authorization": f"Bearer {world.agent_token}"},
    ) as impostor:
        problem(await impostor.get("/projects"), 403, "agent_token_not_allowed")
        problem(await impostor.get(f"/machines/{world.machine}"), 403, "agent_token_not_allowed")
        problem(
            await impostor.post(f"/machines/{world.machine}/rotate-token"), 403, "agent_token_not_allowed"
        )
        problem(await impostor.post(f"{world.process_path}/start"), 403, "agent_token_not_allowed")
        problem(await impostor.post("/projects", json={"name": "mine"}), 403, "agent_token_not_allowed")
    assert await dump_database() == before


async def test_a_user_token_is_refused_on_agent_routes(
    client: AsyncClient, app: FastAPI, dump_database: Dump
) -> None:
    await make_world(client)
    before = await dump_database()
    async with agent_client(app, ADMIN_TOKEN) as as_agent:
        problem(await as_agent.get("/commands"), 403, "agent_token_required")
        problem(await as_agent.post("/hello", json={"agent_version": "1"}), 403, "agent_token_required")
    assert await dump_database() == before


async def test_no_token_is_stored_in_clear(client: AsyncClient, app: FastAPI, dump_database: Dump) -> None:
    world = await make_world(client)
    _, second = await make_machine(client, "second")
    rotated = ok(await client.post("/machines/second/rotate-token"))["agent_token"]
    async with agent_client(app, world.agent_token) as agent:  # the agent's own calls store nothing of it
        ok(await agent.post("/hello", json={"agent_version": "0.1.0"}))
        ok(await agent.get("/commands"))

    dump = await dump_database()
    assert count_rows(dump)["api_tokens"] == 1 and count_rows(dump)["machines"] == 2
    everything = text_of(dump)
    for token in (ADMIN_TOKEN, world.agent_token, second, rotated):
        secret = token.split("_", 2)[-1] if token.startswith("ty_") else token
        assert token not in everything
        assert secret not in everything
        # Keyed: not a bare hash either, which a stolen dump could look a guessed token up in.
        assert hashlib.sha256(token.encode()).hexdigest() not in everything
    for token in (world.agent_token, second, rotated):
        assert token.startswith("ty_")


async def test_bootstrap_creates_the_admin_only_when_nobody_exists(
    client: AsyncClient, settings: Settings, dump_database: Dump
) -> None:
    ok(await client.post("/projects", json={"name": "before-restart"}), 201)
    users_before = count_rows(await dump_database())["users"]
    assert users_before == 1

    other_token = "another-bootstrap-token-0123456789-abcdef"
    restarted = create_app(_settings_like(settings, bootstrap_token=other_token))
    async with (
        restarted.router.lifespan_context(restarted),
        AsyncClient(transport=ASGITransport(app=restarted), base_url="http://trainyard.test/api/v1") as api,
    ):
        problem(
            await api.get("/projects", headers={"Authorization": f"Bearer {other_token}"}),
            401,
            "invalid_token",
        )
        listed = ok(await api.get("/projects", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}))
        assert [p["name"] for p in listed["items"]] == ["before-restart"]
    dump = await dump_database()
    assert count_rows(dump)["users"] == 1 and count_rows(dump)["api_tokens"] == 1
    assert other_token not in text_of(dump)


async def test_the_secret_key_keys_every_token(client: AsyncClient, settings: Settings) -> None:
    """A database copied to a server with another secret key accepts none of the old tokens."""
    world = await make_world(client)
    moved = create_app(
        _settings_like(
            settings, secret_key="a-different-secret-key-0123456789-abcdefgh", bootstrap_token=None
        )
    )
    async with moved.router.lifespan_context(moved):
        async with AsyncClient(
            transport=ASGITransport(app=moved),
            base_url="http://trainyard.test/api/v1",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as api:
            problem(await api.get("/projects"), 401, "invalid_token")
        async with agent_client(moved, world.agent_token) as agent:
            problem(await agent.get("/commands"), 401, "invalid_token")


def test_a_short_bootstrap_token_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(bootstrap_token="too-short")
