"""The API's clock (api/runs/sweeper.py): start timeouts, maximum durations, offline and lost agents.

Each test builds its own Sweeper with tiny timeouts and calls `sweep_once()` itself; the app's own
sweeper is parked (tests/conftest.py). A deadline minutes away is reached by moving the sweeper's
clock, never by sleeping.
"""

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from api.core.config import Settings
from api.runs import sweeper as sweeper_module
from api.runs.sweeper import Sweeper
from tests.api.world import (
    World,
    add_process,
    agent_client,
    get_run,
    make_world,
    ok,
    report,
    run_events,
    start_run,
    take_commands,
    transitions,
)

SweeperFactory = Callable[..., Sweeper]
PAST_TIMEOUT = 0.15  # seconds slept to get past the tiny timeouts below


@pytest.fixture
def make_sweeper(app: FastAPI) -> SweeperFactory:
    """A Sweeper on the app's database and notifier, with the timeouts given (seconds)."""
    base: Settings = app.state.settings

    def build(**timeouts: float) -> Sweeper:
        fast = base.model_copy(update=timeouts)
        # model_copy carries the cached database URL over unchanged: the copy sweeps the same database.
        assert fast.resolved_database_url == base.resolved_database_url
        assert all(getattr(fast, name) == value for name, value in timeouts.items())
        return Sweeper(app.state.sessionmaker, app.state.notifier, fast)

    return build


@pytest.fixture
def shift_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Move the sweeper's idea of now `seconds` ahead."""
    real = sweeper_module.utcnow

    def shift(seconds: float) -> None:
        def later() -> datetime:
            return real() + timedelta(seconds=seconds)

        monkeypatch.setattr(sweeper_module, "utcnow", later)

    return shift


async def _running(client: AsyncClient, agent: AsyncClient, world: World) -> dict[str, Any]:
    run = await start_run(client, world)
    await take_commands(agent, "start_run")
    assert (await report(agent, run["id"], "launched"))["status"] == "running"
    return run


async def test_a_start_no_agent_took_times_out(
    client: AsyncClient, app: FastAPI, make_sweeper: SweeperFactory
) -> None:
    """Pending or delivered, a start no agent acknowledged fails `start_timeout`; an acknowledged one
    is the agent's and never times out."""
    world = await make_world(client)
    delivered_world = await add_process(client, world)
    taken_world = await add_process(client, world)
    taken = await start_run(client, taken_world)
    async with agent_client(app, world.agent_token) as agent:
        await take_commands(agent)
        delivered = await start_run(client, delivered_world)
        delivered_command = ok(await agent.get("/commands"))[0]
    pending = await start_run(client, world)
    await asyncio.sleep(PAST_TIMEOUT)
    # With the default timeout (5 minutes) nothing is due yet.
    await make_sweeper().sweep_once()
    assert (await get_run(client, world, pending["id"]))["status"] == "starting"

    await make_sweeper(start_timeout=0.05).sweep_once()
    for run in (pending, delivered):
        found = await get_run(client, world, run["id"])
        assert (found["status"], found["reason_code"]) == ("failed", "start_timeout")
        assert "0.05 s" in found["detail"] and found["ended_at"] is not None
        events = await run_events(client, world, run["id"])
        assert transitions(events) == [
            ("user", None, "starting", None),
            ("system", "starting", "failed", "start_timeout"),
        ]
        assert events[-1]["actor_name"] == "trainyard"
    assert ok(await client.get(world.process_path))["status"] == "failed"
    assert (await get_run(client, world, taken["id"]))["status"] == "starting"

    async with agent_client(app, world.agent_token) as agent:
        assert ok(await agent.get("/commands")) == []  # both starts were withdrawn
        ack = ok(await agent.post(f"/commands/{delivered_command['id']}/ack"))
        assert ack["state"] == "cancelled"
        assert (await report(agent, delivered["id"], "launched"))["stop"] is True
        assert (await report(agent, taken["id"], "launched"))["status"] == "running"
    await make_sweeper(start_timeout=0.05).sweep_once()
    assert (await get_run(client, world, taken["id"]))["status"] == "running"
    assert len(transitions(await run_events(client, world, taken["id"]))) == 2
    # The timed-out process is free again.
    assert (await start_run(client, world))["number"] == 2


async def test_a_run_past_its_maximum_duration_is_stopped(
    client: AsyncClient, app: FastAPI, make_sweeper: SweeperFactory, shift_clock: Callable[[float], None]
) -> None:
    world = await make_world(client, max_duration_seconds=60)
    sweeper = make_sweeper()
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        await sweeper.sweep_once()  # before the deadline: nothing
        assert (await get_run(client, world, run["id"]))["status"] == "running"
        assert ok(await agent.get("/commands")) == []

        shift_clock(61)
        await sweeper.sweep_once()
        stopping = await get_run(client, world, run["id"])
        assert stopping["status"] == "stopping" and stopping["stop_requested_at"] is not None
        assert transitions(await run_events(client, world, run["id"]))[-1] == (
            "system",
            "running",
            "stopping",
            "max_duration",
        )
        # A second sweep asks no second time.
        await sweeper.sweep_once()
        commands = await take_commands(agent)
        assert [(c["kind"], c["run_id"]) for c in commands] == [("stop_run", run["id"])]
        assert commands[0]["payload"]["stop"] == {"run_id": run["id"], "reason_code": "max_duration"}

        reply = await report(agent, run["id"], "exited", signal=15, error_tail="Terminated")
        assert reply == {"run_id": run["id"], "status": "stopped", "stop": True}
    found = await get_run(client, world, run["id"])
    assert (found["status"], found["reason_code"], found["detail"]) == (
        "stopped",
        "max_duration",
        "Terminated",
    )
    assert transitions(await run_events(client, world, run["id"]))[-1] == (
        "agent",
        "stopping",
        "stopped",
        "max_duration",
    )
    assert ok(await client.get(world.process_path))["status"] == "stopped"


async def test_the_maximum_duration_counts_from_launch_and_spares_other_runs(
    client: AsyncClient, app: FastAPI, make_sweeper: SweeperFactory, shift_clock: Callable[[float], None]
) -> None:
    short = await make_world(client, max_duration_seconds=60)
    long = await make_world(client, "2", max_duration_seconds=3600)
    async with agent_client(app, long.agent_token) as agent:
        long_run = await _running(client, agent, long)
    # A second process of the short template whose run the agent took but has not launched yet.
    ok(await client.patch(f"/machines/{short.machine}", json={"capacity": 2}))
    unlaunched_process = ok(
        await client.post(
            f"/projects/{short.project}/templates/{short.template}/processes", json={"machine": short.machine}
        ),
        201,
    )["id"]
    async with agent_client(app, short.agent_token) as agent:
        short_run = await _running(client, agent, short)
        unlaunched = ok(
            await client.post(f"/projects/{short.project}/processes/{unlaunched_process}/start"), 201
        )["latest_run"]
        await take_commands(agent, "start_run")

    shift_clock(120)
    await make_sweeper().sweep_once()
    assert (await get_run(client, short, short_run["id"]))["status"] == "stopping"
    assert (await get_run(client, long, long_run["id"]))["status"] == "running"
    assert (await get_run(client, short, unlaunched["id"]))["status"] == "starting"


async def test_a_silent_agent_flags_its_runs_offline_until_it_polls_again(
    client: AsyncClient, app: FastAPI, make_sweeper: SweeperFactory
) -> None:
    world = await make_world(client)
    sweeper = make_sweeper(offline_after=0.05, lost_after=3600)
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        await make_sweeper(lost_after=3600).sweep_once()  # it polled within a minute: online
        assert (await get_run(client, world, run["id"]))["agent_offline"] is False

        await asyncio.sleep(PAST_TIMEOUT)
        await sweeper.sweep_once()
        offline = await get_run(client, world, run["id"])
        assert (offline["status"], offline["agent_offline"], offline["reason_code"]) == (
            "running",
            True,
            None,
        )
        # The flag is no transition.
        assert len(transitions(await run_events(client, world, run["id"]))) == 2

        assert ok(await agent.get("/commands")) == []
        assert (await get_run(client, world, run["id"]))["agent_offline"] is False

        await asyncio.sleep(PAST_TIMEOUT)
        await sweeper.sweep_once()
        assert (await get_run(client, world, run["id"]))["agent_offline"] is True
        ok(await agent.post("/hello", json={"agent_version": "0.1.0", "runs": [run["id"]]}))
    back = await get_run(client, world, run["id"])
    assert (back["status"], back["agent_offline"]) == ("running", False)


async def test_a_start_on_a_machine_that_never_polled_waits_flagged_offline(
    client: AsyncClient, app: FastAPI, make_sweeper: SweeperFactory
) -> None:
    world = await make_world(client)
    run = await start_run(client, world)
    await make_sweeper(offline_after=0.05, lost_after=0.1).sweep_once()
    found = await get_run(client, world, run["id"])
    assert (found["status"], found["agent_offline"]) == ("starting", True)
    # The agent turns up: the flag goes, the start is there.
    async with agent_client(app, world.agent_token) as agent:
        assert [c["run_id"] for c in ok(await agent.get("/commands"))] == [run["id"]]
    assert (await get_run(client, world, run["id"]))["agent_offline"] is False


async def test_runs_whose_agent_stays_silent_are_lost(
    client: AsyncClient, app: FastAPI, make_sweeper: SweeperFactory
) -> None:
    world = await make_world(client)
    worlds = {"starting": world}
    for name in ("running", "stopping", "untaken"):
        worlds[name] = await add_process(client, world)
    async with agent_client(app, world.agent_token) as agent:
        runs = {name: await start_run(client, worlds[name]) for name in ("starting", "running", "stopping")}
        await take_commands(agent)
        for name in ("running", "stopping"):
            await report(agent, runs[name]["id"], "launched")
        ok(await client.post(f"{worlds['stopping'].process_path}/stop"), 202)
        # A start the silent machine never took is not lost: it is the start timeout's to decide.
        runs["untaken"] = await start_run(client, worlds["untaken"])

        await asyncio.sleep(PAST_TIMEOUT)
        await make_sweeper(offline_after=0.05, lost_after=0.1).sweep_once()
        for state in ("starting", "running", "stopping"):
            lost = await get_run(client, world, runs[state]["id"])
            assert (lost["status"], lost["reason_code"]) == ("failed", "lost"), state
            assert "0.1 s" in lost["detail"]
            events = await run_events(client, world, runs[state]["id"])
            assert transitions(events)[-1] == ("system", state, "failed", "lost")
            assert ok(await client.get(worlds[state].process_path))["status"] == "failed"
        untaken = await get_run(client, world, runs["untaken"]["id"])
        assert (untaken["status"], untaken["agent_offline"]) == ("starting", True)

        # Reports that arrive later change nothing, and the agent is told to stop the run.
        lost_run = runs["running"]["id"]
        for event in (
            {"type": "stage", "stage": "late"},
            {"type": "exited", "exit_code": 0},
            {"type": "finished"},
        ):
            reply = ok(await agent.post(f"/runs/{lost_run}/events", json=event))
            assert reply == {"run_id": lost_run, "status": "failed", "stop": True}
        final = await get_run(client, world, lost_run)
        assert (final["status"], final["reason_code"], final["exit_code"]) == ("failed", "lost", None)

    await asyncio.sleep(PAST_TIMEOUT)
    await make_sweeper(offline_after=0.05, lost_after=0.1, start_timeout=0.05).sweep_once()
    untaken = await get_run(client, world, runs["untaken"]["id"])
    assert (untaken["status"], untaken["reason_code"]) == ("failed", "start_timeout")


async def test_a_lost_run_carries_out_a_pending_restart(
    client: AsyncClient, app: FastAPI, make_sweeper: SweeperFactory
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        first = await _running(client, agent, world)
    ok(await client.post(f"{world.process_path}/restart"), 202)
    await asyncio.sleep(PAST_TIMEOUT)
    await make_sweeper(offline_after=0.05, lost_after=0.1).sweep_once()
    process = ok(await client.get(world.process_path))
    assert (process["status"], process["run_count"], process["restart_pending"]) == ("starting", 2, False)
    assert (await get_run(client, world, first["id"]))["reason_code"] == "lost"
    events = await run_events(client, world, process["latest_run"]["id"])
    assert transitions(events) == [("system", None, "starting", None)]


async def test_sweepers_racing_change_each_run_once(
    client: AsyncClient, app: FastAPI, make_sweeper: SweeperFactory
) -> None:
    """Several API replicas sweep at once; the conditional transitions let exactly one of them win."""
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        lost = await _running(client, agent, world)
    other = await make_world(client, "2")
    timed_out = await start_run(client, other)
    await asyncio.sleep(PAST_TIMEOUT)
    sweepers = [make_sweeper(offline_after=0.05, lost_after=0.1, start_timeout=0.05) for _ in range(4)]
    await asyncio.gather(*(s.sweep_once() for s in sweepers))

    assert transitions(await run_events(client, world, lost["id"]))[2:] == [
        ("system", "running", "failed", "lost")
    ]
    assert transitions(await run_events(client, other, timed_out["id"]))[1:] == [
        ("system", "starting", "failed", "start_timeout")
    ]


async def test_a_start_acknowledged_while_the_sweeper_decides_is_not_timed_out(
    client: AsyncClient, app: FastAPI, make_sweeper: SweeperFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper finds the start overdue, then the agent takes it before the sweeper acts: the agent's
    acknowledgement wins (one conditional update decides), and the run goes on."""
    world = await make_world(client)
    run = await start_run(client, world)
    sweeper = make_sweeper(start_timeout=0.05)
    async with agent_client(app, world.agent_token) as agent:
        delivered = ok(await agent.get("/commands"))
        await asyncio.sleep(PAST_TIMEOUT)
        found_ids = sweeper._ids
        acks: list[dict[str, Any]] = []

        async def ids_then_ack(statement: Any) -> Any:
            ids = await found_ids(statement)
            if not acks:  # the first query is the start timeouts'
                assert ids == [uuid.UUID(run["id"])]
                acks.append(ok(await agent.post(f"/commands/{delivered[0]['id']}/ack")))
            return ids

        monkeypatch.setattr(sweeper, "_ids", ids_then_ack)
        await sweeper.sweep_once()
        assert acks == [{"id": delivered[0]["id"], "state": "acknowledged"}]
        assert (await get_run(client, world, run["id"]))["status"] == "starting"
        assert await report(agent, run["id"], "launched") == {
            "run_id": run["id"],
            "status": "running",
            "stop": False,
        }
    assert transitions(await run_events(client, world, run["id"])) == [
        ("user", None, "starting", None),
        ("agent", "starting", "running", None),
    ]
