"""Requests racing on purpose: the conditional UPDATEs let exactly one of them win, the others get a clear
409, and nothing ever answers 5xx. On PostgreSQL the requests truly run at once (a pool of connections);
on SQLite they queue for its one connection, and the answers must be the same."""

import asyncio
from collections import Counter
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response

from api.runs import service as runs_service
from tests.api.world import (
    World,
    agent_client,
    get_run,
    make_machine,
    make_world,
    ok,
    report,
    run_events,
    start_run,
    take_commands,
    transitions,
)


def _outcomes(responses: list[Response]) -> Counter[tuple[int, str | None]]:
    """(status, problem code) of each answer, counted; no answer may be a server error."""
    assert all(r.status_code < 500 for r in responses), [r.text for r in responses if r.status_code >= 500]
    return Counter((r.status_code, r.json().get("code") if r.status_code >= 400 else None) for r in responses)


async def _runs(client: AsyncClient, world: World) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = ok(await client.get(f"{world.process_path}/runs", params={"limit": 200}))[
        "items"
    ]
    return runs


async def _create_process(client: AsyncClient, world: World, machine: str) -> Response:
    return await client.post(
        f"/projects/{world.project}/templates/{world.template}/processes", json={"machine": machine}
    )


async def test_fifty_concurrent_starts_make_exactly_one_run(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    responses = await asyncio.gather(*(client.post(f"{world.process_path}/start") for _ in range(50)))
    assert _outcomes(list(responses)) == {(201, None): 1, (409, "run_active"): 49}

    runs = await _runs(client, world)
    assert [(r["number"], r["status"]) for r in runs] == [(1, "starting")]
    winner = next(r for r in responses if r.status_code == 201).json()
    assert winner["latest_run"]["id"] == runs[0]["id"] and winner["run_count"] == 1
    process = ok(await client.get(world.process_path))
    assert (process["run_count"], process["status"]) == (1, "starting")
    events = ok(await client.get(f"{world.process_path}/events", params={"limit": 200}))["items"]
    assert [e["kind"] for e in events] == ["process_created", "run_status"]
    async with agent_client(app, world.agent_token) as agent:
        commands = ok(await agent.get("/commands"))
    assert [(c["kind"], c["run_id"]) for c in commands] == [("start_run", runs[0]["id"])]


async def test_concurrent_restarts_never_hold_two_active_runs(client: AsyncClient, app: FastAPI) -> None:
    """Each restart that finds the run still untaken by any agent replaces it at once; whatever the
    interleaving, every run but the last ends `stopped` and the process holds one active run."""
    world = await make_world(client)
    first = await start_run(client, world)
    ok(await client.post(f"{world.process_path}/stop"), 202)  # never taken: stopped at once
    responses = await asyncio.gather(*(client.post(f"{world.process_path}/restart") for _ in range(20)))
    outcomes = _outcomes(list(responses))
    assert outcomes[(201, None)] >= 1 and set(outcomes) <= {(201, None), (409, "run_active")}, outcomes

    runs = await _runs(client, world)
    # Run 1, then one new run for each restart answered 201.
    assert [r["number"] for r in runs] == list(range(1, outcomes[(201, None)] + 2))
    assert runs[0]["id"] == first["id"]
    assert [(r["status"], r["reason_code"]) for r in runs[:-1]] == [("stopped", "user_stop")] * (
        len(runs) - 1
    )
    assert runs[-1]["status"] == "starting"
    process = ok(await client.get(world.process_path))
    assert (process["latest_run"]["id"], process["restart_pending"]) == (runs[-1]["id"], False)
    async with agent_client(app, world.agent_token) as agent:
        commands = ok(await agent.get("/commands"))
    # Only the last run's start is still offered; every earlier one was withdrawn.
    assert [(c["kind"], c["run_id"]) for c in commands] == [("start_run", runs[-1]["id"])]


async def test_concurrent_stops_ask_the_agent_once(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await start_run(client, world)
        await take_commands(agent)
        await report(agent, run["id"], "launched")
        responses = await asyncio.gather(*(client.post(f"{world.process_path}/stop") for _ in range(20)))
        assert _outcomes(list(responses)) == {(202, None): 20}
        commands = ok(await agent.get("/commands"))
    assert [(c["kind"], c["run_id"]) for c in commands] == [("stop_run", run["id"])]
    assert (
        transitions(await run_events(client, world, run["id"])).count(
            ("user", "running", "stopping", "user_stop")
        )
        == 1
    )


async def test_concurrent_stops_before_the_start_was_taken_end_the_run_once(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    run = await start_run(client, world)
    responses = await asyncio.gather(*(client.post(f"{world.process_path}/stop") for _ in range(20)))
    outcomes = _outcomes(list(responses))
    # A stop that finds the run already ended says there is nothing left to stop.
    assert outcomes[(202, None)] >= 1 and set(outcomes) <= {(202, None), (409, "run_not_active")}, outcomes
    assert transitions(await run_events(client, world, run["id"])) == [
        ("user", None, "starting", None),
        ("user", "starting", "stopped", "user_stop"),
    ]
    async with agent_client(app, world.agent_token) as agent:
        assert ok(await agent.get("/commands")) == []


async def test_a_stop_racing_the_agents_exit_ends_the_run_once(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await start_run(client, world)
        await take_commands(agent)
        await report(agent, run["id"], "launched")
        stop, exited = await asyncio.gather(
            client.post(f"{world.process_path}/stop"),
            agent.post(f"/runs/{run['id']}/events", json={"type": "exited", "exit_code": 1}),
        )
    assert exited.status_code == 200 and stop.status_code in (202, 409), stop.text
    found = await get_run(client, world, run["id"])
    ended = [
        t for t in transitions(await run_events(client, world, run["id"])) if t[2] in ("failed", "stopped")
    ]
    assert len(ended) == 1 and ended[0][2] == found["status"]
    if found["status"] == "stopped":
        # The stop came first; the exit ended the run it was stopping.
        assert stop.status_code == 202 and found["reason_code"] == "user_stop"
        assert exited.json() == {"run_id": run["id"], "status": "stopped", "stop": True}
    else:
        # The exit came first: the stop found the run ended, or no run at all.
        assert (found["status"], found["reason_code"]) == ("failed", "exit_nonzero")
        assert exited.json() == {"run_id": run["id"], "status": "failed", "stop": True}
        if stop.status_code == 202:
            assert stop.json()["status"] == "failed"
        else:
            assert stop.json()["code"] == "run_not_active"
        async with agent_client(app, world.agent_token) as agent:
            assert ok(await agent.get("/commands")) == []


async def test_start_racing_disable_never_leaves_a_run_on_a_disabled_process(client: AsyncClient) -> None:
    world = await make_world(client)
    start, disable = await asyncio.gather(
        client.post(f"{world.process_path}/start"), client.post(f"{world.process_path}/disable")
    )
    outcomes = _outcomes([start, disable])
    process = ok(await client.get(world.process_path))
    if start.status_code == 201:
        assert outcomes == {(201, None): 1, (409, "run_active"): 1}
        assert (process["enabled"], process["status"]) == (True, "starting")
    else:
        assert outcomes == {(200, None): 1, (409, "process_disabled"): 1}
        assert (process["enabled"], process["run_count"]) == (False, 0)


async def test_start_racing_delete_never_leaves_a_run_without_its_process(client: AsyncClient) -> None:
    world = await make_world(client)
    start, delete = await asyncio.gather(
        client.post(f"{world.process_path}/start"), client.delete(world.process_path)
    )
    outcomes = _outcomes([start, delete])
    if start.status_code == 201:
        assert outcomes == {(201, None): 1, (409, "run_active"): 1}
        assert ok(await client.get(world.process_path))["status"] == "starting"
        assert ok(await client.get(f"/machines/{world.machine}"))["process_count"] == 1
    else:
        assert outcomes == {(204, None): 1, (404, "process_not_found"): 1}
        assert (await client.get(world.process_path)).status_code == 404
        assert ok(await client.get(f"/machines/{world.machine}"))["process_count"] == 0
    assert len(ok(await client.get(f"/projects/{world.project}/runs"))["items"]) == outcomes[(201, None)]


async def test_concurrent_deletes_free_the_machines_place_once(client: AsyncClient) -> None:
    world = await make_world(client)
    responses = await asyncio.gather(*(client.delete(world.process_path) for _ in range(10)))
    assert _outcomes(list(responses)) == {(204, None): 1, (404, "process_not_found"): 9}
    assert ok(await client.get(f"/machines/{world.machine}"))["process_count"] == 0


@pytest.mark.parametrize(("capacity", "created"), [(1, 1), (2, 2)])
async def test_two_concurrent_creates_respect_the_machines_capacity(
    client: AsyncClient, capacity: int, created: int
) -> None:
    world = await make_world(client)
    await make_machine(client, "target", capacity=capacity)
    responses = await asyncio.gather(*(_create_process(client, world, "target") for _ in range(2)))
    expected: Counter[tuple[int, str | None]] = Counter({(201, None): created})
    if created < 2:
        expected[(409, "machine_full")] = 2 - created
    assert _outcomes(list(responses)) == expected
    machine = ok(await client.get("/machines/target"))
    assert (machine["capacity"], machine["process_count"]) == (capacity, created)
    on_target = [
        p
        for p in ok(await client.get(f"/projects/{world.project}/processes"))["items"]
        if p["machine"] == "target"
    ]
    assert len(on_target) == created


async def test_many_concurrent_creates_fill_the_machine_exactly(client: AsyncClient) -> None:
    world = await make_world(client)
    await make_machine(client, "target", capacity=5)
    responses = await asyncio.gather(*(_create_process(client, world, "target") for _ in range(30)))
    assert _outcomes(list(responses)) == {(201, None): 5, (409, "machine_full"): 25}
    assert ok(await client.get("/machines/target"))["process_count"] == 5


async def test_capacity_cannot_go_below_the_processes_held(client: AsyncClient) -> None:
    world = await make_world(client)
    await make_machine(client, "target", capacity=3)
    for _ in range(2):
        ok(await _create_process(client, world, "target"), 201)
    body = ok(await client.patch("/machines/target", json={"capacity": 1}), 409)
    assert body["code"] == "capacity_below_processes" and body["field"] == "capacity"
    assert ok(await client.get("/machines/target"))["capacity"] == 3
    assert ok(await client.patch("/machines/target", json={"capacity": 2}))["capacity"] == 2
    body = ok(await _create_process(client, world, "target"), 409)
    assert body["code"] == "machine_full"


async def test_capacity_shrinking_while_a_process_is_created_holds_the_limit(client: AsyncClient) -> None:
    world = await make_world(client)
    await make_machine(client, "target", capacity=2)
    ok(await _create_process(client, world, "target"), 201)
    create, shrink = await asyncio.gather(
        _create_process(client, world, "target"), client.patch("/machines/target", json={"capacity": 1})
    )
    outcomes = _outcomes([create, shrink])
    machine = ok(await client.get("/machines/target"))
    if create.status_code == 201:
        assert outcomes == {(201, None): 1, (409, "capacity_below_processes"): 1}
        assert (machine["capacity"], machine["process_count"]) == (2, 2)
    else:
        assert outcomes == {(200, None): 1, (409, "machine_full"): 1}
        assert (machine["capacity"], machine["process_count"]) == (1, 1)


async def test_an_exit_read_before_a_stop_committed_is_decided_on_the_stopping_run(
    client: AsyncClient, app: FastAPI, is_postgres: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's `exited` reads the run as `running`; a user's stop commits before the exit writes. The
    exit must then be judged against `stopping` (so: `stopped`), not against what it first read."""
    if not is_postgres:
        pytest.skip("SQLite serialises requests through its one connection: this interleaving cannot occur")
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await start_run(client, world)
        await take_commands(agent)
        await report(agent, run["id"], "launched")
        read_run = runs_service.machine_run
        stops: list[dict[str, Any]] = []

        async def read_then_stop(session: Any, machine_id: Any, run_id: Any) -> Any:
            found = await read_run(session, machine_id, run_id)
            stops.append(ok(await client.post(f"{world.process_path}/stop"), 202))
            return found

        monkeypatch.setattr(runs_service, "machine_run", read_then_stop)
        reply = await report(agent, run["id"], "exited", exit_code=1, error_tail="Terminated")
    assert stops[0]["status"] == "stopping"
    assert reply == {"run_id": run["id"], "status": "stopped", "stop": True}
    found = await get_run(client, world, run["id"])
    assert (found["status"], found["reason_code"], found["exit_code"]) == ("stopped", "user_stop", 1)
    assert transitions(await run_events(client, world, run["id"]))[2:] == [
        ("user", "running", "stopping", "user_stop"),
        ("agent", "stopping", "stopped", "user_stop"),
    ]
