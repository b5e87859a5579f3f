"""Prediction services (issue 15, docs/serving.md): the whole life driven through the real protocol,
the test acting as the agent; predictions forwarded to a real HTTP server on loopback that stands for
the serving process (tests/api/serving_stand_in.py)."""

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from prometheus_client import REGISTRY
from standardwebhooks import Webhook as Verifier

from api.core.config import Settings
from api.models.base import utcnow
from api.runs import sweeper as sweeper_module
from api.runs.sweeper import Sweeper
from tests.api.access_kit import member_token
from tests.api.conftest import DatabaseDump
from tests.api.packages_kit import upload_package, valid_package, zip_bytes
from tests.api.receiver import Receiver, receiving
from tests.api.serving_stand_in import serving
from tests.api.world import BASE_PACKAGE, BASE_PACKAGE_ZIP, World, agent_client, make_world, ok, problem

HELLO = {"agent_version": "0.1.0"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The webhook test's receiver is on loopback, which the API refuses unless told (docs/clients.md).
    return settings.model_copy(update={"webhooks_allow_private": True})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


def path(world: World, name: str = "svc") -> str:
    return f"/projects/{world.project}/services/{name}"


async def publish(client: AsyncClient, world: World, name: str = "svc", **fields: Any) -> dict[str, Any]:
    body = {"name": name, "package": BASE_PACKAGE, "version": "1.0", "machine": world.machine, **fields}
    service: dict[str, Any] = ok(await client.post(f"/projects/{world.project}/services", json=body), 201)
    return service


async def take(agent: AsyncClient, kind: str) -> dict[str, Any]:
    """Poll and acknowledge: the one command of `kind` waiting."""
    commands = [c for c in ok(await agent.get("/commands")) if c["kind"] == kind]
    assert len(commands) == 1, commands
    assert ok(await agent.post(f"/commands/{commands[0]['id']}/ack"))["state"] == "acknowledged"
    return commands[0]


async def event(agent: AsyncClient, service_id: str, type: str, **fields: Any) -> dict[str, Any]:
    reply: dict[str, Any] = ok(
        await agent.post(f"/services/{service_id}/events", json={"type": type, **fields})
    )
    return reply


async def started(client: AsyncClient, agent: AsyncClient, world: World, name: str = "svc") -> str:
    """Start the service and take its start as the agent does; returns the secret it was given."""
    assert ok(await client.post(f"{path(world, name)}/start"), 202)["status"] == "starting"
    secret: str = (await take(agent, "start_service"))["payload"]["start"]["secret"]
    return secret


def status_moves(events: list[dict[str, Any]]) -> list[tuple[str | None, str | None, str | None]]:
    return [
        (e["from_status"], e["to_status"], e["reason_code"]) for e in events if e["kind"] == "service_status"
    ]


async def test_the_whole_life_through_the_protocol(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    created = await publish(client, world, max_run_seconds=600)
    assert (created["status"], created["package"], created["version"], created["machine"]) == (
        "created",
        BASE_PACKAGE,
        "1.0",
        world.machine,
    )
    assert (created["instances"], created["max_run_seconds"], created["serving_instances"]) == (1, 600, [])
    async with agent_client(app, world.agent_token) as agent:
        assert ok(await client.post(f"{path(world)}/start"), 202)["status"] == "starting"
        command = await take(agent, "start_service")
        assert (command["service_id"], command["run_id"]) == (created["id"], None)
        start = command["payload"]["start"]
        assert start["service_id"] == created["id"]
        assert (start["project"], start["name"], start["package"], start["version"]) == (
            world.project,
            "svc",
            BASE_PACKAGE,
            "1.0",
        )
        assert (start["max_run_seconds"], start["instances"]) == (600, 1)
        assert len(start["secret"]) >= 32
        package = await agent.get(f"/services/{created['id']}/package")
        assert package.status_code == 200 and package.content == BASE_PACKAGE_ZIP
        assert package.headers["etag"] == f'"{start["package_sha256"]}"'

        with serving(start["secret"]) as instance:
            assert (await event(agent, created["id"], "starting", pid=4242))["status"] == "starting"
            reply = await event(agent, created["id"], "serving", address=instance.address)
            assert (reply["status"], reply["stop"]) == ("serving", False)
            assert ok(await client.get(path(world)))["serving_instances"] == [0]

            answer = await client.post(f"{path(world)}/predict", json={"pixels": [1, 2, 3]})
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == "application/json"
            assert answer.json() == {"instance": 0, "input": {"pixels": [1, 2, 3]}}
            raw = await client.post(
                f"{path(world)}/predict", content=b"\x00\x01image", headers={"Content-Type": "image/png"}
            )
            assert (raw.status_code, raw.text) == (200, "7")
            assert raw.headers["content-type"].startswith("text/plain")
            failed = problem(
                await client.post(f"{path(world)}/predict", json={"raise": "boom"}), 422, "prediction_failed"
            )
            assert failed["detail"] == "ValueError: boom"
            endpoint = ok(await client.get(f"{path(world)}/endpoint"))
            assert endpoint == {"addresses": [instance.address], "secret": start["secret"]}
            assert instance.calls == 3

            problem(await client.post(f"{path(world)}/start"), 409, "service_active")
            stopping = ok(await client.post(f"{path(world)}/stop"), 202)
            assert (stopping["status"], stopping["reason_code"]) == ("stopping", "user_stop")
            stop = (await take(agent, "stop_service"))["payload"]["stop"]
            assert stop == {"service_id": created["id"], "reason_code": "user_stop"}
            problem(await client.post(f"{path(world)}/predict", json={}), 409, "service_not_serving")
            reply = await event(agent, created["id"], "stopped", instance=0)
            assert (reply["status"], reply["stop"]) == ("stopped", True)

    stopped = ok(await client.get(path(world)))
    assert (stopped["status"], stopped["reason_code"], stopped["serving_instances"]) == (
        "stopped",
        "user_stop",
        [],
    )
    assert stopped["ended_at"] is not None
    events = ok(await client.get(f"{path(world)}/events"))["items"]
    assert status_moves(events) == [
        ("created", "starting", None),
        ("starting", "serving", None),
        ("serving", "stopping", "user_stop"),
        ("stopping", "stopped", "user_stop"),
    ]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "service_created" and "instance_serving" in kinds and "instance_stopped" in kinds
    # Started again: a new secret, the old instance's address forgotten.
    async with agent_client(app, world.agent_token) as agent:
        again = await started(client, agent, world)
    assert again != start["secret"]
    assert ok(await client.get(path(world)))["serving_instances"] == []


async def test_predict_refused_when_not_serving_and_502_when_unreachable(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    created = await publish(client, world)
    problem(await client.post(f"{path(world)}/predict", json={"x": 1}), 409, "service_not_serving")
    problem(await client.get(f"{path(world)}/endpoint"), 409, "service_not_serving")
    with socket.socket() as closed:  # a port nothing listens on once this closes
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with agent_client(app, world.agent_token) as agent:
        await started(client, agent, world)
        await event(agent, created["id"], "serving", address=f"http://127.0.0.1:{port}")
    unreachable = problem(
        await client.post(f"{path(world)}/predict", json={"x": 1}), 502, "service_unreachable"
    )
    assert str(port) in unreachable["detail"]
    limit = app.state.settings.max_json_body_bytes
    too_large = await client.post(
        f"{path(world)}/predict",
        content=b"x" * (limit + 1),
        headers={"Content-Type": "application/octet-stream"},
    )
    problem(too_large, 413, "body_too_large")


async def test_instances_answer_in_turn_and_restarts_keep_it_serving(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    created = await publish(client, world, instances=2)
    service_id = created["id"]
    async with agent_client(app, world.agent_token) as agent:
        secret = await started(client, agent, world)
        with serving(secret, 0) as first, serving(secret, 1) as second:
            await event(agent, service_id, "serving", instance=0, address=first.address)
            await event(agent, service_id, "serving", instance=1, address=f"{second.address}/")
            assert ok(await client.get(path(world)))["serving_instances"] == [0, 1]
            answered = [ok(await client.post(f"{path(world)}/predict", json=n))["instance"] for n in range(4)]
            assert sorted(answered) == [0, 0, 1, 1] and answered[0] != answered[1], answered

            reply = await event(
                agent,
                service_id,
                "exited",
                instance=0,
                exit_code=1,
                error_tail="MemoryError",
                restarting=True,
            )
            assert (reply["status"], reply["stop"]) == ("serving", False)
            one_left = ok(await client.get(path(world)))
            assert (one_left["serving_instances"], one_left["error_tail"]) == ([1], "MemoryError")
            assert ok(await client.post(f"{path(world)}/predict", json=1))["instance"] == 1
            reply = await event(agent, service_id, "exited", instance=1, signal=9, restarting=True)
            assert reply["status"] == "starting"
            problem(await client.post(f"{path(world)}/predict", json=1), 409, "service_not_serving")
            assert (await event(agent, service_id, "serving", instance=1, address=second.address))[
                "status"
            ] == ("serving")
            reply = await event(
                agent,
                service_id,
                "exited",
                instance=1,
                exit_code=2,
                error_tail="Traceback: boom",
                restarting=False,
            )
            assert (reply["status"], reply["stop"]) == ("failed", True)
    failed = ok(await client.get(path(world)))
    assert (failed["status"], failed["reason_code"], failed["error_tail"]) == (
        "failed",
        "exit_nonzero",
        "Traceback: boom",
    )
    assert failed["serving_instances"] == []
    assert status_moves(ok(await client.get(f"{path(world)}/events"))["items"])[-3:] == [
        ("serving", "starting", None),
        ("starting", "serving", None),
        ("serving", "failed", "exit_nonzero"),
    ]


async def test_the_maximum_run_time_stops_it(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    created = await publish(client, world, max_run_seconds=1)
    async with agent_client(app, world.agent_token) as agent:
        await started(client, agent, world)
        await event(agent, created["id"], "serving", address="http://127.0.0.1:9")
        reply = await event(agent, created["id"], "stopped", reason_code="max_duration")
        assert (reply["status"], reply["stop"]) == ("stopped", True)
        # A late fact about the stopped service changes nothing and is told to stop.
        late = await event(agent, created["id"], "serving", address="http://127.0.0.1:9")
        assert (late["status"], late["stop"]) == ("stopped", True)
    found = ok(await client.get(path(world)))
    assert (found["status"], found["reason_code"], found["serving_instances"]) == (
        "stopped",
        "max_duration",
        [],
    )


async def test_hello_keeps_what_is_wanted_and_stops_the_rest(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    ids = {
        name: (await publish(client, world, name))["id"]
        for name in ("kept", "ended", "lost", "stopping", "untaken")
    }
    unknown = str(uuid.uuid4())
    async with agent_client(app, world.agent_token) as agent:
        for name in ("kept", "ended", "lost", "stopping"):
            await started(client, agent, world, name)
            await event(agent, ids[name], "serving", address="http://127.0.0.1:9")
        ok(await client.post(f"{path(world, 'ended')}/stop"), 202)
        await event(agent, ids["ended"], "stopped")
        ok(await client.post(f"{path(world, 'stopping')}/stop"), 202)
        ok(await client.post(f"{path(world, 'untaken')}/start"), 202)
        held = [ids["kept"], ids["ended"], unknown]
        reply = ok(await agent.post("/hello", json={**HELLO, "services": held}))
        assert reply["stop_services"] == [ids["ended"], unknown]
        # The start it had not taken waits for its next poll.
        assert [
            c["service_id"] for c in ok(await agent.get("/commands")) if c["kind"] == "start_service"
        ] == [ids["untaken"]]
    statuses = {name: ok(await client.get(path(world, name))) for name in ids}
    assert (statuses["kept"]["status"], statuses["kept"]["serving_instances"]) == ("serving", [0])
    assert (statuses["lost"]["status"], statuses["lost"]["reason_code"]) == ("failed", "lost")
    assert (statuses["stopping"]["status"], statuses["stopping"]["reason_code"]) == ("stopped", "user_stop")
    assert statuses["untaken"]["status"] == "starting"
    assert statuses["ended"]["status"] == "stopped"


async def test_delete_stops_a_served_service_first(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    created = await publish(client, world, "idle")
    assert (await client.delete(path(world, "idle"))).status_code == 204
    problem(await client.get(path(world, "idle")), 404, "service_not_found")

    untaken = await publish(client, world, "untaken")
    ok(await client.post(f"{path(world, 'untaken')}/start"), 202)
    assert (await client.delete(path(world, "untaken"))).status_code == 204  # no agent took it

    served = await publish(client, world, "served")
    async with agent_client(app, world.agent_token) as agent:
        assert ok(await agent.get("/commands")) == []  # the withdrawn start went with its service
        await started(client, agent, world, "served")
        await event(agent, served["id"], "serving", address="http://127.0.0.1:9")
        deleting = ok(await client.delete(path(world, "served")), 202)
        assert (deleting["status"], deleting["delete_requested"]) == ("stopping", True)
        await take(agent, "stop_service")
        reply = await event(agent, served["id"], "stopped")
        assert (reply["status"], reply["stop"]) == ("stopped", True)
        problem(await client.get(path(world, "served")), 404, "service_not_found")
        problem(
            await agent.post(f"/services/{served['id']}/events", json={"type": "stopped"}),
            404,
            "service_not_found",
        )
        reply = ok(await agent.post("/hello", json={**HELLO, "services": [served["id"]]}))
        assert reply["stop_services"] == [served["id"]]
    assert ok(await client.get(f"/projects/{world.project}/services"))["items"] == []
    del created, untaken


async def test_bad_input_is_refused_and_changes_nothing(
    client: AsyncClient, dump_database: Callable[[], Awaitable[DatabaseDump]]
) -> None:
    world = await make_world(client)
    ok(await upload_package(client, world.project, "trainonly", zip_bytes(valid_package(predict=False))), 201)
    await publish(client, world, "taken")
    disabled = ok(await client.post("/machines", json={"name": "off", "address": "10.0.0.2"}), 201)["name"]
    ok(await client.post(f"/machines/{disabled}/disable"))
    before = await dump_database()
    services = f"/projects/{world.project}/services"
    base = {"name": "svc", "package": BASE_PACKAGE, "version": "1.0", "machine": world.machine}
    for change, status, code in (
        ({"instances": 0}, 422, "validation_error"),
        ({"instances": 17}, 422, "validation_error"),
        ({"max_run_seconds": 0}, 422, "validation_error"),
        ({"name": "..."}, 422, "validation_error"),
        ({"colour": "red"}, 422, "validation_error"),
        ({"package": "nothing"}, 404, "package_not_found"),
        ({"version": "9.0"}, 404, "package_version_not_found"),
        ({"version": "one"}, 404, "package_version_not_found"),
        ({"package": "trainonly"}, 422, "package_cannot_serve"),
        ({"machine": "nowhere"}, 404, "machine_not_found"),
        ({"machine": disabled}, 409, "machine_disabled"),
        ({"name": "taken"}, 409, "service_exists"),
    ):
        problem(await client.post(services, json={**base, **change}), status, code)
    problem(await client.post(f"{path(world, 'taken')}/stop"), 409, "service_not_active")
    problem(await client.post(f"{path(world, 'nothing')}/start"), 404, "service_not_found")
    problem(await client.get(f"{services}?status=dancing"), 422, "validation_error")
    assert await dump_database() == before


async def test_viewer_reads_but_may_not_predict(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    created = await publish(client, world)
    tokens = {
        role: await member_token(client, world.project, f"u-{role}", role) for role in ("viewer", "trainer")
    }
    async with agent_client(app, world.agent_token) as agent:
        secret = await started(client, agent, world)
        with serving(secret) as instance:
            await event(agent, created["id"], "serving", address=instance.address)
            for role, allowed in (("viewer", False), ("trainer", True)):
                headers = {"Authorization": f"Bearer {tokens[role]}"}
                assert ok(await client.get(path(world), headers=headers))["status"] == "serving"
                predicted = await client.post(f"{path(world)}/predict", json=[1], headers=headers)
                endpoint = await client.get(f"{path(world)}/endpoint", headers=headers)
                if allowed:
                    assert ok(predicted) == {"instance": 0, "input": [1]}
                    assert ok(endpoint)["secret"] == secret
                else:
                    problem(predicted, 403, "permission_denied")
                    problem(endpoint, 403, "permission_denied")
                    problem(
                        await client.post(f"{path(world)}/stop", headers=headers), 403, "permission_denied"
                    )
            assert instance.calls == 1


async def test_only_the_services_machine_may_report_or_fetch(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    other = await make_world(client, "-other")
    created = await publish(client, world)
    async with agent_client(app, other.agent_token) as intruder:
        problem(await intruder.get(f"/services/{created['id']}/package"), 404, "service_not_found")
        problem(
            await intruder.post(
                f"/services/{created['id']}/events", json={"type": "serving", "address": "http://x:1"}
            ),
            404,
            "service_not_found",
        )
    async with agent_client(app, world.agent_token) as agent:
        await started(client, agent, world)
        problem(
            await agent.post(
                f"/services/{created['id']}/events",
                json={"type": "serving", "instance": 1, "address": "http://h:1"},
            ),
            422,
            "invalid_instance",
        )
        for address in ("ftp://host:1", "http://host:1/predict", "nothing", None):
            problem(
                await agent.post(
                    f"/services/{created['id']}/events", json={"type": "serving", "address": address}
                ),
                422,
                "invalid_address",
            )
    assert ok(await client.get(path(world)))["status"] == "starting"


async def test_predictions_are_counted_in_prometheus(
    client: AsyncClient, anon: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client, "-metrics")
    created = await publish(client, world, "counted")
    labels = {"project": world.project, "service": "counted"}

    def counted(outcome: str) -> float:
        return REGISTRY.get_sample_value("trainyard_predictions_total", {**labels, "outcome": outcome}) or 0.0

    before = {outcome: counted(outcome) for outcome in ("ok", "prediction_failed", "service_not_serving")}
    timed = REGISTRY.get_sample_value("trainyard_predict_duration_seconds_count", labels) or 0.0
    async with agent_client(app, world.agent_token) as agent:
        secret = await started(client, agent, world, "counted")
        with serving(secret) as instance:
            await event(agent, created["id"], "serving", address=instance.address)
            ok(await client.post(f"{path(world, 'counted')}/predict", json=1))
            problem(
                await client.post(f"{path(world, 'counted')}/predict", json={"raise": "x"}),
                422,
                "prediction_failed",
            )
    assert counted("ok") == before["ok"] + 1
    assert counted("prediction_failed") == before["prediction_failed"] + 1
    assert REGISTRY.get_sample_value("trainyard_predict_duration_seconds_count", labels) == timed + 2
    assert "trainyard_predictions_total{" in (await anon.get("/metrics")).text


async def test_what_a_service_publishes_stays_until_it_is_deleted(client: AsyncClient) -> None:
    world = await make_world(client)
    ok(await upload_package(client, world.project, "served", BASE_PACKAGE_ZIP), 201)
    host = ok(await client.post("/machines", json={"name": "svc-host", "address": "10.0.0.3"}), 201)["name"]
    await publish(client, world, package="served", machine=host)
    version = f"/projects/{world.project}/packages/served/versions/1.0"
    assert "services" in problem(await client.delete(version), 409, "package_version_in_use")["detail"]
    assert "services" in problem(await client.delete(f"/machines/{host}"), 409, "machine_in_use")["detail"]
    assert (await client.delete(path(world))).status_code == 204
    assert (await client.delete(version)).status_code == 204
    assert (await client.delete(f"/machines/{host}")).status_code == 204


async def test_a_services_moves_are_delivered_as_webhooks(
    client: AsyncClient, app: FastAPI, receiver: Receiver
) -> None:
    world = await make_world(client)
    body = {"url": receiver.url, "events": ["service.status_changed"]}
    hook = ok(await client.post(f"/projects/{world.project}/webhooks", json=body), 201)
    created = await publish(client, world)
    async with agent_client(app, world.agent_token) as agent:
        await started(client, agent, world)
        await event(agent, created["id"], "serving", address="http://127.0.0.1:9")
        ok(await client.post(f"{path(world)}/stop"), 202)
        await event(agent, created["id"], "stopped")
    deliveries = await asyncio.to_thread(receiver.wait_for, 5)
    payloads = [Verifier(hook["secret"]).verify(d.body, d.headers) for d in deliveries]
    assert {p["type"] for p in payloads} == {"service.status_changed"}
    moves = sorted((p["data"]["from_status"] or "", p["data"]["status"]) for p in payloads)
    assert moves == sorted(
        [
            ("", "created"),
            ("created", "starting"),
            ("starting", "serving"),
            ("serving", "stopping"),
            ("stopping", "stopped"),
        ]
    )
    assert all(p["data"]["service_id"] == created["id"] and p["data"]["service"] == "svc" for p in payloads)
    # Ends once every outcome is recorded: the dispatcher is not cut off mid-write when the app stops.
    log = f"/projects/{world.project}/webhooks/{hook['id']}/deliveries"
    for _ in range(300):  # an outer bound, never a timing check
        deliveries_log = ok(await client.get(log))["items"]
        if len(deliveries_log) == 5 and all(d["state"] != "pending" for d in deliveries_log):
            break
        await asyncio.sleep(0.1)
    assert [d["state"] for d in deliveries_log] == ["succeeded"] * 5


async def test_a_watcher_is_answered_when_the_service_moves(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    await publish(client, world)
    first = await client.get(path(world))
    etag = first.headers["etag"]
    assert (await client.get(path(world), headers={"If-None-Match": etag})).status_code == 304
    watching = asyncio.create_task(
        client.get(path(world), params={"wait": 20}, headers={"If-None-Match": etag})
    )
    for _ in range(500):  # until the watch waits on the notifier (a bound, not a timing)
        if app.state.notifier.waiting:
            break
        await asyncio.sleep(0.01)
    ok(await client.post(f"{path(world)}/start"), 202)
    moved = await watching
    assert ok(moved)["status"] == "starting" and moved.headers["etag"] != etag


async def test_the_sweeper_times_out_an_untaken_start_and_ends_what_a_silent_machine_served(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = await make_world(client)
    ids = {name: (await publish(client, world, name))["id"] for name in ("untaken", "served", "stopping")}
    async with agent_client(app, world.agent_token) as agent:
        for name in ("served", "stopping"):
            await started(client, agent, world, name)
            await event(agent, ids[name], "serving", address="http://127.0.0.1:9")
        ok(await client.post(f"{path(world, 'stopping')}/stop"), 202)
        ok(await client.post(f"{path(world, 'untaken')}/start"), 202)
    settings: Settings = app.state.settings
    sweeper = Sweeper(app.state.sessionmaker, app.state.notifier, settings)

    def later(seconds: float) -> None:
        monkeypatch.setattr(sweeper_module, "utcnow", lambda: utcnow() + timedelta(seconds=seconds))

    later(settings.start_timeout + 1)  # still short of lost_after: only the untaken start ends
    await sweeper.sweep_once()
    found = {name: ok(await client.get(path(world, name))) for name in ids}
    assert (found["untaken"]["status"], found["untaken"]["reason_code"]) == ("failed", "start_timeout")
    assert (found["served"]["status"], found["stopping"]["status"]) == ("serving", "stopping")
    later(settings.lost_after + 1)
    await sweeper.sweep_once()
    found = {name: ok(await client.get(path(world, name))) for name in ids}
    assert (found["served"]["status"], found["served"]["reason_code"]) == ("failed", "lost")
    assert (found["stopping"]["status"], found["stopping"]["reason_code"]) == ("stopped", "user_stop")
    assert found["served"]["serving_instances"] == []
    moves = status_moves(ok(await client.get(f"{path(world, 'served')}/events"))["items"])
    assert moves[-1] == ("serving", "failed", "lost")


async def test_racing_requests_each_decide_on_what_committed(client: AsyncClient, app: FastAPI) -> None:
    """Two starts at once: one wins, one is refused. Instances reporting at once: each keeps the
    other's address (every change is a compare-and-set on the row's revision)."""
    world = await make_world(client)
    created = await publish(client, world, instances=4)
    starts = await asyncio.gather(*(client.post(f"{path(world)}/start") for _ in range(2)))
    assert sorted(r.status_code for r in starts) == [202, 409], [r.text for r in starts]
    problem(next(r for r in starts if r.status_code == 409), 409, "service_active")
    async with agent_client(app, world.agent_token) as agent:
        await take(agent, "start_service")  # one start command: the refused start queued none
        replies = await asyncio.gather(
            *(
                event(agent, created["id"], "serving", instance=n, address=f"http://127.0.0.1:{9000 + n}")
                for n in range(4)
            )
        )
    assert {reply["status"] for reply in replies} == {"serving"}
    assert ok(await client.get(path(world)))["serving_instances"] == [0, 1, 2, 3]
