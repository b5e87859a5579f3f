"""Wake-ups across API processes on PostgreSQL: a start sent to one process wakes a poll held by another.

Two real `trainyard-api serve` processes share one scratch database. The poll's wait is far longer
than the delay before the start, and the route answers `[]` when its wait runs out, so the start
command can only arrive through a LISTEN/NOTIFY wake-up. (One process waking its own poll is covered
by tests/api/test_agent_protocol.py and test_cli.py.)
"""

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from api.core.db import pg_conninfo
from api.core.notify import CHANNEL, PgNotifier
from tests.api.test_cli import CLEAN_EXIT, http, serving, trainyard_api
from tests.api.world import ok
from tests.conftest import ADMIN_TOKEN, SECRET_KEY, _pg_admin_connect

pytestmark = pytest.mark.postgres

POLL_WAIT_SECONDS = 30
# A bound on waiting for the listener to come back, never an assertion about speed.
RECONNECT_TIMEOUT_SECONDS = 20
# Lets the poll reach the server and start waiting before the start is sent; not a timing assertion.
START_DELAY_SECONDS = 0.5


async def test_a_start_on_one_process_wakes_a_poll_held_by_another(
    tmp_path: Path, scratch_postgres: str
) -> None:
    settings = {"database_url": scratch_postgres, "secret_key": SECRET_KEY, "bootstrap_token": ADMIN_TOKEN}
    migrated = trainyard_api(tmp_path, "migrate", **settings)
    assert migrated.returncode == 0, migrated.stderr
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    with (
        serving(a_dir, "--workers", "1", **settings) as server_a,
        serving(b_dir, "--workers", "1", **settings) as server_b,
    ):
        async with http(f"{server_a.base_url}/api/v1", ADMIN_TOKEN) as admin:
            ok(await admin.post("/model-types", json={"name": "classifier"}), 201)
            machine = ok(await admin.post("/machines", json={"name": "gpu-01", "address": "10.0.3.17"}), 201)
            ok(await admin.post("/projects", json={"name": "invoices"}), 201)
            ok(
                await admin.post(
                    "/projects/invoices/templates", json={"name": "digits", "model_type": "classifier"}
                ),
                201,
            )
            process = ok(
                await admin.post("/projects/invoices/templates/digits/processes", json={"machine": "gpu-01"}),
                201,
            )

            async with http(f"{server_b.base_url}/api/v1/agent", machine["agent_token"]) as agent:
                poll = asyncio.create_task(agent.get("/commands", params={"wait": POLL_WAIT_SECONDS}))
                await asyncio.sleep(START_DELAY_SECONDS)
                assert not poll.done(), "the poll answered before anything was started"
                started = ok(await admin.post(f"/projects/invoices/processes/{process['id']}/start"), 201)
                commands = ok(await poll)

        assert [c["kind"] for c in commands] == ["start_run"]
        assert commands[0]["run_id"] == started["latest_run"]["id"]
    for server in (server_a, server_b):
        assert server.process.returncode in CLEAN_EXIT, server.output()
        assert "Application shutdown complete" in server.output()
        assert "Traceback" not in server.output(), server.output()


async def test_a_report_to_one_process_answers_a_run_waiter_held_by_another(
    tmp_path: Path, scratch_postgres: str
) -> None:
    """`wait=` on a run (tests/api/test_wait.py) across replicas: the agent's report lands on A, the
    person's held GET on B is answered by the NOTIFY that A's commit sends."""
    settings = {"database_url": scratch_postgres, "secret_key": SECRET_KEY, "bootstrap_token": ADMIN_TOKEN}
    migrated = trainyard_api(tmp_path, "migrate", **settings)
    assert migrated.returncode == 0, migrated.stderr
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    with (
        serving(a_dir, "--workers", "1", **settings) as server_a,
        serving(b_dir, "--workers", "1", **settings) as server_b,
    ):
        async with (
            http(f"{server_a.base_url}/api/v1", ADMIN_TOKEN) as admin,
            http(f"{server_b.base_url}/api/v1", ADMIN_TOKEN) as watcher,
        ):
            ok(await admin.post("/model-types", json={"name": "classifier"}), 201)
            machine = ok(await admin.post("/machines", json={"name": "gpu-01", "address": "10.0.3.17"}), 201)
            ok(await admin.post("/projects", json={"name": "invoices"}), 201)
            ok(
                await admin.post(
                    "/projects/invoices/templates", json={"name": "t", "model_type": "classifier"}
                ),
                201,
            )
            process = ok(
                await admin.post("/projects/invoices/templates/t/processes", json={"machine": "gpu-01"}), 201
            )
            run = ok(await admin.post(f"/projects/invoices/processes/{process['id']}/start"), 201)[
                "latest_run"
            ]
            path = f"/projects/invoices/runs/{run['id']}"
            etag = (await watcher.get(path)).headers["ETag"]
            waiter = asyncio.create_task(
                watcher.get(path, params={"wait": POLL_WAIT_SECONDS}, headers={"If-None-Match": etag})
            )
            await asyncio.sleep(START_DELAY_SECONDS)
            assert not waiter.done(), "the waiter answered before anything changed"
            async with http(f"{server_a.base_url}/api/v1/agent", machine["agent_token"]) as agent:
                for command in ok(await agent.get("/commands")):
                    ok(await agent.post(f"/commands/{command['id']}/ack"))
                ok(await agent.post(f"/runs/{run['id']}/events", json={"type": "launched"}))
            woken = await waiter
        assert woken.status_code == 200 and woken.json()["status"] == "running"
        assert woken.headers["ETag"] != etag
    for server in (server_a, server_b):
        assert "Traceback" not in server.output(), server.output()


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(RECONNECT_TIMEOUT_SECONDS):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


async def _publish(conninfo: str, payload: str) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def _listener_pids(database: str) -> list[int]:
    with _pg_admin_connect() as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query ILIKE 'LISTEN%%'", (database,)
        ).fetchall()
    return [row[0] for row in rows]


async def test_the_listener_reconnects_and_wakes_its_waiters(database_url: str, is_postgres: bool) -> None:
    if not is_postgres:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    conninfo = pg_conninfo(database_url)
    database = database_url.rpartition("/")[2]
    notifier = PgNotifier(conninfo)
    machine_id = uuid.uuid4()
    await notifier.start()
    try:
        assert notifier.listening
        with notifier.listen(machine_id) as woken:
            await _publish(conninfo, f"another-process:{machine_id}")
            async with asyncio.timeout(RECONNECT_TIMEOUT_SECONDS):
                await woken.wait()
        # The same process's own notifications are ignored: it woke its waiters at commit.
        with notifier.listen(machine_id) as woken:
            await _publish(conninfo, notifier.payload(machine_id))
            await _publish(conninfo, f"another-process:{uuid.uuid4()}")
            await asyncio.sleep(0.2)
            assert not woken.is_set()

        (pid,) = _listener_pids(database)
        with _pg_admin_connect() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await _until(lambda: notifier.listening and _listener_pids(database) not in ([], [pid]))
        with notifier.listen(machine_id) as woken:
            await _publish(conninfo, f"another-process:{machine_id}")
            async with asyncio.timeout(RECONNECT_TIMEOUT_SECONDS):
                await woken.wait()
    finally:
        await notifier.stop()
    await _until(lambda: _listener_pids(database) == [])  # stopped: its connection is closed
