"""The daemon against the real API app in process: one turn of it carries a start to a finished run;
a command delivered again is a no-op, a stop for a run the agent never had ends it, a malformed
command is not fatal; and the executor's view of an outcome."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from agent.cli import build_agent
from agent.client import ApiClient
from agent.daemon import Agent
from agent.executor import Execution
from agent.run_outputs import zip_folder
from agent.run_state import RunState
from shared.enums import CommandKind, ReasonCode
from shared.protocol import Command
from tests.agent.test_client import agent_settings
from tests.api.world import World, get_run, make_world, ok, start_run


@pytest.fixture
async def world(client: AsyncClient) -> World:
    return await make_world(client)


@pytest.fixture
async def agent(app: FastAPI, world: World, tmp_path: Path) -> AsyncIterator[Agent]:
    settings = agent_settings(world.agent_token, tmp_path)
    async with ApiClient(settings, transport=ASGITransport(app=app)) as api:
        the_agent = build_agent(settings, api)
        the_agent.states.ensure()
        the_agent._take = lambda state, payload=None: the_agent.runs.setdefault(  # type: ignore[method-assign]
            state.run_id, Execution(the_agent.machine, state, payload)
        )
        yield the_agent


async def test_one_turn_carries_a_start_to_a_finished_run(
    app: FastAPI, client: AsyncClient, world: World, tmp_path: Path
) -> None:
    settings = agent_settings(world.agent_token, tmp_path).model_copy(
        # As root, packages run as root itself, explicitly: this machine's Python lives under /root.
        update={
            "run_as": "root" if os.geteuid() == 0 else None,
            "allow_unsafe_run_user": True,
            "package_venvs": False,  # the agent's own Python: no pip, no network
        }
    )
    run = await start_run(client, world)
    async with ApiClient(settings, transport=ASGITransport(app=app)) as api:
        agent = build_agent(settings, api)
        await agent.start()  # the run-side files, the launch probe, hello
        try:
            commands = await agent.run_once()
            assert [(c.kind, str(c.run_id)) for c in commands] == [(CommandKind.START_RUN, run["id"])]
            assert list(agent.runs) == [uuid.UUID(run["id"])]
            await asyncio.wait_for(asyncio.gather(*agent.tasks.values()), timeout=120)
            assert agent.runs == {} and agent.tasks == {}
            assert await agent.run_once() == []  # acknowledged: nothing more to do
        finally:
            await agent.close()
    finished = await get_run(client, world, run["id"])
    assert finished["status"] == "succeeded", finished
    state = json.loads(agent.states.path(uuid.UUID(run["id"])).read_text())
    assert state["phase"] == "done" and state["exit_code"] == 0


async def test_a_start_delivered_twice_is_carried_out_once(
    agent: Agent, client: AsyncClient, world: World
) -> None:
    run = await start_run(client, world)
    commands = await agent.client.poll(wait=0)
    assert [c.kind for c in commands] == [CommandKind.START_RUN]
    assert await agent.handle(commands[0])
    first = agent.runs[uuid.UUID(run["id"])]
    again = await agent.client.poll(wait=0)
    assert again == []  # acknowledged: the API does not send it again ...
    assert await agent.handle(commands[0])  # ... and if it did, nothing new happens
    assert list(agent.runs) == [uuid.UUID(run["id"])] and agent.runs[first.run_id] is first
    state = json.loads(agent.states.path(first.run_id).read_text())
    assert state["phase"] == "preparing"


async def test_a_stop_for_a_run_the_agent_never_had_ends_it(
    agent: Agent, client: AsyncClient, world: World
) -> None:
    run = await start_run(client, world)
    start = (await agent.client.poll(wait=0))[0]
    await agent.client.ack(start.id)  # taken, then lost: this agent has no state for it
    ok(await client.post(f"{world.process_path}/stop"), 202)
    stops = await agent.client.poll(wait=0)
    assert [c.kind for c in stops] == [CommandKind.STOP_RUN]
    assert await agent.handle(stops[0])
    assert (await get_run(client, world, run["id"]))["status"] == "stopped"
    assert await agent.client.poll(wait=0) == []


async def test_a_malformed_command_is_acknowledged_and_not_fatal(agent: Agent, world: World) -> None:
    command = Command(
        id=uuid.uuid4(),
        kind=CommandKind.STOP_RUN,
        run_id=uuid.uuid4(),
        created_at="2026-11-22T00:00:00Z",  # type: ignore[arg-type]
        payload={"stop": {"run_id": "not a uuid"}},
    )
    assert await agent._handle_safely(command)  # the ack is refused (unknown id): logged, not raised


def _execution(agent: Agent, outcome: dict[str, object] | None, **state: object) -> Execution:
    payload = {
        "run_id": str(uuid.uuid4()),
        "process_id": str(uuid.uuid4()),
        "project": "p",
        "template": "t",
        "pipeline_type": "training",
        "max_duration_seconds": 60,
    }
    return Execution(agent.machine, RunState(payload=payload, phase="exited", outcome=outcome, **state))  # type: ignore[arg-type]


async def test_the_exited_fact_follows_the_outcome(agent: Agent) -> None:
    ok_run = _execution(agent, {"status": "succeeded", "reason_code": "completed"}, exit_code=0)
    event, upload = ok_run.exited_event()
    assert (event.exit_code, event.reason_code, upload) == (0, None, True)

    broken = _execution(
        agent, {"status": "failed", "reason_code": "invalid_package", "detail": "no Main"}, exit_code=1
    )
    event, upload = broken.exited_event()
    assert (event.reason_code, event.error_tail, upload) == (ReasonCode.INVALID_PACKAGE, "no Main", False)

    # Re-adopted (no exit code known): the outcome decides; killed by a signal: never a success.
    readopted = _execution(agent, {"status": "succeeded", "reason_code": "completed"})
    assert readopted.exited_event()[0].exit_code == 0
    killed = _execution(agent, None, exit_signal=9)
    event, upload = killed.exited_event()
    assert (event.signal, event.reason_code, upload) == (9, ReasonCode.EXIT_NONZERO, False)
    assert event.error_tail  # something a person can read, even without an outcome

    timed_out = _execution(agent, None, exit_signal=15, stop_reason="max_duration")
    assert timed_out.exited_event()[0].reason_code is ReasonCode.MAX_DURATION


def test_the_trained_folder_is_zipped_without_caches_or_links(tmp_path: Path) -> None:
    folder = tmp_path / "package"
    (folder / "__pycache__").mkdir(parents=True)
    (folder / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "train.py").write_text("class Main: ...\n")
    (folder / "sub" / "weights.bin").write_bytes(b"\0" * 10)
    (folder / "escape").symlink_to("/etc/passwd")
    archive = tmp_path / "out.zip"
    zip_folder(folder, archive)
    import zipfile

    assert sorted(zipfile.ZipFile(archive).namelist()) == ["sub/weights.bin", "train.py"]
    assert not list(tmp_path.glob(".*.tmp"))
