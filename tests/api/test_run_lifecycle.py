"""The run's life as the agent reports it (DESIGN.md, "The run's life"): every allowed move, every refused
one, the run's final status, reason and detail, the process's status, and the audit trail."""

from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.api.world import (
    World,
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

ERROR_TAIL = "Traceback (most recent call last):\n  File 'train.py', line 3\nValueError: bad label\n"


async def _launched_run(client: AsyncClient, agent: AsyncClient, world: World) -> dict[str, Any]:
    """A run the agent took and launched: `running`."""
    run = await start_run(client, world)
    assert [c["run_id"] for c in await take_commands(agent, "start_run")] == [run["id"]]
    assert await report(agent, run["id"], "launched", pid=4242) == {
        "run_id": run["id"],
        "status": "running",
        "stop": False,
    }
    return run


async def _process_status(client: AsyncClient, world: World) -> str:
    status: str = ok(await client.get(world.process_path))["status"]
    return status


async def test_launch_moves_starting_to_running_and_stage_moves_nothing(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client, max_duration_seconds=120)
    async with agent_client(app, world.agent_token) as agent:
        run = await _launched_run(client, agent, world)
        # A repeated `launched` (a retry) is no move and no second event row.
        assert (await report(agent, run["id"], "launched"))["status"] == "running"
        reply = await report(agent, run["id"], "stage", stage="evaluating", progress=0.25, eta_seconds=90)
        assert reply == {"run_id": run["id"], "status": "running", "stop": False}

    found = await get_run(client, world, run["id"])
    assert found["status"] == "running" and found["reason_code"] is None and found["detail"] == ""
    assert found["launched_at"] is not None and found["ended_at"] is None
    assert found["elapsed_seconds"] is not None and found["elapsed_seconds"] >= 0
    assert found["config"]["max_duration_seconds"] == 120
    assert (found["stage"], found["progress"], found["eta_seconds"]) == ("evaluating", 0.25, 90.0)
    assert await _process_status(client, world) == "running"
    assert transitions(await run_events(client, world, run["id"])) == [
        ("user", None, "starting", None),
        ("agent", "starting", "running", None),
    ]
    events = await run_events(client, world, run["id"])
    assert events[1]["actor_name"] == world.machine


async def test_exit_zero_then_finished_succeeds_with_completed(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _launched_run(client, agent, world)
        exited = await report(agent, run["id"], "exited", exit_code=0)
        # The exit alone decides nothing: success waits for `finished`, the commit point.
        assert exited == {"run_id": run["id"], "status": "running", "stop": False}
        assert (await get_run(client, world, run["id"]))["exit_code"] == 0
        finished = await report(agent, run["id"], "finished")
    assert finished == {"run_id": run["id"], "status": "succeeded", "stop": True}

    found = await get_run(client, world, run["id"])
    assert (found["status"], found["reason_code"], found["exit_code"], found["exit_signal"]) == (
        "succeeded",
        "completed",
        0,
        None,
    )
    assert found["progress"] == 1.0 and found["eta_seconds"] == 0.0 and found["ended_at"] is not None
    assert await _process_status(client, world) == "succeeded"
    assert transitions(await run_events(client, world, run["id"]))[-1] == (
        "agent",
        "running",
        "succeeded",
        "completed",
    )
    process = ok(await client.get(world.process_path))
    assert process["latest_run"]["id"] == run["id"] and process["run_count"] == 1

    # A run so short that its `launched` never arrived still passes through `running`.
    async with agent_client(app, world.agent_token) as agent:
        short = await start_run(client, world)
        await take_commands(agent)
        assert (await report(agent, short["id"], "exited", exit_code=0))["status"] == "running"
        assert (await report(agent, short["id"], "finished"))["status"] == "succeeded"
    assert transitions(await run_events(client, world, short["id"])) == [
        ("user", None, "starting", None),
        ("agent", "starting", "running", None),
        ("agent", "running", "succeeded", "completed"),
    ]
    assert (await get_run(client, world, short["id"]))["launched_at"] is not None


async def test_exit_nonzero_fails_with_the_error_tail(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _launched_run(client, agent, world)
        reply = await report(agent, run["id"], "exited", exit_code=3, error_tail=ERROR_TAIL)
    assert reply == {"run_id": run["id"], "status": "failed", "stop": True}

    found = await get_run(client, world, run["id"])
    assert (found["status"], found["reason_code"], found["exit_code"]) == ("failed", "exit_nonzero", 3)
    assert found["detail"] == ERROR_TAIL and found["ended_at"] is not None
    assert await _process_status(client, world) == "failed"
    last = (await run_events(client, world, run["id"]))[-1]
    assert (last["actor_kind"], last["from_status"], last["to_status"], last["reason_code"]) == (
        "agent",
        "running",
        "failed",
        "exit_nonzero",
    )
    assert last["detail"] == ERROR_TAIL

    # The process is free again: run 2. A long tail is kept whole on the run and cut in the event.
    tail = "".join(f"line {i}: something went wrong\n" for i in range(400))
    assert 5000 < len(tail) < 16_384
    async with agent_client(app, world.agent_token) as agent:
        second = await _launched_run(client, agent, world)
        await report(agent, second["id"], "exited", exit_code=1, error_tail=tail)
    assert second["number"] == 2
    assert (await get_run(client, world, second["id"]))["detail"] == tail
    event = (await run_events(client, world, second["id"]))[-1]
    assert event["to_status"] == "failed" and event["detail"] == tail[:500]


async def test_other_failed_exits_keep_their_reason(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        killed = await _launched_run(client, agent, world)
        reply = await report(agent, killed["id"], "exited", signal=9, error_tail="Killed")
        assert (reply["status"], reply["stop"]) == ("failed", True)
        found = await get_run(client, world, killed["id"])
        assert (found["reason_code"], found["exit_code"], found["exit_signal"], found["detail"]) == (
            "exit_nonzero",
            None,
            9,
            "Killed",
        )
        # The agent's own reason, when it gives one, is the run's.
        for reason in ("exception", "invalid_package", "missing_outputs"):
            run = await _launched_run(client, agent, world)
            reply = await report(
                agent, run["id"], "exited", exit_code=1, reason_code=reason, error_tail=reason
            )
            assert reply["status"] == "failed"
            found = await get_run(client, world, run["id"])
            assert (found["status"], found["reason_code"], found["detail"]) == ("failed", reason, reason)

        # A run that fails before its launch fails from `starting`.
        early = await start_run(client, world)
        await take_commands(agent)
        reply = await report(
            agent, early["id"], "exited", exit_code=2, reason_code="invalid_package", error_tail="no train.py"
        )
    assert reply == {"run_id": early["id"], "status": "failed", "stop": True}
    found = await get_run(client, world, early["id"])
    assert (found["status"], found["reason_code"], found["detail"]) == (
        "failed",
        "invalid_package",
        "no train.py",
    )
    assert transitions(await run_events(client, world, early["id"])) == [
        ("user", None, "starting", None),
        ("agent", "starting", "failed", "invalid_package"),
    ]


async def test_finished_without_a_successful_exit_fails(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _launched_run(client, agent, world)
        reply = await report(agent, run["id"], "finished")
    assert reply == {"run_id": run["id"], "status": "failed", "stop": True}
    found = await get_run(client, world, run["id"])
    assert (found["status"], found["reason_code"]) == ("failed", "exception")
    assert "finished" in found["detail"]
    assert transitions(await run_events(client, world, run["id"]))[-1] == (
        "agent",
        "running",
        "failed",
        "exception",
    )
    # The same before any launch or exit.
    async with agent_client(app, world.agent_token) as agent:
        second = await start_run(client, world)
        await take_commands(agent)
        assert (await report(agent, second["id"], "finished"))["status"] == "failed"
    assert transitions(await run_events(client, world, second["id"]))[-1] == (
        "agent",
        "starting",
        "failed",
        "exception",
    )


async def test_the_agent_ending_a_run_at_its_max_duration_stops_it(client: AsyncClient, app: FastAPI) -> None:
    """The agent enforces the maximum duration itself too: its exit says so and the run is `stopped`."""
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _launched_run(client, agent, world)
        reply = await report(agent, run["id"], "exited", signal=15, reason_code="max_duration")
    assert reply == {"run_id": run["id"], "status": "stopped", "stop": True}
    found = await get_run(client, world, run["id"])
    assert (found["status"], found["reason_code"], found["exit_signal"]) == ("stopped", "max_duration", 15)
    assert transitions(await run_events(client, world, run["id"]))[-1] == (
        "agent",
        "running",
        "stopped",
        "max_duration",
    )


async def _stopping_run(client: AsyncClient, agent: AsyncClient, world: World) -> dict[str, Any]:
    run = await _launched_run(client, agent, world)
    ok(await client.post(f"{world.process_path}/stop"), 202)
    assert [c["kind"] for c in await take_commands(agent)] == ["stop_run"]
    return run


async def test_stopping_run_exits_to_stopped_whatever_its_exit_code(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _stopping_run(client, agent, world)
        reply = await report(agent, run["id"], "exited", exit_code=0)
    assert reply == {"run_id": run["id"], "status": "stopped", "stop": True}
    found = await get_run(client, world, run["id"])
    assert (found["status"], found["reason_code"], found["exit_code"]) == ("stopped", "user_stop", 0)
    assert transitions(await run_events(client, world, run["id"])) == [
        ("user", None, "starting", None),
        ("agent", "starting", "running", None),
        ("user", "running", "stopping", "user_stop"),
        ("agent", "stopping", "stopped", "user_stop"),
    ]
    # A stopping run whose agent reports `finished` (it completed meanwhile) is stopped, not succeeded.
    async with agent_client(app, world.agent_token) as agent:
        second = await _stopping_run(client, agent, world)
        assert (await report(agent, second["id"], "finished"))["status"] == "stopped"
    found = await get_run(client, world, second["id"])
    assert (found["status"], found["reason_code"]) == ("stopped", "user_stop")


async def test_stopping_run_never_goes_back_to_running(client: AsyncClient, app: FastAPI) -> None:
    """Stop after the agent took the start but before it launched: a late `launched` keeps `stopping`."""
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await start_run(client, world)
        await take_commands(agent)
        ok(await client.post(f"{world.process_path}/stop"), 202)
        reply = await report(agent, run["id"], "launched")
        assert reply == {"run_id": run["id"], "status": "stopping", "stop": True}
        stage = await report(agent, run["id"], "stage", stage="training", progress=0.1)
        assert stage["status"] == "stopping" and stage["stop"] is True
        found = await get_run(client, world, run["id"])
        assert found["status"] == "stopping" and found["launched_at"] is not None
        assert (await report(agent, run["id"], "exited", signal=15))["status"] == "stopped"
    assert transitions(await run_events(client, world, run["id"])) == [
        ("user", None, "starting", None),
        ("user", "starting", "stopping", "user_stop"),
        ("agent", "stopping", "stopped", "user_stop"),
    ]


async def test_events_for_an_ended_run_change_nothing_and_say_stop(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    late: list[dict[str, Any]] = [
        {"type": "launched"},
        {"type": "stage", "stage": "late", "progress": 0.5},
        {"type": "exited", "exit_code": 7, "error_tail": "late"},
        {"type": "exited", "exit_code": 0},
        {"type": "finished"},
    ]
    async with agent_client(app, world.agent_token) as agent:
        for ending in ("succeeded", "failed", "stopped"):
            run = await _launched_run(client, agent, world)
            if ending == "succeeded":
                await report(agent, run["id"], "exited", exit_code=0)
                await report(agent, run["id"], "finished")
            elif ending == "failed":
                await report(agent, run["id"], "exited", exit_code=1, error_tail="boom")
            else:
                await _stop_and_exit(client, agent, world, run["id"])
            before = await get_run(client, world, run["id"])
            events_before = await run_events(client, world, run["id"])
            assert before["status"] == ending

            for event in late:
                reply = ok(await agent.post(f"/runs/{run['id']}/events", json=event))
                assert reply == {"run_id": run["id"], "status": ending, "stop": True}, (ending, event)

            assert await get_run(client, world, run["id"]) == before
            assert await run_events(client, world, run["id"]) == events_before
            assert await _process_status(client, world) == ending


async def _stop_and_exit(client: AsyncClient, agent: AsyncClient, world: World, run_id: str) -> None:
    ok(await client.post(f"{world.process_path}/stop"), 202)
    await take_commands(agent, "stop_run")
    assert (await report(agent, run_id, "exited", signal=15))["status"] == "stopped"


async def test_only_the_latest_run_shows_on_the_process(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        first = await _launched_run(client, agent, world)
        await report(agent, first["id"], "exited", exit_code=1)
        second = await _launched_run(client, agent, world)
        assert second["number"] == 2
        process = ok(await client.get(world.process_path))
        assert process["status"] == "running" and process["latest_run"]["id"] == second["id"]
        assert process["run_count"] == 2
        await report(agent, second["id"], "exited", exit_code=0)
        await report(agent, second["id"], "finished")
    runs = ok(await client.get(f"{world.process_path}/runs"))["items"]
    assert [(r["number"], r["status"]) for r in runs] == [(1, "failed"), (2, "succeeded")]
    failed = ok(await client.get(f"/projects/{world.project}/runs", params={"status": "failed"}))["items"]
    assert [r["id"] for r in failed] == [first["id"]]
    listed = ok(await client.get(f"/projects/{world.project}/processes", params={"status": "succeeded"}))
    assert [p["id"] for p in listed["items"]] == [world.process_id]
