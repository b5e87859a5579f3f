"""`Idempotency-Key` (api/core/idempotency.py): a retried POST replays the first answer and does nothing
twice; another request with the key is refused; concurrent requests with one key run once; keys are
per user and expire. Through the real app, on SQLite and PostgreSQL."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response

from api.core import idempotency
from api.core.idempotency import KEEP_FOR, forget_expired_keys
from api.models.base import utcnow
from tests.api.access_kit import make_user, token_for
from tests.api.conftest import DatabaseDump, text_of
from tests.api.packages_kit import upload_package, valid_package, zip_bytes
from tests.api.world import World, make_world, ok, problem

REPLAYED = "Idempotent-Replayed"


def keyed(key: str | bytes) -> dict[str, Any]:
    return {"Idempotency-Key": key}


async def runs_of(client: AsyncClient, world: World) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = ok(await client.get(f"{world.process_path}/runs"))["items"]
    return items


async def test_a_retried_start_makes_one_run_and_replays_the_first_answer(client: AsyncClient) -> None:
    world = await make_world(client)
    key = str(uuid.uuid4())
    first = await client.post(f"{world.process_path}/start", headers=keyed(key))
    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers
    again = await client.post(f"{world.process_path}/start", headers=keyed(key))
    assert again.status_code == 201, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert len(await runs_of(client, world)) == 1
    # Without a key, the same start is a new request: refused while the run is active.
    problem(await client.post(f"{world.process_path}/start"), 409, "run_active")


async def test_a_refused_request_is_not_kept(client: AsyncClient) -> None:
    world = await make_world(client)
    key = "start-after-enable"
    ok(await client.post(f"{world.process_path}/disable"))
    problem(await client.post(f"{world.process_path}/start", headers=keyed(key)), 409, "process_disabled")
    ok(await client.post(f"{world.process_path}/enable"))
    started = await client.post(f"{world.process_path}/start", headers=keyed(key))
    assert started.status_code == 201 and REPLAYED not in started.headers, started.text
    assert len(await runs_of(client, world)) == 1


async def test_a_key_reused_with_another_request_is_refused_and_changes_nothing(
    client: AsyncClient, dump_database: Callable[[], Awaitable[DatabaseDump]]
) -> None:
    key = "create-project-1"
    ok(await client.post("/projects", json={"name": "first"}, headers=keyed(key)), 201)
    before = await dump_database()
    problem(
        await client.post("/projects", json={"name": "second"}, headers=keyed(key)),
        422,
        "idempotency_key_reused",
    )
    problem(
        await client.post("/model-types", json={"name": "first"}, headers=keyed(key)),
        422,
        "idempotency_key_reused",
    )
    problem(
        await client.post("/projects?x=1", json={"name": "first"}, headers=keyed(key)),
        422,
        "idempotency_key_reused",
    )
    assert text_of(await dump_database()) == text_of(before)
    # The request it was first sent with still replays.
    replayed = await client.post("/projects", json={"name": "first"}, headers=keyed(key))
    assert replayed.status_code == 201 and replayed.headers[REPLAYED] == "true"


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", b"caf\xe9", "new\x7fline"])
async def test_a_key_that_is_not_printable_ascii_is_refused(
    client: AsyncClient, dump_database: Callable[[], Awaitable[DatabaseDump]], key: str | bytes
) -> None:
    before = await dump_database()
    problem(
        await client.post("/projects", json={"name": "p"}, headers=keyed(key)), 422, "idempotency_key_invalid"
    )
    assert text_of(await dump_database()) == text_of(before)


async def test_the_longest_key_is_taken(client: AsyncClient) -> None:
    key = "~" * 255
    ok(await client.post("/projects", json={"name": "p"}, headers=keyed(key)), 201)
    assert (await client.post("/projects", json={"name": "p"}, headers=keyed(key))).headers[
        REPLAYED
    ] == "true"


async def test_concurrent_requests_with_one_key_run_the_action_once(client: AsyncClient) -> None:
    world = await make_world(client)
    key = "one-start"
    answers = await asyncio.gather(
        *(client.post(f"{world.process_path}/start", headers=keyed(key)) for _ in range(6))
    )
    assert len(await runs_of(client, world)) == 1
    done = [a for a in answers if a.status_code == 201]
    assert [a for a in done if REPLAYED not in a.headers], [a.text for a in answers]
    assert all(a.content == done[0].content for a in done)
    for answer in answers:
        if answer.status_code != 201:  # still held by the first: retry later
            problem(answer, 409, "idempotency_key_in_use")


async def test_keys_are_per_user(app: FastAPI, client: AsyncClient) -> None:
    await make_user(client, "bot", is_admin=True)
    token = await token_for(client, "bot")
    key = "shared-key"
    ok(await client.post("/projects", json={"name": "admins"}, headers=keyed(key)), 201)
    async with AsyncClient(
        transport=ASGITransport(app=app),
        base_url="http://trainyard.test/api/v1",
        headers={"Authorization": f"Bearer {token}"},
    ) as bot:
        created = await bot.post("/projects", json={"name": "bots"}, headers=keyed(key))
        assert created.status_code == 201 and REPLAYED not in created.headers, created.text
        # The same request as the administrator's, under the bot's own key: runs (and is refused).
        taken = await bot.post("/projects", json={"name": "admins"}, headers=keyed("other"))
        problem(taken, 409, "project_exists")
    assert {p["name"] for p in ok(await client.get("/projects"))["items"]} == {"admins", "bots"}


async def test_an_expired_key_runs_again(
    app: FastAPI, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "daily"
    ok(await client.post("/projects", json={"name": "monday"}, headers=keyed(key)), 201)
    # Past its 24 hours, not yet swept: the key is taken afresh, for another request too.
    later = utcnow() + KEEP_FOR + timedelta(seconds=1)
    monkeypatch.setattr(idempotency, "utcnow", lambda: later)
    tuesday = await client.post("/projects", json={"name": "tuesday"}, headers=keyed(key))
    assert tuesday.status_code == 201 and REPLAYED not in tuesday.headers, tuesday.text
    monkeypatch.undo()
    # Swept by the sweeper's part: gone, so the key is free again.
    async with app.state.sessionmaker() as session:
        await forget_expired_keys(session, later + KEEP_FOR)
        await session.commit()
    wednesday = await client.post("/projects", json={"name": "wednesday"}, headers=keyed(key))
    assert wednesday.status_code == 201 and REPLAYED not in wednesday.headers, wednesday.text


async def test_the_sweeper_keeps_keys_younger_than_a_day(app: FastAPI, client: AsyncClient) -> None:
    key = "young"
    ok(await client.post("/projects", json={"name": "p"}, headers=keyed(key)), 201)
    async with app.state.sessionmaker() as session:
        await forget_expired_keys(session, utcnow() + KEEP_FOR - timedelta(minutes=1))
        await session.commit()
    assert (await client.post("/projects", json={"name": "p"}, headers=keyed(key))).headers[
        REPLAYED
    ] == "true"


async def test_an_upload_with_a_key_is_stored_once(client: AsyncClient) -> None:
    ok(await client.post("/projects", json={"name": "p"}), 201)
    content = zip_bytes(valid_package())
    versions = "/projects/p/packages/pkg/versions"

    async def upload(key: str, body: bytes) -> Response:
        return await client.post(
            versions, files={"file": ("package.zip", body, "application/zip")}, headers=keyed(key)
        )

    # A refused upload (its claim committed before the body streamed in) leaves the key free.
    problem(await upload("upload-1", b"not a zip"), 422, "not_a_zip")
    first = await upload("upload-1", content)
    assert first.status_code == 201 and REPLAYED not in first.headers, first.text
    again = await upload("upload-1", content)
    assert again.status_code == 201 and again.headers[REPLAYED] == "true", again.text
    assert again.content == first.content
    assert [v["version"] for v in ok(await client.get(versions))["items"]] == ["1.0"]
    problem(await upload("upload-1", content + b"more"), 422, "idempotency_key_reused")
    # A plain upload still makes the next version.
    ok(await upload_package(client, "p", "pkg", content), 201)


async def test_a_replayed_token_is_never_stored_readable(
    client: AsyncClient, dump_database: Callable[[], Awaitable[DatabaseDump]]
) -> None:
    key = "token-for-bot"
    first = ok(await client.post("/tokens", json={"name": "bot"}, headers=keyed(key)), 201)
    again = await client.post("/tokens", json={"name": "bot"}, headers=keyed(key))
    assert again.headers[REPLAYED] == "true" and again.json()["token"] == first["token"]
    assert first["token"] not in text_of(await dump_database())
    assert len([t for t in ok(await client.get("/tokens"))["items"] if t["name"] == "bot"]) == 1


def multipart(
    content: bytes, boundary: str = "trainyard-test-boundary"
) -> tuple[bytes, bytes, dict[str, str]]:
    """An upload's body in two halves (to hold the second back) and its headers."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="package.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    whole = head + content + tail
    half = len(head) + len(content) // 2
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(len(whole))}
    return whole[:half], whole[half:], headers


async def test_a_held_upload_keeps_its_key_until_it_is_abandoned(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload holds its key while its body streams in (409 for a retry meanwhile); a claim older
    than RETAKE_PENDING_AFTER is taken over, and the old upload, finishing after all, is rolled back."""
    ok(await client.post("/projects", json={"name": "p"}), 201)
    versions = "/projects/p/packages/pkg/versions"
    first_half, second_half, headers = multipart(zip_bytes(valid_package()))
    key = {"Idempotency-Key": "slow-upload", **headers}
    reading, go_on = asyncio.Event(), asyncio.Event()

    async def held_body() -> AsyncIterator[bytes]:
        yield first_half
        reading.set()  # asked for more: the route has claimed the key and streams the body
        await go_on.wait()
        yield second_half

    async def whole_body() -> AsyncIterator[bytes]:
        yield first_half + second_half

    held = asyncio.create_task(client.post(versions, content=held_body(), headers=key))
    await reading.wait()
    retry = await client.post(versions, content=whole_body(), headers=key)
    problem(retry, 409, "idempotency_key_in_use")
    assert retry.headers["Retry-After"] == "1"

    later = utcnow() + idempotency.RETAKE_PENDING_AFTER + timedelta(seconds=1)
    monkeypatch.setattr(idempotency, "utcnow", lambda: later)
    retaken = await client.post(versions, content=whole_body(), headers=key)
    assert retaken.status_code == 201 and REPLAYED not in retaken.headers, retaken.text
    go_on.set()
    problem(await held, 409, "idempotency_key_in_use")
    assert [v["version"] for v in ok(await client.get(versions))["items"]] == ["1.0"]
    replayed = await client.post(versions, content=whole_body(), headers=key)
    assert replayed.headers[REPLAYED] == "true" and replayed.content == retaken.content


# POSTs that change nothing: a retried prediction is simply asked again (docs/serving.md).
CHANGES_NOTHING = {"services_predict"}


def test_the_document_declares_the_key_on_every_post_a_user_makes(app: FastAPI) -> None:
    covered = 0
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
            user_post = (
                method == "post" and path.startswith("/api/v1/") and not path.startswith("/api/v1/agent/")
            ) and path != "/api/v1/auth/login"
            user_post = user_post and operation["operationId"] not in CHANGES_NOTHING
            assert (idempotency.HEADER in headers) == user_post, f"{method} {path}"
            if user_post:
                covered += 1
                assert {"409", "422"} <= set(operation["responses"]), f"{method} {path}"
    assert covered >= 20
