"""Webhooks from real `trainyard-api serve` processes: nothing is lost when the API is killed between
a change and its delivery, and two replicas on one PostgreSQL deliver each event once."""

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.api.receiver import Received, receiving
from tests.api.test_cli import http, migrate, serving, trainyard_api
from tests.api.world import ok
from tests.conftest import ADMIN_TOKEN, SECRET_KEY

SETTINGS = {"secret_key": SECRET_KEY, "bootstrap_token": ADMIN_TOKEN, "webhooks_allow_private": "true"}


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _seed(admin: Any, receiver_url: str) -> tuple[dict[str, Any], list[str]]:
    """A project with a webhook on every run status change, and three processes on one machine."""
    ok(await admin.post("/model-types", json={"name": "classifier"}), 201)
    machine = ok(
        await admin.post("/machines", json={"name": "gpu-01", "address": "10.0.3.17", "capacity": 3}), 201
    )
    ok(await admin.post("/projects", json={"name": "invoices"}), 201)
    ok(await admin.post("/projects/invoices/templates", json={"name": "t", "model_type": "classifier"}), 201)
    hook = {"url": receiver_url, "events": ["run.status_changed"]}
    ok(await admin.post("/projects/invoices/webhooks", json=hook), 201)
    processes = [
        ok(await admin.post("/projects/invoices/templates/t/processes", json={"machine": "gpu-01"}), 201)[
            "id"
        ]
        for _ in range(3)
    ]
    return machine, processes


async def test_a_delivery_pending_when_the_api_is_killed_is_sent_after_its_restart(tmp_path: Path) -> None:
    migrate(tmp_path, **SETTINGS)
    port = _unused_port()  # nothing listens there yet: the first attempts fail
    with serving(tmp_path, **SETTINGS) as server:
        async with http(f"{server.base_url}/api/v1", ADMIN_TOKEN) as admin:
            _, processes = await _seed(admin, f"http://127.0.0.1:{port}/hook")
            ok(await admin.post(f"/projects/invoices/processes/{processes[0]}/start"), 201)
        server.process.send_signal(signal.SIGKILL)  # no shutdown of any kind
        server.process.wait()
    with receiving(port) as receiver, serving(tmp_path, **SETTINGS):
        (delivery,) = await asyncio.to_thread(receiver.wait_for, 1)
        assert delivery.json["type"] == "run.status_changed"
        assert delivery.json["data"]["status"] == "starting"
        await asyncio.sleep(0.5)
        assert len(receiver.received) == 1


@pytest.mark.postgres
async def test_two_replicas_deliver_each_event_once(tmp_path: Path, scratch_postgres: str) -> None:
    settings = {**SETTINGS, "database_url": scratch_postgres}
    migrated = trainyard_api(tmp_path, "migrate", **settings)
    assert migrated.returncode == 0, migrated.stderr
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    with (
        receiving() as receiver,
        serving(a_dir, "--workers", "1", **settings) as server_a,
        serving(b_dir, "--workers", "1", **settings) as server_b,
    ):
        async with (
            http(f"{server_a.base_url}/api/v1", ADMIN_TOKEN) as a,
            http(f"{server_b.base_url}/api/v1", ADMIN_TOKEN) as b,
        ):
            _, processes = await _seed(a, receiver.url)
            # Starts and stops through both replicas: each change wakes both dispatchers.
            for number, process in enumerate(processes):
                via = (a, b)[number % 2]
                ok(await via.post(f"/projects/invoices/processes/{process}/start"), 201)
                ok(await (b, a)[number % 2].post(f"/projects/invoices/processes/{process}/stop"), 202)
            # Each start and stop of a run not yet taken by an agent: starting, then stopped.
            expected = 2 * len(processes)
            deliveries: list[Received] = await asyncio.to_thread(receiver.wait_for, expected)
            await asyncio.sleep(1.0)  # a second copy, if any were sent, would come now
        ids = [d.headers["webhook-id"] for d in receiver.received]
        assert len(ids) == len(set(ids)) == expected, ids
        assert sorted(d.json["data"]["status"] for d in deliveries) == ["starting"] * 3 + ["stopped"] * 3
    for server in (server_a, server_b):
        assert "Traceback" not in server.output(), server.output()
