"""The daemon's services against the real API app in process, with real serving processes: a start
carried to `serving` and a prediction through the API; a start delivered again is a no-op; a stop
the agent takes while away reaches it through hello's `stop_services`; a stop for a service the agent
never had ends it. The full life with a real agent process is tests/e2e/test_serving.py."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from agent import service_process
from agent.cli import build_agent
from agent.client import ApiClient
from agent.daemon import Agent
from agent.run_process import process_start_time
from shared.enums import CommandKind
from tests.agent.test_client import agent_settings
from tests.api.packages_kit import train_py, upload_package, zip_bytes
from tests.api.world import World, agent_client, make_world, ok

BOUND_SECONDS = 120.0  # a bound on waiting for a process, never a timing assertion
ECHO = """\
import os


class Main:
    def predict(self, input):
        return {"pid": os.getpid(), "echo": input}
"""


@pytest.fixture
async def world(client: AsyncClient) -> World:
    world = await make_world(client)
    package = zip_bytes({"train.py": train_py("train", "save"), "main.py": ECHO})
    ok(await upload_package(client, world.project, "echo", package), 201)
    return world


@pytest.fixture
async def agent(app: FastAPI, world: World, tmp_path: Path) -> AsyncIterator[Agent]:
    """The agent, started (the run-side files, the probe, hello); its /health checks 5 a second."""
    first = random.randrange(20000, 40000, 100)
    settings = agent_settings(world.agent_token, tmp_path).model_copy(
        update={
            # As root, packages run as root itself, explicitly: this machine's Python lives under /root.
            "run_as": "root" if os.geteuid() == 0 else None,
            "allow_unsafe_run_user": True,
            "package_venvs": False,
            "agent_serve_ports": f"{first}-{first + 99}",
            "stop_grace": 5.0,
            "agent_serve_liveness_seconds": 0.2,
        }
    )
    async with ApiClient(settings, transport=ASGITransport(app=app)) as api:
        the_agent = build_agent(settings, api)
        await the_agent.start()
        try:
            yield the_agent
        finally:
            for service in list(the_agent.services.services.values()):  # no process left behind
                service.stop()
            await asyncio.wait_for(asyncio.gather(*the_agent.services.tasks.values()), BOUND_SECONDS)
            await the_agent.close()


async def publish(client: AsyncClient, world: World, name: str = "echo") -> str:
    body = {"name": name, "package": "echo", "version": "1.0", "machine": world.machine}
    ok(await client.post(f"/projects/{world.project}/services", json=body), 201)
    path = f"/projects/{world.project}/services/{name}"
    ok(await client.post(f"{path}/start"), 202)
    return path


async def until_status(client: AsyncClient, path: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + BOUND_SECONDS
    while (service := ok(await client.get(path)))["status"] not in statuses:
        assert time.monotonic() < deadline, service
        await asyncio.sleep(0.05)
    found: dict[str, Any] = service
    return found


async def test_a_start_serves_once_however_often_it_comes_and_a_stop_ends_it(
    agent: Agent, client: AsyncClient, world: World
) -> None:
    path = await publish(client, world)
    [command] = await agent.run_once()
    assert command.kind is CommandKind.START_SERVICE
    service = await until_status(client, path, "serving", "failed")
    assert service["status"] == "serving", service
    answer = ok(await client.post(f"{path}/predict", json=[1, 2]))
    assert answer["echo"] == [1, 2]
    held = agent.services.services[command.service_id]  # type: ignore[index]
    [instance] = held.state.instances.values()

    assert await agent.handle(command)  # delivered again: the same supervisor, the same process
    assert agent.services.services[command.service_id] is held  # type: ignore[index]
    assert ok(await client.post(f"{path}/predict", json=3))["pid"] == answer["pid"] == instance.pid
    await agent.hello()  # the API still wants it: it goes on
    assert not held.stop_requested.is_set()

    ok(await client.post(f"{path}/stop"), 202)
    [stop] = await agent.run_once()
    assert stop.kind is CommandKind.STOP_SERVICE
    await asyncio.wait_for(asyncio.gather(*agent.services.tasks.values()), BOUND_SECONDS)
    stopped = await until_status(client, path, "stopped", "failed")
    assert (stopped["status"], stopped["reason_code"]) == ("stopped", "user_stop"), stopped
    assert process_start_time(answer["pid"]) is None
    assert agent.services.services == {} and not agent.services.store.path(held.service_id).exists()


async def test_a_stop_while_the_agent_was_away_comes_back_in_hello(
    agent: Agent, client: AsyncClient, world: World
) -> None:
    path = await publish(client, world)
    await agent.run_once()
    await until_status(client, path, "serving")
    pid = ok(await client.post(f"{path}/predict", json={"x": 1}))["pid"]
    ok(await client.post(f"{path}/stop"), 202)  # its stop command is never polled: the agent is "away"
    await agent.hello()  # as after a restart: `stop_services` names it
    await asyncio.wait_for(asyncio.gather(*agent.services.tasks.values()), BOUND_SECONDS)
    stopped = await until_status(client, path, "stopped", "failed")
    assert stopped["status"] == "stopped", stopped
    assert process_start_time(pid) is None


async def test_a_stop_for_a_service_the_agent_never_had_ends_it(
    agent: Agent, app: FastAPI, client: AsyncClient, world: World
) -> None:
    path = await publish(client, world)
    async with agent_client(app, world.agent_token) as other:  # the start taken, but not by this agent
        [start] = [c for c in ok(await other.get("/commands")) if c["kind"] == "start_service"]
        ok(await other.post(f"/commands/{start['id']}/ack"))
    assert ok(await client.post(f"{path}/stop"), 202)["status"] == "stopping"
    [stop] = await agent.run_once()
    assert stop.kind is CommandKind.STOP_SERVICE and agent.services.services == {}
    stopped = await until_status(client, path, "stopped", "failed")
    assert (stopped["status"], stopped["reason_code"]) == ("stopped", "user_stop"), stopped


CHATTY = """\
import sys


class Main:
    def predict(self, input):
        sys.stderr.write("x" * 999 + "\\n")
        return input
"""


async def test_a_chatty_instance_keeps_its_logs_bounded(
    agent: Agent, client: AsyncClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_process, "LOG_MAX_BYTES", 20_000)
    monkeypatch.setattr(service_process, "LOG_KEPT_BYTES", 5_000)
    package = zip_bytes({"train.py": train_py("train", "save"), "main.py": CHATTY})
    ok(await upload_package(client, world.project, "chatty", package), 201)
    body = {"name": "chatty", "package": "chatty", "version": "1.0", "machine": world.machine}
    ok(await client.post(f"/projects/{world.project}/services", json=body), 201)
    path = f"/projects/{world.project}/services/chatty"
    ok(await client.post(f"{path}/start"), 202)
    [command] = await agent.run_once()
    await until_status(client, path, "serving")
    held = agent.services.services[command.service_id]  # type: ignore[index]
    stderr = held.folder.stderr(0)
    for _ in range(60):  # 60 KB of stderr, three times the bound
        ok(await client.post(f"{path}/predict", json=1))
    deadline = time.monotonic() + BOUND_SECONDS
    while stderr.stat().st_size > 20_000:  # cut at the next liveness check
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    kept = stderr.with_name(stderr.name + ".1").read_bytes()
    assert len(kept) == 5_000 and kept.endswith(b"x\n")
    assert ok(await client.post(f"{path}/predict", json=2)) == 2  # it writes on, at the new end
