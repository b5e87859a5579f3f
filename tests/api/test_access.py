"""People, roles, memberships, tokens, login and the audit trail."""

import hmac
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text

from api.models.base import utcnow
from api.runs.sweeper import Sweeper
from tests.api.access_kit import make_user, member_token, token_for
from tests.api.conftest import DatabaseDump, text_of
from tests.api.world import agent_client, make_world, ok, problem

Dump = Callable[[], Awaitable[DatabaseDump]]
PASSWORD = "correct horse battery staple"


def as_user(app: FastAPI, token: str) -> AsyncClient:
    return AsyncClient(
        transport=ASGITransport(app=app),
        base_url="http://trainyard.test/api/v1",
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_login_gives_a_short_lived_token_and_logout_ends_it(
    client: AsyncClient, anon: AsyncClient
) -> None:
    await make_user(client, "alice", display_name="Alice", password=PASSWORD)
    reply = ok(await anon.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}))
    assert reply["token"].startswith("ty_") and reply["token_type"] == "bearer"
    assert reply["user"]["name"] == "alice" and reply["user"]["has_password"]
    headers = {"Authorization": f"Bearer {reply['token']}"}
    me = ok(await anon.get("/api/v1/auth/me", headers=headers))
    assert me["user"]["name"] == "alice" and me["token"]["kind"] == "login"
    assert me["projects"] == [] and me["permissions"] == []
    lifetime = me["token"]["expires_at"]
    assert lifetime is not None
    assert (await anon.post("/api/v1/auth/logout", headers=headers)).status_code == 204
    problem(await anon.get("/api/v1/auth/me", headers=headers), 401, "invalid_token")


async def test_every_failed_login_reads_the_same(client: AsyncClient, anon: AsyncClient, dump: Dump) -> None:
    await make_user(client, "alice", password=PASSWORD)
    await make_user(client, "off", password=PASSWORD, enabled=False)
    await make_user(client, "bot")  # no password: tokens only
    before = await dump()
    details = set()
    for username, password in (
        ("alice", "wrong password!"),
        ("nobody", PASSWORD),
        ("off", PASSWORD),
        ("bot", ""),
    ):
        response = await anon.post(
            "/api/v1/auth/login", json={"username": username, "password": password or "x"}
        )
        details.add(problem(response, 401, "invalid_credentials")["detail"])
    assert len(details) == 1
    after = await dump()
    # Nothing changed but the failures counted, one a name, names that exist or not alike, none in clear.
    counted = after.pop("login_failures")
    assert after == {name: rows for name, rows in before.items() if name != "login_failures"}
    assert len(counted) == 4 and all(row[1] == "1" for row in counted)
    assert not {"alice", "nobody", "off", "bot"} & {part for row in counted for part in row}


async def test_password_guessing_is_refused_for_a_while_then_allowed(
    client: AsyncClient, anon: AsyncClient, app: FastAPI
) -> None:
    """10 failures in 15 minutes lock the name (the right password too), and nobody else's."""
    await make_user(client, "alice", password=PASSWORD)
    await make_user(client, "carol", password=PASSWORD)

    async def login(username: str, password: str) -> Any:
        return await anon.post("/api/v1/auth/login", json={"username": username, "password": password})

    ok(await login("alice", PASSWORD))
    for attempt in range(10):
        problem(await login("alice", f"guess {attempt}"), 401, "invalid_credentials")
    locked = await login("alice", PASSWORD)
    problem(locked, 429, "too_many_login_attempts")
    assert 0 < int(locked.headers["retry-after"]) <= 15 * 60
    problem(await login("nobody", PASSWORD), 401, "invalid_credentials")  # other names go on
    ok(await login("carol", PASSWORD))

    # The window ends (its start moved back, as 15 minutes passing would): the right password works and
    # clears the count; a wrong one after that counts from one again.
    async with app.state.engine.begin() as connection:
        await connection.execute(
            text("UPDATE login_failures SET window_started_at = :then"),
            {"then": utcnow() - timedelta(minutes=15, seconds=1)},
        )
    ok(await login("alice", PASSWORD))
    async with app.state.engine.connect() as connection:
        rows = (await connection.execute(text("SELECT failures FROM login_failures"))).all()
    assert [row[0] for row in rows] == [1]  # only nobody's
    problem(await login("alice", "wrong"), 401, "invalid_credentials")

    # The sweeper forgets the counts whose window ended, and only those.
    async with app.state.engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE login_failures SET window_started_at = :then WHERE failures = 1 AND name_hmac IN "
                "(SELECT name_hmac FROM login_failures ORDER BY window_started_at LIMIT 1)"
            ),
            {"then": utcnow() - timedelta(minutes=16)},
        )
    await Sweeper(app.state.sessionmaker, app.state.notifier, app.state.settings).sweep_once()
    async with app.state.engine.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM login_failures"))).scalar_one() == 1


async def test_no_token_or_password_is_stored_in_clear(
    client: AsyncClient, anon: AsyncClient, dump: Dump
) -> None:
    world = await make_world(client)
    api_token = await member_token(client, world.project, "bob", "trainer")
    ok(await client.patch("/users/bob", json={"password": PASSWORD}))
    login = ok(await anon.post("/api/v1/auth/login", json={"username": "bob", "password": PASSWORD}))["token"]
    text = text_of(await dump())
    for secret in (api_token, login, api_token.split("_", 2)[2], login.split("_", 2)[2], PASSWORD):
        assert secret not in text
    assert "$argon2id$" in text


async def test_tokens_are_compared_in_constant_time(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = await make_world(client)
    token = await member_token(client, world.project, "bob", "viewer")
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("api.core.security.hmac.compare_digest", spy)
    async with as_user(app, token) as bob:
        ok(await bob.get("/auth/me"))
    async with agent_client(app, world.agent_token) as agent:
        ok(await agent.get("/commands"))
    assert len(compared) == 2
    assert all(len(a) == len(b) == 64 for a, b in compared)  # HMAC-SHA256 digests, never the tokens


async def test_a_narrowed_token_does_only_what_it_names(
    client: AsyncClient, app: FastAPI, dump: Dump
) -> None:
    world = await make_world(client)
    await member_token(client, world.project, "bob", "trainer")
    narrow = await token_for(client, "bob", permissions=["processes.view", "projects.view", "tokens.manage"])
    async with as_user(app, narrow) as bob:
        ok(await bob.get(world.process_path))
        problem(await bob.post(f"{world.process_path}/start"), 403, "permission_denied")
        problem(await bob.get(f"/projects/{world.project}/templates"), 403, "permission_denied")
        before = await dump()
        wider = {"name": "wider", "permissions": ["processes.manage"]}
        problem(await bob.post("/tokens", json=wider), 422, "permission_not_held")
        assert await dump() == before
        same = ok(await bob.post("/tokens", json={"name": "same"}), 201)  # as narrow as its maker
        assert same["permissions"] == ["projects.view", "processes.view", "tokens.manage"]
    problem(
        await client.post("/users/bob/tokens", json={"name": "x", "permissions": ["machines.admin"]}),
        422,
        "permission_not_held",
    )
    problem(
        await client.post("/users/bob/tokens", json={"name": "x", "permissions": ["processes.fly"]}),
        422,
        "unknown_permission",
    )
    past = (utcnow() - timedelta(minutes=1)).isoformat()
    problem(await client.post("/tokens", json={"name": "x", "expires_at": past}), 422, "expiry_in_past")


async def test_roles_refuse_unknown_permissions_and_keep_built_ins(client: AsyncClient, dump: Dump) -> None:
    before = await dump()
    body = problem(
        await client.post("/roles", json={"name": "odd", "permissions": ["processes.view", "processes.fly"]}),
        422,
        "unknown_permission",
    )
    assert body["field"] == "permissions" and "processes.fly" in body["detail"]
    problem(await client.patch("/roles/viewer", json={"permissions": []}), 409, "role_builtin")
    problem(await client.delete("/roles/administrator"), 409, "role_builtin")
    assert await dump() == before
    names = {r["name"] for r in ok(await client.get("/roles"))["items"]}
    assert {"viewer", "trainer", "project-admin", "administrator"} <= names
    catalogue = {p["name"]: p["scope"] for p in ok(await client.get("/permissions"))}
    assert catalogue["processes.manage"] == "project" and catalogue["machines.admin"] == "global"


async def test_a_custom_role_changes_for_its_members_at_once(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    ok(await client.post("/roles", json={"name": "starter", "permissions": ["processes.view"]}), 201)
    token = await member_token(client, world.project, "bob", "starter")
    async with as_user(app, token) as bob:
        problem(await bob.post(f"{world.process_path}/stop"), 403, "permission_denied")
        ok(await client.patch("/roles/starter", json={"permissions": ["processes.view", "processes.manage"]}))
        problem(await bob.post(f"{world.process_path}/stop"), 409, "run_not_active")  # let through
    problem(await client.delete("/roles/starter"), 409, "role_in_use")


async def test_members_are_granted_only_what_the_granter_holds(
    client: AsyncClient, app: FastAPI, dump: Dump
) -> None:
    world = await make_world(client)
    other = await make_world(client, "-other")
    admin_token = await member_token(client, world.project, "pa", "project-admin")
    await make_user(client, "carol")
    async with as_user(app, admin_token) as pa:
        ok(await pa.put(f"/projects/{world.project}/members/carol", json={"role": "trainer"}))
        before = await dump()
        problem(
            await pa.put(f"/projects/{world.project}/members/carol", json={"role": "administrator"}),
            403,
            "role_not_grantable",
        )
        problem(
            await pa.put(f"/projects/{other.project}/members/carol", json={"role": "viewer"}),
            404,
            "project_not_found",
        )
        assert await dump() == before
        listed = ok(await pa.get("/projects"))["items"]
        assert [p["name"] for p in listed] == [world.project]
        members = ok(await pa.get(f"/projects/{world.project}/members"))["items"]
        assert {(m["user"], m["role"]) for m in members} == {("pa", "project-admin"), ("carol", "trainer")}
        # A project made by a non-administrator is theirs to run.
        ok(await pa.post("/projects", json={"name": "pa-own"}), 201)
        assert "pa-own" in [p["name"] for p in ok(await pa.get("/projects"))["items"]]


async def test_the_last_administrator_stays(client: AsyncClient, dump: Dump) -> None:
    before = await dump()
    problem(await client.patch("/users/admin", json={"enabled": False}), 409, "last_administrator")
    problem(await client.patch("/users/admin", json={"is_admin": False}), 409, "last_administrator")
    problem(await client.delete("/users/admin"), 409, "last_administrator")
    assert await dump() == before


async def test_a_disabled_user_is_locked_out_at_once(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    token = await member_token(client, world.project, "bob", "viewer")
    async with as_user(app, token) as bob:
        ok(await bob.get(world.process_path))
        ok(await client.patch("/users/bob", json={"enabled": False}))
        problem(await bob.get(world.process_path), 401, "invalid_token")


async def test_agent_tokens_rotate_and_revoke(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    ok(await client.post(f"/machines/{world.machine}/revoke-token"))
    async with agent_client(app, world.agent_token) as agent:
        problem(await agent.get("/commands"), 401, "invalid_token")
    fresh = ok(await client.post(f"/machines/{world.machine}/rotate-token"))["agent_token"]
    async with agent_client(app, fresh) as agent:
        ok(await agent.get("/commands"))


async def test_the_audit_trail_names_who_changed_what(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    token = await member_token(client, world.project, "bob", "trainer")
    async with as_user(app, token) as bob:
        ok(await bob.post(f"{world.process_path}/start"), 201)
        problem(await bob.delete(f"/projects/{world.project}"), 403, "permission_denied")  # refused: no row
        problem(await bob.get("/audit-events"), 403, "permission_denied")
    events = ok(await client.get("/audit-events", params={"limit": 200}))["items"]
    actions = [(e["actor_name"], e["action"]) for e in events]
    assert ("admin", "projects_create") in actions and ("admin", "members_set") in actions
    assert ("bob", "processes_start") in actions
    assert not any(action == "projects_delete" for _, action in actions)
    start = next(e for e in events if e["action"] == "processes_start")
    assert start["project_id"] is not None and start["token_id"] is not None
    assert all(e["method"] != "GET" for e in events)


async def test_tokens_list_shows_no_secret_and_revoke_is_immediate(client: AsyncClient, app: FastAPI) -> None:
    await make_user(client, "bob")
    made = ok(await client.post("/users/bob/tokens", json={"name": "rpa"}), 201)
    async with as_user(app, made["token"]) as bob:
        listed = ok(await bob.get("/tokens"))["items"]
        assert [t["name"] for t in listed] == ["rpa"] and "token" not in listed[0]
        assert (await bob.delete(f"/tokens/{made['id']}")).status_code == 204
        problem(await bob.get("/tokens"), 401, "invalid_token")
    # Someone else's token is not found, not forbidden.
    problem(await client.get(f"/tokens/{made['id']}"), 404, "token_not_found")


@pytest.fixture
def dump(dump_database: Dump) -> Dump:
    return dump_database
