"""Primo's actions on a process (start, stop, restart, disable, enable, delete): what each allows, what
each refuses with which code, and the audit trail they leave."""

import uuid
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.api.world import (
    World,
    agent_client,
    get_run,
    make_machine,
    make_world,
    ok,
    problem,
    report,
    run_events,
    start_run,
    take_commands,
    transitions,
)

ACTIVE_STATES = ["starting", "running", "stopping"]


async def _run_in(client: AsyncClient, agent: AsyncClient, world: World, state: str) -> dict[str, Any]:
    """Bring the world's process to a run in `state` (an active one, acknowledged when past starting)."""
    run = await start_run(client, world)
    if state == "starting":
        return run
    await take_commands(agent, "start_run")
    await report(agent, run["id"], "launched")
    if state == "stopping":
        ok(await client.post(f"{world.process_path}/stop"), 202)
    assert (await get_run(client, world, run["id"]))["status"] == state
    return run


async def _process(client: AsyncClient, world: World) -> dict[str, Any]:
    process: dict[str, Any] = ok(await client.get(world.process_path))
    return process


async def _process_events(client: AsyncClient, world: World) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = ok(await client.get(f"{world.process_path}/events"))["items"]
    return events


async def _runs(client: AsyncClient, world: World) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = ok(await client.get(f"{world.process_path}/runs"))["items"]
    return runs


async def test_start_makes_run_one_and_queues_its_start(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client, max_duration_seconds=600)
    started = ok(await client.post(f"{world.process_path}/start"), 201)
    run = started["latest_run"]
    assert (started["status"], started["run_count"], started["restart_pending"]) == ("starting", 1, False)
    assert (run["number"], run["status"], run["reason_code"], run["launched_at"]) == (
        1,
        "starting",
        None,
        None,
    )
    assert run["machine"] == world.machine and run["project"] == world.project
    assert run["config"]["max_duration_seconds"] == 600 and run["config"]["parameters"] == {"epochs": 2}

    async with agent_client(app, world.agent_token) as agent:
        commands = ok(await agent.get("/commands"))
    assert [(c["kind"], c["run_id"]) for c in commands] == [("start_run", run["id"])]
    start = commands[0]["payload"]["start"]
    assert (start["run_id"], start["process_id"], start["project"], start["template"]) == (
        run["id"],
        world.process_id,
        world.project,
        world.template,
    )
    events = await _process_events(client, world)
    assert [(e["kind"], e["actor_kind"], e["to_status"]) for e in events] == [
        ("process_created", "user", None),
        ("run_status", "user", "starting"),
    ]
    assert events[1]["actor_name"] == "admin" and events[1]["run_id"] == run["id"]


async def test_start_disable_and_delete_are_refused_while_a_run_is_active(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    run = await start_run(client, world)
    async with agent_client(app, world.agent_token) as agent:
        for state in ACTIVE_STATES:
            if state == "running":
                await take_commands(agent, "start_run")
                await report(agent, run["id"], "launched")
            elif state == "stopping":
                ok(await client.post(f"{world.process_path}/stop"), 202)
            problem(await client.post(f"{world.process_path}/start"), 409, "run_active")
            problem(await client.post(f"{world.process_path}/disable"), 409, "run_active")
            problem(await client.delete(world.process_path), 409, "run_active")
            process = await _process(client, world)
            assert (process["status"], process["run_count"], process["enabled"]) == (state, 1, True), state
        # Nothing was queued for the refused starts: the first start and the stop only.
        assert [c["kind"] for c in ok(await agent.get("/commands"))] == ["stop_run"]
    assert [r["id"] for r in await _runs(client, world)] == [run["id"]]
    assert [e["kind"] for e in await _process_events(client, world)] == ["process_created"] + [
        "run_status"
    ] * 3
    assert ok(await client.get(f"/machines/{world.machine}"))["process_count"] == 1


async def test_start_after_the_run_ended_makes_a_new_run(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    endings = ["succeeded", "failed", "stopped"]
    async with agent_client(app, world.agent_token) as agent:
        for number, ending in enumerate(endings, start=1):
            run = await _run_in(client, agent, world, "running")
            assert run["number"] == number
            if ending == "succeeded":
                await report(agent, run["id"], "exited", exit_code=0)
                await report(agent, run["id"], "finished")
            elif ending == "failed":
                await report(agent, run["id"], "exited", exit_code=1)
            else:
                ok(await client.post(f"{world.process_path}/stop"), 202)
                await take_commands(agent, "stop_run")
                await report(agent, run["id"], "exited", signal=15)
            assert (await _process(client, world))["status"] == ending
        last = await start_run(client, world)
        assert [(c["kind"], c["run_id"]) for c in ok(await agent.get("/commands"))] == [
            ("start_run", last["id"])
        ]
    assert (last["number"], last["status"]) == (4, "starting")
    assert [(r["number"], r["status"]) for r in await _runs(client, world)] == [
        (1, "succeeded"),
        (2, "failed"),
        (3, "stopped"),
        (4, "starting"),
    ]


async def test_stop_before_an_agent_took_the_start_stops_at_once(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    run = await start_run(client, world)
    stopped = ok(await client.post(f"{world.process_path}/stop"), 202)
    assert stopped["status"] == "stopped" and stopped["latest_run"]["status"] == "stopped"

    found = await get_run(client, world, run["id"])
    assert (found["status"], found["reason_code"]) == ("stopped", "user_stop")
    assert found["ended_at"] is not None and found["launched_at"] is None
    assert transitions(await run_events(client, world, run["id"])) == [
        ("user", None, "starting", None),
        ("user", "starting", "stopped", "user_stop"),
    ]
    async with agent_client(app, world.agent_token) as agent:
        # The start was withdrawn, and no stop is sent for a run no agent has.
        assert ok(await agent.get("/commands")) == []
    # The process is free: the next start is run 2.
    assert (await start_run(client, world))["number"] == 2


async def test_stop_after_delivery_but_before_ack_withdraws_the_start(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    run = await start_run(client, world)
    async with agent_client(app, world.agent_token) as agent:
        delivered = ok(await agent.get("/commands"))
        assert [c["kind"] for c in delivered] == ["start_run"]
        ok(await client.post(f"{world.process_path}/stop"), 202)
        # The agent's late ack learns the start was withdrawn: it must not carry it out.
        ack = ok(await agent.post(f"/commands/{delivered[0]['id']}/ack"))
        assert ack == {"id": delivered[0]["id"], "state": "cancelled"}
        assert ok(await agent.get("/commands")) == []
        reply = await report(agent, run["id"], "launched")
        assert reply == {"run_id": run["id"], "status": "stopped", "stop": True}
    found = await get_run(client, world, run["id"])
    assert (found["status"], found["reason_code"]) == ("stopped", "user_stop")


async def test_stop_after_ack_asks_the_agent_and_waits(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _run_in(client, agent, world, "running")
        stopping = ok(await client.post(f"{world.process_path}/stop"), 202)
        assert stopping["status"] == "stopping" and stopping["latest_run"]["stop_requested_at"] is not None
        # A second stop is accepted and changes nothing: still one stop command.
        assert ok(await client.post(f"{world.process_path}/stop"), 202)["status"] == "stopping"
        commands = ok(await agent.get("/commands"))
        assert [(c["kind"], c["run_id"]) for c in commands] == [("stop_run", run["id"])]
        assert commands[0]["payload"]["stop"] == {"run_id": run["id"], "reason_code": "user_stop"}
        ok(await agent.post(f"/commands/{commands[0]['id']}/ack"))
        assert (await _process(client, world))["status"] == "stopping"
        assert (await report(agent, run["id"], "exited", signal=15, error_tail="SIGTERM"))["status"] == (
            "stopped"
        )
    found = await get_run(client, world, run["id"])
    assert (found["status"], found["reason_code"], found["exit_signal"]) == ("stopped", "user_stop", 15)
    assert (await _process(client, world))["status"] == "stopped"
    assert transitions(await run_events(client, world, run["id"])) == [
        ("user", None, "starting", None),
        ("agent", "starting", "running", None),
        ("user", "running", "stopping", "user_stop"),
        ("agent", "stopping", "stopped", "user_stop"),
    ]


async def test_stop_after_ack_but_before_launch_goes_through_stopping(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await start_run(client, world)
        await take_commands(agent)
        assert ok(await client.post(f"{world.process_path}/stop"), 202)["status"] == "stopping"
        assert [c["kind"] for c in await take_commands(agent)] == ["stop_run"]
        assert (await report(agent, run["id"], "exited", exit_code=143))["status"] == "stopped"
    assert transitions(await run_events(client, world, run["id"]))[1:] == [
        ("user", "starting", "stopping", "user_stop"),
        ("agent", "stopping", "stopped", "user_stop"),
    ]


async def test_stop_without_an_active_run_is_refused(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    problem(await client.post(f"{world.process_path}/stop"), 409, "run_not_active")
    assert (await _process(client, world))["status"] == "created"
    async with agent_client(app, world.agent_token) as agent:
        run = await _run_in(client, agent, world, "running")
        await report(agent, run["id"], "exited", exit_code=0)
        await report(agent, run["id"], "finished")
        problem(await client.post(f"{world.process_path}/stop"), 409, "run_not_active")
        assert ok(await agent.get("/commands")) == []
    assert (await get_run(client, world, run["id"]))["status"] == "succeeded"


async def test_restart_without_an_active_run_starts_at_once(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    restarted = ok(await client.post(f"{world.process_path}/restart"), 201)  # never started: a start
    assert (restarted["status"], restarted["run_count"], restarted["restart_pending"]) == (
        "starting",
        1,
        False,
    )
    async with agent_client(app, world.agent_token) as agent:
        await take_commands(agent)
        first = restarted["latest_run"]
        await report(agent, first["id"], "exited", exit_code=1)
        restarted = ok(await client.post(f"{world.process_path}/restart"), 201)
        assert (restarted["status"], restarted["run_count"], restarted["restart_pending"]) == (
            "starting",
            2,
            False,
        )
        assert [c["run_id"] for c in ok(await agent.get("/commands"))] == [restarted["latest_run"]["id"]]
    assert (await get_run(client, world, first["id"]))["status"] == "failed"


async def test_restart_of_a_running_run_stops_it_then_starts_the_next(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        first = await _run_in(client, agent, world, "running")
        restarting = ok(await client.post(f"{world.process_path}/restart"), 202)
        assert (restarting["status"], restarting["restart_pending"], restarting["run_count"]) == (
            "stopping",
            True,
            1,
        )
        assert restarting["latest_run"]["id"] == first["id"]
        # While the restart waits, a plain start is still refused.
        problem(await client.post(f"{world.process_path}/start"), 409, "run_active")
        stops = await take_commands(agent)
        assert [(c["kind"], c["run_id"]) for c in stops] == [("stop_run", first["id"])]
        assert (await report(agent, first["id"], "exited", signal=15))["status"] == "stopped"

        process = await _process(client, world)
        assert (process["status"], process["restart_pending"], process["run_count"]) == ("starting", False, 2)
        second = process["latest_run"]
        assert second["number"] == 2 and second["status"] == "starting"
        starts = ok(await agent.get("/commands"))
        assert [(c["kind"], c["run_id"]) for c in starts] == [("start_run", second["id"])]

    old = await get_run(client, world, first["id"])
    assert (old["status"], old["reason_code"]) == ("stopped", "user_stop")
    kinds = [(e["kind"], e["from_status"], e["to_status"]) for e in await _process_events(client, world)]
    assert kinds == [
        ("process_created", None, None),
        ("run_status", None, "starting"),
        ("run_status", "starting", "running"),
        ("restart_requested", None, None),
        ("run_status", "running", "stopping"),
        ("run_status", "stopping", "stopped"),
        ("run_status", None, "starting"),
    ]


async def test_restart_of_a_stopping_run_starts_once_it_stopped(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        first = await _run_in(client, agent, world, "stopping")
        restarting = ok(await client.post(f"{world.process_path}/restart"), 202)
        assert (restarting["status"], restarting["restart_pending"]) == ("stopping", True)
        # The stop was asked once already; the restart adds no second stop command.
        assert [c["kind"] for c in await take_commands(agent)] == ["stop_run"]
        await report(agent, first["id"], "exited", signal=15)
    process = await _process(client, world)
    assert (process["status"], process["run_count"], process["restart_pending"]) == ("starting", 2, False)


async def test_restart_before_an_agent_took_the_start_replaces_the_run_at_once(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    first = await start_run(client, world)
    restarted = ok(await client.post(f"{world.process_path}/restart"), 201)
    second = restarted["latest_run"]
    assert (restarted["status"], restarted["restart_pending"], second["number"]) == ("starting", False, 2)
    old = await get_run(client, world, first["id"])
    assert (old["status"], old["reason_code"]) == ("stopped", "user_stop")
    async with agent_client(app, world.agent_token) as agent:
        commands = ok(await agent.get("/commands"))
    assert [(c["kind"], c["run_id"]) for c in commands] == [("start_run", second["id"])]
    kinds = [(e["kind"], e["run_id"], e["to_status"]) for e in await _process_events(client, world)]
    assert kinds[1:] == [
        ("run_status", first["id"], "starting"),
        ("restart_requested", first["id"], None),
        ("run_status", first["id"], "stopped"),
        ("run_status", second["id"], "starting"),
    ]


async def test_a_restart_the_machine_refuses_is_dropped_and_recorded(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        first = await _run_in(client, agent, world, "running")
        ok(await client.post(f"{world.process_path}/restart"), 202)
        ok(await client.post(f"/machines/{world.machine}/disable"))
        await take_commands(agent)
        assert (await report(agent, first["id"], "exited", signal=15))["status"] == "stopped"
        assert ok(await agent.get("/commands")) == []
    process = await _process(client, world)
    assert (process["status"], process["run_count"], process["restart_pending"]) == ("stopped", 1, False)
    failed = [e for e in await _process_events(client, world) if e["kind"] == "restart_failed"]
    assert len(failed) == 1 and failed[0]["run_id"] == first["id"] and "disabled" in failed[0]["detail"]


async def test_disabled_process_refuses_start_stop_and_restart(client: AsyncClient) -> None:
    world = await make_world(client)
    disabled = ok(await client.post(f"{world.process_path}/disable"))
    assert disabled["enabled"] is False and disabled["status"] == "created"
    for action in ("start", "stop", "restart"):
        body = problem(await client.post(f"{world.process_path}/{action}"), 409, "process_disabled")
        assert "disabled" in body["detail"]
    assert (await _process(client, world))["run_count"] == 0
    # Disabling twice is harmless and logged once.
    assert ok(await client.post(f"{world.process_path}/disable"))["enabled"] is False

    enabled = ok(await client.post(f"{world.process_path}/enable"))
    assert enabled["enabled"] is True
    assert (await start_run(client, world))["number"] == 1
    kinds = [(e["kind"], e["actor_kind"]) for e in await _process_events(client, world)]
    assert kinds == [
        ("process_created", "user"),
        ("process_disabled", "user"),
        ("process_enabled", "user"),
        ("run_status", "user"),
    ]


async def test_a_process_created_disabled_refuses_a_start_and_may_be_deleted(client: AsyncClient) -> None:
    world = await make_world(client)
    _, _ = await make_machine(client, "second")
    created = ok(
        await client.post(
            f"/projects/{world.project}/templates/{world.template}/processes",
            json={"machine": "second", "enabled": False},
        ),
        201,
    )
    assert (created["enabled"], created["status"]) == (False, "created")
    path = f"/projects/{world.project}/processes/{created['id']}"
    problem(await client.post(f"{path}/start"), 409, "process_disabled")
    # A disabled process with no active run may be deleted.
    assert (await client.delete(path)).status_code == 204
    assert [p["id"] for p in ok(await client.get(f"/projects/{world.project}/processes"))["items"]] == [
        world.process_id
    ]
    assert ok(await client.get("/machines/second"))["process_count"] == 0


async def test_delete_an_ended_process_removes_it_and_frees_the_machine(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _run_in(client, agent, world, "running")
        await report(agent, run["id"], "exited", exit_code=1)
        assert (await client.delete(world.process_path)).status_code == 204
        # The agent's late report about a run of a deleted process: no such run any more.
        problem(
            await agent.post(f"/runs/{run['id']}/events", json={"type": "finished"}), 404, "run_not_found"
        )
    problem(await client.get(world.process_path), 404, "process_not_found")
    problem(await client.get(f"/projects/{world.project}/runs/{run['id']}"), 404, "run_not_found")
    problem(await client.get(f"/projects/{world.project}/runs/{run['id']}/events"), 404, "run_not_found")
    problem(await client.delete(world.process_path), 404, "process_not_found")
    assert ok(await client.get(f"/machines/{world.machine}"))["process_count"] == 0
    # The machine's place is free for a new process.
    ok(
        await client.post(
            f"/projects/{world.project}/templates/{world.template}/processes", json={"machine": world.machine}
        ),
        201,
    )


async def test_a_disabled_machine_takes_no_new_run_but_keeps_its_running_one(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        first = await _run_in(client, agent, world, "running")
        assert ok(await client.post(f"/machines/{world.machine}/disable"))["enabled"] is False
        # The run it already had goes on and ends normally.
        await report(agent, first["id"], "exited", exit_code=0)
        assert (await report(agent, first["id"], "finished"))["status"] == "succeeded"

        body = problem(await client.post(f"{world.process_path}/start"), 409, "machine_disabled")
        assert "disabled" in body["detail"]
        problem(await client.post(f"{world.process_path}/restart"), 409, "machine_disabled")
        assert ok(await agent.get("/commands")) == []
    process = await _process(client, world)
    assert (process["status"], process["run_count"], process["restart_pending"]) == ("succeeded", 1, False)

    ok(await client.post(f"/machines/{world.machine}/enable"))
    assert (await start_run(client, world))["number"] == 2


async def test_a_disabled_machine_takes_no_new_process(client: AsyncClient) -> None:
    world = await make_world(client)
    await make_machine(client, "spare", capacity=2)
    ok(await client.post("/machines/spare/disable"))
    problem(
        await client.post(
            f"/projects/{world.project}/templates/{world.template}/processes", json={"machine": "spare"}
        ),
        409,
        "machine_disabled",
    )
    assert ok(await client.get("/machines/spare"))["process_count"] == 0


async def test_actions_on_an_unknown_process_are_not_found(client: AsyncClient) -> None:
    world = await make_world(client)
    other = ok(await client.post("/projects", json={"name": "other"}), 201)["name"]
    unknown = uuid.uuid4()
    for path in (
        f"/projects/{world.project}/processes/{unknown}",
        # A process is found only in its own project.
        f"/projects/{other}/processes/{world.process_id}",
    ):
        for action in ("start", "stop", "restart", "disable", "enable"):
            problem(await client.post(f"{path}/{action}"), 404, "process_not_found")
        problem(await client.delete(path), 404, "process_not_found")
        problem(await client.get(f"{path}/events"), 404, "process_not_found")
    assert (await _process(client, world))["status"] == "created"
