"""The agent protocol (DESIGN.md, "The agent protocol"): hello and its reconciliation, the command
long-poll and its acknowledgements, and the walls between machines and between agents and users."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from prometheus_client import REGISTRY

from api.agent_routes.poll_store import PostgresPolls, SqlitePolls, Taken
from api.core.notify import Notifier
from shared.protocol import Command
from tests.api.world import (
    World,
    add_process,
    agent_client,
    get_run,
    make_world,
    ok,
    problem,
    report,
    run_events,
    start_run,
    take_commands,
    transitions,
)

HELLO = {"agent_version": "0.1.0", "hostname": "gpu-host"}


async def _running(client: AsyncClient, agent: AsyncClient, world: World) -> dict[str, Any]:
    run = await start_run(client, world)
    await take_commands(agent, "start_run")
    assert (await report(agent, run["id"], "launched"))["status"] == "running"
    return run


async def _until_waiting(app: FastAPI, count: int = 1) -> None:
    """Yield to the event loop until `count` long-polls wait on the notifier (a bounded number of turns)."""
    for _ in range(500):
        if app.state.notifier.waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the long-poll never started waiting")


async def test_hello_records_the_agent_and_marks_the_machine_online(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    before = ok(await client.get(f"/machines/{world.machine}"))
    assert (before["online"], before["last_seen_at"], before["agent_version"], before["gpus"]) == (
        False,
        None,
        None,
        [],
    )
    gpus = [
        {"index": 0, "name": "NVIDIA A100", "memory_total_mb": 81920, "uuid": "GPU-1"},
        {"index": 1, "name": "NVIDIA A100", "memory_total_mb": 81920, "uuid": "GPU-2"},
    ]
    async with agent_client(app, world.agent_token) as agent:
        reply = ok(await agent.post("/hello", json={**HELLO, "gpus": gpus}))
    assert reply == {"machine": world.machine, "stop_runs": [], "stop_services": []}
    after = ok(await client.get(f"/machines/{world.machine}"))
    assert (after["online"], after["agent_version"], after["gpus"]) == (True, "0.1.0", gpus)
    assert after["last_seen_at"] is not None


async def test_hello_reconciles_the_machines_active_runs(client: AsyncClient, app: FastAPI) -> None:
    """Active runs the agent does not list end `failed`/`lost` once it took their start; a start it has
    not taken stays for its next poll; the runs it lists are left alone."""
    world = await make_world(client)
    worlds = {"running": world}
    for name in ("starting", "stopping", "untaken", "held"):
        worlds[name] = await add_process(client, world)
    async with agent_client(app, world.agent_token) as agent:
        runs = {name: await start_run(client, w) for name, w in worlds.items() if name != "untaken"}
        await take_commands(agent, "start_run")
        for name in ("running", "stopping", "held"):
            await report(agent, runs[name]["id"], "launched")
        ok(await client.post(f"{worlds['stopping'].process_path}/stop"), 202)
        runs["untaken"] = await start_run(client, worlds["untaken"])
        delivered = [c for c in ok(await agent.get("/commands")) if c["kind"] == "start_run"]
        assert [c["run_id"] for c in delivered] == [runs["untaken"]["id"]]

        reply = ok(await agent.post("/hello", json={**HELLO, "runs": [runs["held"]["id"]]}))
        assert reply == {"machine": world.machine, "stop_runs": [], "stop_services": []}
        # The start it had not taken is offered again on its next poll: delivered at least once.
        again = [c for c in ok(await agent.get("/commands")) if c["kind"] == "start_run"]
        assert [c["id"] for c in again] == [delivered[0]["id"]]

    # A run being stopped that the agent no longer has was stopped; any other it lost.
    for name, was, status, reason in (
        ("running", "running", "failed", "lost"),
        ("starting", "starting", "failed", "lost"),
        ("stopping", "stopping", "stopped", "user_stop"),
    ):
        found = await get_run(client, worlds[name], runs[name]["id"])
        assert (found["status"], found["reason_code"]) == (status, reason), name
        assert "restarted" in found["detail"]
        events = await run_events(client, worlds[name], runs[name]["id"])
        assert transitions(events)[-1] == ("agent", was, status, reason)
        assert events[-1]["actor_name"] == world.machine
        assert ok(await client.get(worlds[name].process_path))["status"] == status
    assert (await get_run(client, world, runs["untaken"]["id"]))["status"] == "starting"
    held = await get_run(client, world, runs["held"]["id"])
    assert (held["status"], held["reason_code"]) == ("running", None)
    assert len(transitions(await run_events(client, world, runs["held"]["id"]))) == 2


async def test_hello_tells_the_agent_to_stop_runs_the_api_ended(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    ended: list[dict[str, Any]] = []
    async with agent_client(app, world.agent_token) as agent:
        for ending in ("failed", "stopped", "succeeded"):
            run = await _running(client, agent, world)
            if ending == "failed":
                ok(await agent.post("/hello", json=HELLO))  # the API ends it: lost
            elif ending == "stopped":
                ok(await client.post(f"{world.process_path}/stop"), 202)
                await report(agent, run["id"], "exited", signal=15)
            else:
                await report(agent, run["id"], "exited", exit_code=0)
                await report(agent, run["id"], "finished")
            ended.append(await get_run(client, world, run["id"]))
            assert ended[-1]["status"] == ending

        # The agent comes back still holding them all: it is told to stop them, and nothing changes.
        held = [run["id"] for run in ended]
        reply = ok(await agent.post("/hello", json={**HELLO, "runs": held}))
    assert reply["machine"] == world.machine and sorted(reply["stop_runs"]) == sorted(held)
    for before in ended:
        after = await get_run(client, world, before["id"])
        assert after == {**before, "agent_offline": False}


async def test_a_run_gone_at_hello_carries_out_a_pending_restart(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        first = await _running(client, agent, world)
        ok(await client.post(f"{world.process_path}/restart"), 202)
        ok(await agent.post("/hello", json=HELLO))
        process = ok(await client.get(world.process_path))
        assert (process["status"], process["run_count"], process["restart_pending"]) == ("starting", 2, False)
        commands = ok(await agent.get("/commands"))
    # The stop the agent never took was withdrawn with the run's end; the new run's start waits.
    assert [(c["kind"], c["run_id"]) for c in commands] == [("start_run", process["latest_run"]["id"])]
    # It was being stopped for the restart, and the agent no longer has it: it stopped.
    assert (await get_run(client, world, first["id"]))["status"] == "stopped"
    assert (await get_run(client, world, first["id"]))["reason_code"] == "user_stop"


async def test_commands_are_delivered_until_acknowledged(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    run = await start_run(client, world)
    async with agent_client(app, world.agent_token) as agent:
        first = ok(await agent.get("/commands"))
        second = ok(await agent.get("/commands", params={"wait": 0}))
        assert [c["id"] for c in first] == [c["id"] for c in second]
        assert first[0]["run_id"] == run["id"] and first[0]["kind"] == "start_run"
        ack = ok(await agent.post(f"/commands/{first[0]['id']}/ack"))
        assert ack == {"id": first[0]["id"], "state": "acknowledged"}
        # A repeated ack is a no-op that says the same.
        assert ok(await agent.post(f"/commands/{first[0]['id']}/ack")) == ack
        assert ok(await agent.get("/commands")) == []


async def test_commands_come_oldest_first(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    ok(await client.patch(f"/machines/{world.machine}", json={"capacity": 3}))
    others = [
        ok(
            await client.post(
                f"/projects/{world.project}/templates/{world.template}/processes",
                json={"machine": world.machine},
            ),
            201,
        )["id"]
        for _ in range(2)
    ]
    runs = [await start_run(client, world)]
    for process_id in others:
        runs.append(ok(await client.post(f"/projects/{world.project}/processes/{process_id}/start"), 201))
    async with agent_client(app, world.agent_token) as agent:
        commands = ok(await agent.get("/commands"))
    assert [c["run_id"] for c in commands] == [
        runs[0]["id"],
        runs[1]["latest_run"]["id"],
        runs[2]["latest_run"]["id"],
    ]


async def test_a_stop_the_agent_never_took_is_withdrawn_when_the_run_ends(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        ok(await client.post(f"{world.process_path}/stop"), 202)
        stop = ok(await agent.get("/commands"))
        assert [c["kind"] for c in stop] == ["stop_run"]
        # The run ended on its own before the agent acknowledged the stop.
        assert (await report(agent, run["id"], "exited", exit_code=0))["status"] == "stopped"
        assert ok(await agent.get("/commands")) == []
        assert ok(await agent.post(f"/commands/{stop[0]['id']}/ack"))["state"] == "cancelled"


async def test_a_long_poll_is_woken_by_a_new_command(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        poll = asyncio.create_task(agent.get("/commands", params={"wait": 20}))
        await _until_waiting(app)
        assert not poll.done()
        run = await start_run(client, world)
        commands = ok(await asyncio.wait_for(poll, timeout=20))
    assert [(c["kind"], c["run_id"]) for c in commands] == [("start_run", run["id"])]
    assert app.state.notifier.waiting == 0


async def test_a_long_poll_with_nothing_to_deliver_answers_empty(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        assert ok(await agent.get("/commands", params={"wait": 0.2})) == []
        problem(await agent.get("/commands", params={"wait": 31}), 422, "validation_error")
        problem(await agent.get("/commands", params={"wait": -1}), 422, "validation_error")
    assert app.state.notifier.waiting == 0
    assert ok(await client.get(f"/machines/{world.machine}"))["online"] is True


def _answered(route: str, status: str) -> float:
    """How many requests to `route` /metrics has counted with `status`."""
    value = REGISTRY.get_sample_value(
        "trainyard_http_requests_total", {"method": "GET", "route": route, "status": status}
    )
    return value or 0.0


async def test_a_held_poll_is_answered_once_and_counted_under_its_route(
    client: AsyncClient, app: FastAPI
) -> None:
    """The wait is held outside FastAPI (api/agent_routes/hold.py): its provisional first answer never
    reaches the agent, and the metrics see the one real answer under the route's template."""
    world = await make_world(client)
    route = "/agent/commands"  # the template as the API router holds it, below /api/v1
    before = _answered(route, "200"), _answered(route, "204")
    async with agent_client(app, world.agent_token) as agent:
        empty = await agent.get("/commands", params={"wait": 0.2})
        assert (empty.status_code, empty.json()) == (200, [])
        assert empty.headers["content-type"] == "application/json"
        poll = asyncio.create_task(agent.get("/commands", params={"wait": 20}))
        await _until_waiting(app)
        run = await start_run(client, world)
        woken = await asyncio.wait_for(poll, timeout=20)
    assert woken.status_code == 200
    assert [c["run_id"] for c in woken.json()] == [run["id"]]
    assert (_answered(route, "200"), _answered(route, "204")) == (before[0] + 2, before[1])
    assert app.state.notifier.waiting == 0


async def test_a_held_poll_woken_after_its_token_was_rotated_is_refused(
    client: AsyncClient, app: FastAPI
) -> None:
    """Woken, the poll authenticates again: a token rotated during its wait takes nothing."""
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        poll = asyncio.create_task(agent.get("/commands", params={"wait": 20}))
        await _until_waiting(app)
        new_token = ok(await client.post(f"/machines/{world.machine}/rotate-token"))["agent_token"]
        run = await start_run(client, world)
        problem(await asyncio.wait_for(poll, timeout=20), 401, "invalid_token")
    assert app.state.notifier.waiting == 0
    async with agent_client(app, new_token) as agent:  # the command waits for the new token's poll
        assert [c["run_id"] for c in ok(await agent.get("/commands"))] == [run["id"]]


async def test_malformed_events_are_refused_and_change_nothing(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        for bad in (
            {"type": "exploded"},
            {"type": "exited", "exit_code": 1, "surprise": True},
            {"type": "stage", "stage": "x", "progress": 1.5},
            {"type": "exited", "signal": 0},
            {"type": "exited", "reason_code": "no_such_reason"},
            {},
        ):
            response = await agent.post(f"/runs/{run['id']}/events", json=bad)
            assert response.status_code == 422, (bad, response.text)
    assert (await get_run(client, world, run["id"]))["status"] == "running"


async def test_a_rotated_agent_token_stops_working_at_once(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    new_token = ok(await client.post(f"/machines/{world.machine}/rotate-token"))["agent_token"]
    assert new_token != world.agent_token
    async with agent_client(app, world.agent_token) as old:
        problem(await old.get("/commands"), 401, "invalid_token")
    async with agent_client(app, new_token) as agent:
        assert ok(await agent.post("/hello", json=HELLO))["machine"] == world.machine


async def test_an_agent_reaches_its_own_machine_only(client: AsyncClient, app: FastAPI) -> None:
    """Commands, acknowledgements, events and hello are each limited to the caller's machine and runs."""
    ours = await make_world(client)
    theirs = await make_world(client, "2")
    ended = await add_process(client, theirs)
    async with agent_client(app, theirs.agent_token) as their_agent:
        their_active = await _running(client, their_agent, theirs)
        their_ended = await _running(client, their_agent, ended)
        await report(their_agent, their_ended["id"], "exited", exit_code=1)
    async with agent_client(app, ours.agent_token) as agent:
        # A long-poll is not woken by another machine's command, nor does it see it.
        poll = asyncio.create_task(agent.get("/commands", params={"wait": 0.3}))
        await _until_waiting(app)
        fresh = await add_process(client, theirs)
        await start_run(client, fresh)
        assert ok(await poll) == []
        async with agent_client(app, theirs.agent_token) as their_agent:
            their_command = ok(await their_agent.get("/commands"))[0]
        problem(await agent.post(f"/commands/{their_command['id']}/ack"), 404, "command_not_found")
        problem(await agent.post(f"/commands/{uuid.uuid4()}/ack"), 404, "command_not_found")

        for event in (
            {"type": "launched"},
            {"type": "stage", "stage": "x"},
            {"type": "exited", "exit_code": 1},
            {"type": "finished"},
        ):
            path = f"/runs/{their_active['id']}/events"
            problem(await agent.post(path, json=event), 404, "run_not_found")
        problem(
            await agent.post(f"/runs/{uuid.uuid4()}/events", json={"type": "launched"}), 404, "run_not_found"
        )
        # Our hello lists their ended run and an unknown one, and not their active run: none is ours.
        held = [their_ended["id"], str(uuid.uuid4())]
        assert ok(await agent.post("/hello", json={**HELLO, "runs": held}))["stop_runs"] == []

    active = await get_run(client, theirs, their_active["id"])
    assert (active["status"], active["exit_code"], active["stage"]) == ("running", None, None)
    assert len(await run_events(client, theirs, their_active["id"])) == 2
    assert (await get_run(client, theirs, their_ended["id"]))["status"] == "failed"
    async with agent_client(app, theirs.agent_token) as their_agent:
        # Their command is still theirs to take.
        assert ok(await their_agent.post(f"/commands/{their_command['id']}/ack"))["state"] == "acknowledged"


async def test_user_and_agent_tokens_each_keep_to_their_routes(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    run = await start_run(client, world)
    async with agent_client(app, world.agent_token) as agent:
        command = ok(await agent.get("/commands"))[0]
        for response in (
            await client.post("/agent/hello", json=HELLO),
            await client.get("/agent/commands"),
            await client.post(f"/agent/commands/{command['id']}/ack"),
            await client.post(f"/agent/runs/{run['id']}/events", json={"type": "launched"}),
        ):
            problem(response, 403, "agent_token_required")
        user_api = "http://trainyard.test/api/v1"
        for method, path in (
            ("GET", "/projects"),
            ("GET", f"/projects/{world.project}/runs/{run['id']}"),
            ("GET", f"/projects/{world.project}/runs/{run['id']}/events"),
            ("POST", f"{world.process_path}/stop"),
            ("POST", f"{world.process_path}/start"),
            ("POST", f"{world.process_path}/restart"),
            ("POST", f"{world.process_path}/disable"),
            ("DELETE", world.process_path),
            ("GET", f"/machines/{world.machine}"),
        ):
            problem(await agent.request(method, f"{user_api}{path}"), 403, "agent_token_not_allowed")
        # None of it had an effect: the start is still the agent's to take.
        assert ok(await agent.post(f"/commands/{command['id']}/ack"))["state"] == "acknowledged"
    found = await get_run(client, world, run["id"])
    assert (found["status"], found["launched_at"]) == ("starting", None)
    process = ok(await client.get(world.process_path))
    assert (process["enabled"], process["run_count"]) == (True, 1)


async def test_a_command_committed_after_the_look_but_before_the_wait_wakes_the_poll(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll's first pass looks for commands before its waiter can be registered (the machine is
    known only from the look): a command committed in between wakes it all the same. Driven, not
    timed: the start is committed right after the first pass's look has found nothing."""
    world = await make_world(client)
    looks: list[list[Command]] = []

    def committing_after(
        look: Callable[..., Awaitable[Taken | None]],
    ) -> Callable[..., Awaitable[Taken | None]]:
        async def then_commit(*args: Any) -> Taken | None:
            found = await look(*args)
            assert found is not None
            looks.append(found.commands)
            if len(looks) == 1:  # the first pass only: its look is done, its waiter not yet registered
                await start_run(client, world)
                assert app.state.notifier.waiting == 0
            return found

        return then_commit

    monkeypatch.setattr(SqlitePolls, "poll", committing_after(SqlitePolls.poll))
    monkeypatch.setattr(PostgresPolls, "poll", committing_after(PostgresPolls.poll))
    async with agent_client(app, world.agent_token) as agent:
        # Were the command missed, the poll would answer [] when its wait ends.
        commands = ok(await agent.get("/commands", params={"wait": 10}))
    assert [c["kind"] for c in commands] == ["start_run"]
    assert looks[0] == []  # the first pass found nothing: the wake-up brought the second
    assert app.state.notifier.waiting == 0


async def test_the_notifier_tells_a_look_whether_its_machine_was_woken_since() -> None:
    notifier = Notifier()
    a, b = uuid.uuid4(), uuid.uuid4()
    before = notifier.mark()
    notifier.wake({a})
    assert notifier.woken_since(a, before) and not notifier.woken_since(b, before)
    after = notifier.mark()
    assert not notifier.woken_since(a, after)
    with notifier.listen(a, since=before) as woken:
        assert woken.is_set()
    with notifier.listen(a, since=after) as woken:
        assert not woken.is_set()
    # Ids beyond what it remembers are forgotten: a look from before is taken as woken.
    for _ in range(Notifier.REMEMBERED + 1):
        notifier.wake({uuid.uuid4()})
    assert notifier.woken_since(b, after)
    # Everything woken (PgNotifier's reconnect): every look under way, for any machine.
    now = notifier.mark()
    with notifier.listen(b) as waiting:
        notifier.wake_all()
        assert waiting.is_set()
    assert notifier.woken_since(uuid.uuid4(), now)
    assert not notifier.woken_since(b, notifier.mark())
