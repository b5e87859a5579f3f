"""Thirty copies of one action at once: the answers are exactly those docs/run-lifecycle.md documents,
the same on SQLite (requests queued for its one connection) and on PostgreSQL (requests truly at once,
each on a connection of its own), whatever the interleaving."""

import asyncio
from collections import Counter
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient, Response

from tests.api.world import (
    World,
    agent_client,
    make_world,
    ok,
    report,
    run_events,
    start_run,
    take_commands,
    transitions,
)

COPIES = 30


def _outcomes(responses: list[Response]) -> Counter[tuple[int, str | None]]:
    assert all(r.status_code < 500 for r in responses), [r.text for r in responses if r.status_code >= 500]
    return Counter((r.status_code, r.json().get("code") if r.status_code >= 400 else None) for r in responses)


async def _at_once(client: AsyncClient, world: World, action: str) -> Counter[tuple[int, str | None]]:
    requests = (client.post(f"{world.process_path}/{action}") for _ in range(COPIES))
    return _outcomes(list(await asyncio.gather(*requests)))


async def _runs(client: AsyncClient, world: World) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = ok(await client.get(f"{world.process_path}/runs", params={"limit": 200}))[
        "items"
    ]
    return runs


async def test_stops_of_an_untaken_run_answer_202_once_then_409(client: AsyncClient, app: FastAPI) -> None:
    """The first stop ends the run at once; every other one finds an ended run: 409, nothing to stop."""
    world = await make_world(client)
    run = await start_run(client, world)
    assert await _at_once(client, world, "stop") == {(202, None): 1, (409, "run_not_active"): COPIES - 1}
    assert transitions(await run_events(client, world, run["id"])) == [
        ("user", None, "starting", None),
        ("user", "starting", "stopped", "user_stop"),
    ]
    async with agent_client(app, world.agent_token) as agent:
        assert ok(await agent.get("/commands")) == []


async def test_stops_of_a_running_run_all_answer_202_and_ask_the_agent_once(
    client: AsyncClient, app: FastAPI
) -> None:
    """A stop of a run already `stopping` is accepted and changes nothing (documented as idempotent)."""
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await start_run(client, world)
        await take_commands(agent)
        await report(agent, run["id"], "launched")
        assert await _at_once(client, world, "stop") == {(202, None): COPIES}
        commands = ok(await agent.get("/commands"))
        assert [(c["kind"], c["run_id"]) for c in commands] == [("stop_run", run["id"])]
        # Once the run has ended, a stop has nothing left to stop.
        await report(agent, run["id"], "exited", exit_code=143)
        assert await _at_once(client, world, "stop") == {(409, "run_not_active"): COPIES}
    assert transitions(await run_events(client, world, run["id"]))[2:] == [
        ("user", "running", "stopping", "user_stop"),
        ("agent", "stopping", "stopped", "user_stop"),
    ]


async def test_restarts_each_replace_the_untaken_run(client: AsyncClient, app: FastAPI) -> None:
    """Each restart finds either no active run (a start) or a run no agent took (stopped at once and
    replaced): every one answers 201 with a run of its own, on both databases."""
    world = await make_world(client)
    await start_run(client, world)
    ok(await client.post(f"{world.process_path}/stop"), 202)  # never taken: stopped at once
    assert await _at_once(client, world, "restart") == {(201, None): COPIES}
    runs = await _runs(client, world)
    assert [r["number"] for r in runs] == list(range(1, COPIES + 2))
    assert [r["status"] for r in runs] == ["stopped"] * COPIES + ["starting"]
    process = ok(await client.get(world.process_path))
    assert (process["run_count"], process["restart_pending"]) == (COPIES + 1, False)
    async with agent_client(app, world.agent_token) as agent:
        commands = ok(await agent.get("/commands"))
    assert [(c["kind"], c["run_id"]) for c in commands] == [("start_run", runs[-1]["id"])]


async def test_restarts_of_a_running_run_stop_it_once_and_start_one_run(
    client: AsyncClient, app: FastAPI
) -> None:
    """On a run an agent took, every restart answers 202 (the stop is under way, the restart pending);
    one stop command goes out, and the run's end starts exactly one new run."""
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await start_run(client, world)
        await take_commands(agent)
        await report(agent, run["id"], "launched")
        assert await _at_once(client, world, "restart") == {(202, None): COPIES}
        assert [c["kind"] for c in await take_commands(agent)] == ["stop_run"]
        await report(agent, run["id"], "exited", exit_code=143)
    runs = await _runs(client, world)
    assert [(r["number"], r["status"]) for r in runs] == [(1, "stopped"), (2, "starting")]
    assert ok(await client.get(world.process_path))["restart_pending"] is False
