"""Webhooks through the real app on both databases, delivered by its own dispatcher to a real
receiver on loopback, and verified with the `standardwebhooks` library as an orchestrator would.

Loopback targets are refused by default; these tests allow them, as an administrator would
(`TRAINYARD_WEBHOOKS_ALLOW_PRIVATE`), except the one that checks the refusal.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from standardwebhooks import Webhook as Verifier

from api.core.config import Settings
from api.main import create_app
from api.webhooks.signing import new_secret
from tests.api.receiver import Received, Receiver, receiving
from tests.api.world import World, agent_client, make_world, ok, problem, report, start_run, take_commands
from tests.conftest import ADMIN_TOKEN

ALL_EVENTS = ["run.status_changed", "run.succeeded", "run.failed", "run.stopped", "package_version.created"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhooks_allow_private": True})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


async def arrived(receiver: Receiver, count: int) -> list[Received]:
    """The receiver's first `count` requests, waited for off the event loop (the app's dispatcher
    runs on it)."""
    return await asyncio.to_thread(receiver.wait_for, count)


async def subscribe(client: AsyncClient, world: World, url: str, **fields: Any) -> dict[str, Any]:
    body = {"url": url, "events": ALL_EVENTS, **fields}
    made: dict[str, Any] = ok(await client.post(f"/projects/{world.project}/webhooks", json=body), 201)
    return made


async def settled(client: AsyncClient, path: str) -> list[dict[str, Any]]:
    """The deliveries' log once none is pending: each outcome is recorded just after its answer came."""
    for _ in range(300):  # an outer bound, never a timing check
        log: list[dict[str, Any]] = ok(await client.get(path))["items"]
        if log and all(d["state"] != "pending" for d in log):
            return log
        await asyncio.sleep(0.1)
    raise AssertionError(f"deliveries still pending: {log}")


def verified(secret: str, delivery: Received) -> Any:
    """The payload, once the library has checked the three Standard Webhooks headers."""
    return Verifier(secret).verify(delivery.body, delivery.headers)


async def run_to_success(client: AsyncClient, app: FastAPI, world: World) -> str:
    run = await start_run(client, world)
    agent = agent_client(app, world.agent_token)
    await take_commands(agent)
    await report(agent, run["id"], "launched")
    await report(agent, run["id"], "exited", exit_code=0)
    await report(agent, run["id"], "finished")
    run_id: str = run["id"]
    return run_id


async def test_a_run_s_life_is_delivered_signed_each_event_once(
    client: AsyncClient, app: FastAPI, receiver: Receiver
) -> None:
    world = await make_world(client)
    hook = await subscribe(client, world, receiver.url, description="orchestrator")
    assert hook["secret"].startswith("whsec_") and hook["events"] == ALL_EVENTS
    assert "secret" not in ok(await client.get(f"/projects/{world.project}/webhooks/{hook['id']}"))

    run_id = await run_to_success(client, app, world)
    # starting, running, succeeded: three status changes; the end as run.succeeded; the trained version.
    deliveries = await arrived(receiver, 5)
    payloads = [verified(hook["secret"], d) for d in deliveries]
    assert all(d.path == "/hooks/trainyard" for d in deliveries)
    kinds = sorted(p["type"] for p in payloads)
    assert kinds == sorted(["run.status_changed"] * 3 + ["run.succeeded", "package_version.created"])
    statuses = [p["data"]["status"] for p in payloads if p["type"] == "run.status_changed"]
    assert sorted(statuses) == ["running", "starting", "succeeded"]
    ended = next(p for p in payloads if p["type"] == "run.succeeded")
    assert ended["data"]["run_id"] == run_id and ended["data"]["project"] == world.project
    version = next(p for p in payloads if p["type"] == "package_version.created")
    assert version["data"]["origin"] == "trained" and version["data"]["run_id"] == run_id
    assert len({d.headers["webhook-id"] for d in deliveries}) == 5

    log = await settled(client, f"/projects/{world.project}/webhooks/{hook['id']}/deliveries")
    assert len(log) == 5
    assert all((d["state"], d["attempts"], d["response_status"]) == ("succeeded", 1, 200) for d in log)
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 5  # nothing sent twice


async def test_only_the_subscribed_events_of_the_project_are_sent(
    client: AsyncClient, app: FastAPI, receiver: Receiver
) -> None:
    world = await make_world(client)
    other = await make_world(client, suffix="-b")
    hook = await subscribe(client, world, receiver.url, events=["run.succeeded"])
    await subscribe(client, other, receiver.url + "/other", events=["run.failed"])
    await run_to_success(client, app, world)
    await run_to_success(client, app, other)  # succeeded: not what the other project asked for
    (delivery,) = await arrived(receiver, 1)
    assert verified(hook["secret"], delivery)["type"] == "run.succeeded"
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 1


async def test_a_refused_delivery_is_retried_and_a_redirect_is_not_followed(
    client: AsyncClient, app: FastAPI, receiver: Receiver
) -> None:
    world = await make_world(client)
    secret = new_secret()
    hook = await subscribe(client, world, receiver.url, events=["run.status_changed"], secret=secret)
    receiver.answers += [(503, {}), (302, {"location": "http://127.0.0.1:9/elsewhere"})]
    await start_run(client, world)
    first, second, third = await arrived(receiver, 3)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    assert all(d.path == "/hooks/trainyard" for d in (first, second, third))  # never to the Location
    assert verified(secret, third)["data"]["status"] == "starting"

    path = f"/projects/{world.project}/webhooks/{hook['id']}/deliveries"
    (delivery,) = await settled(client, path)
    assert (delivery["state"], delivery["attempts"], delivery["response_status"]) == ("succeeded", 3, 200)

    again = ok(await client.post(f"{path}/{delivery['id']}/redeliver"), 202)
    assert again["state"] == "pending"
    fourth = (await arrived(receiver, 4))[3]
    assert fourth.headers["webhook-id"] == first.headers["webhook-id"]
    assert verified(secret, fourth) == verified(secret, first)


async def test_subscriptions_are_checked_and_kept_to_their_project(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    path = f"/projects/{world.project}/webhooks"
    url = "https://hooks.example.com/trainyard"
    for body, field in (
        ({"url": "ftp://hooks.example.com/x", "events": ["run.failed"]}, "url"),
        ({"url": "https://user:pw@hooks.example.com/x", "events": ["run.failed"]}, "url"),
        ({"url": url, "events": []}, "events"),
        ({"url": url, "events": ["run.exploded"]}, "events"),
        ({"url": url, "events": ["run.failed", "run.failed"]}, "events"),
        ({"url": url, "events": ["run.failed"], "secret": "plain-text-secret"}, "secret"),
        ({"url": url, "events": ["run.failed"], "secret": "whsec_c2hvcnQ="}, "secret"),
    ):
        refused = problem(await client.post(path, json=body), 422, "validation_error")
        assert field in str(refused), refused
    assert ok(await client.get(path))["items"] == []
    problem(await client.get(f"{path}/00000000-0000-0000-0000-000000000000"), 404, "webhook_not_found")

    made = await subscribe(client, world, "http://127.0.0.1:9/hook")
    other = await make_world(client, suffix="-b")
    elsewhere = f"/projects/{other.project}/webhooks/{made['id']}"
    problem(await client.get(elsewhere), 404, "webhook_not_found")
    problem(await client.delete(elsewhere), 404, "webhook_not_found")
    assert (await client.delete(f"{path}/{made['id']}")).status_code == 204
    problem(await client.get(f"{path}/{made['id']}/deliveries"), 404, "webhook_not_found")


async def test_only_project_administrators_manage_webhooks(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    ok(await client.post("/users", json={"name": "vera", "password": "correct horse battery staple"}), 201)
    ok(await client.put(f"/projects/{world.project}/members/vera", json={"role": "trainer"}))
    token = ok(await client.post("/users/vera/tokens", json={"name": "bot"}), 201)["token"]
    async with AsyncClient(
        transport=ASGITransport(app=app),
        base_url="http://trainyard.test/api/v1",
        headers={"Authorization": f"Bearer {token}"},
    ) as vera:
        path = f"/projects/{world.project}/webhooks"
        problem(await vera.get(path), 403, "permission_denied")
        body = {"url": "http://127.0.0.1:9/hook", "events": ["run.failed"]}
        problem(await vera.post(path, json=body), 403, "permission_denied")


@pytest.fixture
async def strict_client(settings: Settings) -> AsyncIterator[AsyncClient]:
    """The app as installed: private targets refused."""
    application = create_app(settings.model_copy(update={"webhooks_allow_private": False}))
    async with (
        application.router.lifespan_context(application),
        AsyncClient(
            transport=ASGITransport(app=application),
            base_url="http://trainyard.test/api/v1",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as client,
    ):
        yield client


async def test_private_targets_are_refused_unless_allowed(strict_client: AsyncClient) -> None:
    world = await make_world(strict_client)
    path = f"/projects/{world.project}/webhooks"
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ):
        refused = problem(
            await strict_client.post(path, json={"url": url, "events": ["run.failed"]}),
            422,
            "webhook_target_refused",
        )
        assert "TRAINYARD_WEBHOOKS_ALLOW_PRIVATE" in refused["detail"], url
    problem(
        await strict_client.post(
            path, json={"url": "http://no-such-host.invalid/h", "events": ["run.failed"]}
        ),
        422,
        "webhook_target_refused",
    )
    assert ok(await strict_client.get(path))["items"] == []
