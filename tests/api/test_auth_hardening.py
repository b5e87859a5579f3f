"""Issue 19, authentication: guesses bounded under concurrency, logins that do not stall the API, and
tokens that cannot outlive or out-permit what made them."""

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response
from sqlalchemy import text

from api.core.config import Settings
from api.main import create_app
from api.models.base import utcnow
from tests.api.access_kit import make_user, member_token, token_for
from tests.api.conftest import DatabaseDump
from tests.api.world import make_world, ok, problem
from tests.conftest import ADMIN_TOKEN, SECRET_KEY

Dump = Callable[[], Awaitable[DatabaseDump]]
PASSWORD = "correct horse battery staple"
GUESSES = 30


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """The suite's settings, with the login rate limits out of the way: the tests that want them build
    an app of their own."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        bootstrap_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        secret_key=SECRET_KEY,  # type: ignore[arg-type]
        sweep_interval=3600,
        login_ip_burst=10_000,
        login_name_burst=10_000,
    )


def as_user(app: FastAPI, token: str) -> AsyncClient:
    return AsyncClient(
        transport=ASGITransport(app=app),
        base_url="http://trainyard.test/api/v1",
        headers={"Authorization": f"Bearer {token}"},
    )


async def login(anon: AsyncClient, username: str, password: str) -> Response:
    return await anon.post("/api/v1/auth/login", json={"username": username, "password": password})


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# Finding 3: the lock holds under concurrency.


async def test_concurrent_guesses_verify_at_most_the_limit(
    client: AsyncClient, anon: AsyncClient, app: FastAPI
) -> None:
    await make_user(client, "alice", password=PASSWORD)
    answers = await asyncio.gather(*(login(anon, "alice", f"guess {i}") for i in range(GUESSES)))
    codes = Counter((r.status_code, r.json()["code"]) for r in answers)
    # Each 401 is a password verified; every other guess was refused before argon2 ran.
    assert codes == {(401, "invalid_credentials"): 10, (429, "too_many_login_attempts"): GUESSES - 10}
    assert app.state.login_gate.verifications == 10
    for answer in answers:
        if answer.status_code == 429:
            assert 0 < int(answer.headers["retry-after"]) <= 15 * 60

    # The right password is refused while the lock lasts, and verifies nothing.
    problem(await login(anon, "alice", PASSWORD), 429, "too_many_login_attempts")
    assert app.state.login_gate.verifications == 10
    async with app.state.engine.begin() as connection:  # the window ends, as 15 minutes passing would
        await connection.execute(
            text("UPDATE login_failures SET window_started_at = :then"),
            {"then": utcnow() - timedelta(minutes=15, seconds=1)},
        )
    ok(await login(anon, "alice", PASSWORD))
    async with app.state.engine.connect() as connection:  # a success clears the count
        assert (await connection.execute(text("SELECT count(*) FROM login_failures"))).scalar_one() == 0


async def test_concurrent_logins_with_the_right_password_all_succeed(
    client: AsyncClient, anon: AsyncClient
) -> None:
    """Claiming an attempt counts it until it succeeds: successes clear the count, so a burst of good
    logins (fewer than the limit at a time) is never locked out."""
    await make_user(client, "alice", password=PASSWORD)
    for _ in range(3):
        answers = await asyncio.gather(*(login(anon, "alice", PASSWORD) for _ in range(8)))
        assert [a.status_code for a in answers] == [200] * 8


# Finding 4: a login holds no connection while argon2 runs; logins are rate limited.


async def test_the_api_answers_while_logins_wait_for_argon2(
    client: AsyncClient, anon: AsyncClient, app: FastAPI
) -> None:
    """Every verification is held back (the test takes all of the verifier's slots); the logins have
    claimed their attempts and wait. GET /projects must answer meanwhile: on SQLite the API has one
    connection, on PostgreSQL more logins wait than the pool holds."""
    await make_user(client, "alice", password=PASSWORD)
    ok(await client.post("/projects", json={"name": "seen"}), 201)
    gate = app.state.login_gate
    slots = gate.verifier.total_tokens
    holders = [object() for _ in range(int(slots))]
    for holder in holders:
        await gate.verifier.acquire_on_behalf_of(holder)
    users = [f"user{i}" for i in range(40)]  # 40 names: the per-name lock stays out of it
    logins = [asyncio.create_task(login(anon, name, PASSWORD)) for name in users]
    try:
        # A deadlock guard only, not a timing: a login that held its connection while it waits would
        # keep the others (and the GET) from ever getting one.
        async with asyncio.timeout(60):
            while gate.verifier.statistics().tasks_waiting < len(logins):  # noqa: ASYNC110 (no event to wait on)
                await asyncio.sleep(0.01)
            listed = ok(await client.get("/projects"))
        assert [p["name"] for p in listed["items"]] == ["seen"]
        assert not any(task.done() for task in logins)  # still waiting for argon2
    finally:
        for holder in holders:
            gate.verifier.release_on_behalf_of(holder)
    answers = await asyncio.gather(*logins)
    assert {a.status_code for a in answers} == {401}


async def test_logins_are_rate_limited_per_address_and_per_name(
    settings: Settings, client: AsyncClient
) -> None:
    await make_user(client, "alice", password=PASSWORD)
    limited = create_app(
        settings.model_copy(
            update={
                "login_ip_burst": 4,
                "login_ip_per_minute": 1.0,
                "login_name_burst": 2,
                "login_name_per_minute": 1.0,
                "bootstrap_token": None,
            }
        )
    )

    def from_address(host: str) -> AsyncClient:
        transport = ASGITransport(app=limited, client=(host, 4321))
        return AsyncClient(transport=transport, base_url="http://trainyard.test")

    async with limited.router.lifespan_context(limited):
        async with from_address("10.0.0.1") as one, from_address("10.0.0.2") as two:
            ok(await login(one, "alice", PASSWORD))
            problem(await login(one, "alice", "wrong"), 401, "invalid_credentials")
            # A third try at the name, from any address: refused before anything is verified or counted.
            problem(await login(two, "alice", PASSWORD), 429, "login_rate_limited")
            answer = await login(two, "alice", PASSWORD)
            assert answer.status_code == 429 and 1 <= int(answer.headers["retry-after"]) <= 60
            assert limited.state.login_gate.verifications == 2
            # The address: two more names from address one, then it is out of tries; address two is not.
            problem(await login(one, "nobody", "x"), 401, "invalid_credentials")
            problem(await login(one, "nobody-else", "x"), 401, "invalid_credentials")
            problem(await login(one, "someone", "x"), 429, "login_rate_limited")
            problem(await login(two, "someone", "x"), 401, "invalid_credentials")
        async with limited.state.engine.connect() as connection:
            # alice: two claims (the success cleared the first); the refused tries counted nothing.
            rows = (await connection.execute(text("SELECT failures FROM login_failures"))).all()
            assert sorted(row[0] for row in rows) == [1, 1, 1, 1]


# Finding 6: a token never outlives nor out-permits the token that made it.


async def test_a_token_never_outlives_the_token_that_made_it(
    client: AsyncClient, anon: AsyncClient, app: FastAPI
) -> None:
    await make_user(client, "bob", password=PASSWORD)
    ends = utcnow() + timedelta(hours=1)
    expiring = await token_for(client, "bob", expires_at=ends.isoformat())
    async with as_user(app, expiring) as bob:
        forever = ok(await bob.post("/tokens", json={"name": "forever"}), 201)
        assert forever["expires_at"] is not None and at(forever["expires_at"]) == ends
        later = (ends + timedelta(days=1)).isoformat()
        capped = ok(await bob.post("/tokens", json={"name": "later", "expires_at": later}), 201)
        assert at(capped["expires_at"]) == ends
        sooner = ends - timedelta(minutes=30)
        kept = ok(await bob.post("/tokens", json={"name": "sooner", "expires_at": sooner.isoformat()}), 201)
        assert at(kept["expires_at"]) == sooner
        # And the token it made cannot make one that lasts longer either.
        async with as_user(app, forever["token"]) as child:
            grandchild = ok(await child.post("/tokens", json={"name": "grandchild"}), 201)
            assert at(grandchild["expires_at"]) == ends

    # An 8-hour login token makes tokens that end with it.
    session = ok(await login(anon, "bob", PASSWORD))
    async with as_user(app, session["token"]) as bob:
        minted = ok(await bob.post("/tokens", json={"name": "from-login"}), 201)
    assert minted["expires_at"] is not None and at(minted["expires_at"]) == at(session["expires_at"])
    # The bootstrap token never expires: what it makes is as asked.
    unbounded = ok(await client.post("/users/bob/tokens", json={"name": "bot"}), 201)
    assert unbounded["expires_at"] is None


async def test_an_administrators_password_reset_ends_the_users_tokens(
    client: AsyncClient, anon: AsyncClient, app: FastAPI
) -> None:
    await make_user(client, "alice", password=PASSWORD)
    session = ok(await login(anon, "alice", PASSWORD))["token"]
    async with as_user(app, session) as alice:
        minted = ok(await alice.post("/tokens", json={"name": "from-login"}), 201)["token"]
    long_lived = await token_for(client, "alice")
    ok(await client.patch("/users/alice", json={"password": "a new password, reset"}))
    for token in (session, minted, long_lived):
        async with as_user(app, token) as alice:
            problem(await alice.get("/auth/me"), 401, "invalid_token")

    # Asked not to: the login tokens end (a new password always ends those), API tokens stay.
    await make_user(client, "carol", password=PASSWORD)
    carol_session = ok(await login(anon, "carol", PASSWORD))["token"]
    carol_bot = await token_for(client, "carol")
    body = {"password": "another new password", "revoke_tokens": False}
    ok(await client.patch("/users/carol", json=body))
    async with as_user(app, carol_session) as carol:
        problem(await carol.get("/auth/me"), 401, "invalid_token")
    async with as_user(app, carol_bot) as carol:
        ok(await carol.get("/auth/me"))
    # Asked to without a new password: every token ends.
    ok(await client.patch("/users/carol", json={"revoke_tokens": True}))
    async with as_user(app, carol_bot) as carol:
        problem(await carol.get("/auth/me"), 401, "invalid_token")
    ok(await login(anon, "carol", "another new password"))  # the password itself still works


async def test_a_narrowed_token_cannot_manage_its_owners_tokens(
    client: AsyncClient, app: FastAPI, dump: Dump
) -> None:
    world = await make_world(client)
    full = await member_token(client, world.project, "bob", "trainer")
    narrow = await token_for(client, "bob", permissions=["processes.view"])
    async with as_user(app, full) as bob:
        full_id = ok(await bob.get("/auth/me"))["token"]["id"]
    before = await dump()
    async with as_user(app, narrow) as bob:
        ok(await bob.get(world.process_path))
        problem(await bob.get("/tokens"), 403, "permission_denied")
        problem(await bob.get(f"/tokens/{full_id}"), 403, "permission_denied")
        problem(await bob.delete(f"/tokens/{full_id}"), 403, "permission_denied")
        problem(await bob.post("/tokens", json={"name": "more"}), 403, "permission_denied")
    assert await dump() == before
    async with as_user(app, full) as bob:
        ok(await bob.get("/tokens"))

    # Given `tokens.manage`, it may; and what it makes is narrowed within it.
    manager = await token_for(client, "bob", permissions=["processes.view", "tokens.manage"])
    async with as_user(app, manager) as bob:
        assert len(ok(await bob.get("/tokens"))["items"]) == 3
        made = ok(await bob.post("/tokens", json={"name": "same"}), 201)
        assert made["permissions"] == ["processes.view", "tokens.manage"]
        wider = {"name": "wider", "permissions": ["processes.view", "processes.manage"]}
        problem(await bob.post("/tokens", json=wider), 422, "permission_not_held")
    catalogue = {p["name"]: p["scope"] for p in ok(await client.get("/permissions"))}
    assert catalogue["tokens.manage"] == "token"


async def test_a_narrowed_administrator_token_makes_no_wider_token_for_others(
    client: AsyncClient, dump: Dump, app: FastAPI
) -> None:
    world = await make_world(client)
    await member_token(client, world.project, "bob", "trainer")
    narrow = ok(
        await client.post("/tokens", json={"name": "admin-narrow", "permissions": ["users.admin"]}), 201
    )
    before = await dump()
    async with as_user(app, narrow["token"]) as admin:
        body = {"name": "bot", "permissions": ["processes.manage"]}
        problem(await admin.post("/users/bob/tokens", json=body), 422, "permission_not_held")
    assert await dump() == before


@pytest.fixture
def dump(dump_database: Dump) -> Dump:
    return dump_database
