"""`trainyard-api` as an operator runs it: real processes, a real server, real HTTP; no mocks."""

import asyncio
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.api.world import ok
from tests.conftest import ADMIN_TOKEN, POSTGRES_URL, SECRET_KEY

_SCRIPT = Path(sys.executable).with_name("trainyard-api")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "api.cli"]
# Generous bounds on waiting for a process, never assertions about speed.
COMMAND_TIMEOUT = 60.0
SERVER_START_TIMEOUT = 60.0
# After a graceful shutdown uvicorn re-raises the SIGTERM it caught, as a service manager expects.
CLEAN_EXIT = (0, -signal.SIGTERM)


def _env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without any TRAINYARD_* of theirs, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env["TRAINYARD_DATA_DIR"] = str(data_dir)
    env.update({f"TRAINYARD_{name.upper()}": value for name, value in settings.items()})
    return env


def trainyard_api(cwd: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env=_env(cwd / "data", **settings),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


# Settings that put the data somewhere other than `data/`: `migrate` always runs for them.
_ELSEWHERE = {"database_url", "blob_store", "data_dir"}
_migrated: dict[tuple[tuple[str, str], ...], Path] = {}


def migrate(cwd: Path, **settings: str) -> None:
    """`cwd/data` as `trainyard-api migrate` leaves it (the schema, the base packages' blobs), for a
    server a test starts. The first time for these settings in this process the command runs; after,
    `cwd/data` is a copy of what it made: a run costs ~3 s of a CPU, paid for every server the suite
    starts. On another database or blob store, or over an existing `data/`, it always runs."""
    key = tuple(sorted(settings.items()))
    template = _migrated.get(key)  # never one for settings _ELSEWHERE
    if template is not None and not (cwd / "data").exists():
        shutil.copytree(template / "data", cwd / "data", symlinks=True)
        return
    migrated = trainyard_api(cwd, "migrate", **settings)
    assert migrated.returncode == 0, migrated.stderr
    if template is None and not settings.keys() & _ELSEWHERE:
        template = Path(tempfile.mkdtemp(prefix="trainyard-migrated-"))
        shutil.copytree(cwd / "data", template / "data", symlinks=True)
        atexit.register(shutil.rmtree, template, ignore_errors=True)
        _migrated[key] = template


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log: Path
    base_url: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited early:\n{self.output()}"
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the server did not answer /healthz:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@contextmanager
def serving(cwd: Path, *args: str, **settings: str) -> Iterator[Server]:
    """`trainyard-api serve` on a free port, up and answering; always stopped on the way out."""
    port = _free_port()
    log = cwd / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(port), *args],
            cwd=cwd,
            env=_env(cwd / "data", **settings),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, log, f"http://127.0.0.1:{port}")
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def http(base_url: str, token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=40
    ) as client:
        yield client


def test_migrate_creates_the_schema_and_is_idempotent(tmp_path: Path) -> None:
    first = trainyard_api(tmp_path, "migrate")
    assert first.returncode == 0, first.stderr
    assert "the database schema is current" in first.stdout
    assert (tmp_path / "data" / "trainyard.db").is_file()

    again = trainyard_api(tmp_path, "migrate")
    assert again.returncode == 0, again.stderr
    assert "the database schema is current" in again.stdout


def test_serve_refuses_several_workers_on_sqlite(tmp_path: Path) -> None:
    result = trainyard_api(tmp_path, "serve", "--workers", "2")
    assert result.returncode != 0
    assert "PostgreSQL" in result.stderr and "TRAINYARD_DATABASE_URL" in result.stderr


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"bootstrap_token": "too-short"}, "TRAINYARD_BOOTSTRAP_TOKEN"),
        ({"offline_after": "60", "lost_after": "60"}, "TRAINYARD_LOST_AFTER"),
        ({"port": "eighty"}, "TRAINYARD_PORT"),
        ({"database_url": POSTGRES_URL}, "TRAINYARD_SECRET_KEY"),
    ],
    ids=["short-bootstrap-token", "lost-not-after-offline", "port-not-a-number", "postgres-no-secret-key"],
)
@pytest.mark.parametrize("command", ["migrate", "serve"])
def test_invalid_settings_exit_naming_the_variable(
    tmp_path: Path, command: str, settings: dict[str, str], named: str
) -> None:
    result = trainyard_api(tmp_path, command, **settings)
    assert result.returncode != 0
    assert "invalid settings" in result.stderr and named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "data").exists(), "nothing may be written before the settings are valid"


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    result = trainyard_api(tmp_path, "serve", "--port", str(_free_port()))
    assert result.returncode != 0
    assert "trainyard-api migrate" in result.stderr, result.stderr


async def test_primo_flow_over_http(tmp_path: Path) -> None:
    """Migrate, serve, then drive the Primo flow as a REST client and an agent would, and stop cleanly."""
    assert trainyard_api(tmp_path, "migrate").returncode == 0
    with serving(tmp_path, bootstrap_token=ADMIN_TOKEN) as server:
        async with http(f"{server.base_url}/api/v1", ADMIN_TOKEN) as admin:
            ok(await admin.post("/model-types", json={"name": "classifier"}), 201)
            machine = ok(await admin.post("/machines", json={"name": "gpu-01", "address": "10.0.3.17"}), 201)
            ok(await admin.post("/projects", json={"name": "invoices"}), 201)
            ok(
                await admin.post(
                    "/projects/invoices/templates",
                    json={"name": "digits", "model_type": "classifier", "parameters": {"epochs": 20}},
                ),
                201,
            )
            process = ok(
                await admin.post("/projects/invoices/templates/digits/processes", json={"machine": "gpu-01"}),
                201,
            )
            assert process["status"] == "created"

            async with http(f"{server.base_url}/api/v1/agent", machine["agent_token"]) as agent:
                # A held long-poll, woken by the start through the server's own notifier.
                poll = asyncio.create_task(agent.get("/commands", params={"wait": 30}))
                started = ok(await admin.post(f"/projects/invoices/processes/{process['id']}/start"), 201)
                assert started["status"] == "starting"
                commands = ok(await poll)
                assert [c["kind"] for c in commands] == ["start_run"]
                run_id = started["latest_run"]["id"]
                assert commands[0]["run_id"] == run_id
                assert commands[0]["payload"]["start"]["parameters"] == {"epochs": 20}

                ok(await agent.post(f"/commands/{commands[0]['id']}/ack"))
                ok(await agent.post(f"/runs/{run_id}/events", json={"type": "launched"}))
                run = ok(await admin.get(f"/projects/invoices/runs/{run_id}"))
                assert run["status"] == "running"

                stopping = ok(await admin.post(f"/projects/invoices/processes/{process['id']}/stop"), 202)
                assert stopping["status"] == "stopping"
                assert [c["kind"] for c in ok(await agent.get("/commands"))] == ["stop_run"]

            async with http(f"{server.base_url}/api/v1/agent", "ty_not_a_token") as stranger:
                assert (await stranger.get("/commands")).status_code == 401
            assert ok(await admin.get(f"{server.base_url}/readyz")) == {"status": "ready"}
    assert server.process.returncode in CLEAN_EXIT, server.output()
    assert "Application shutdown complete" in server.output()
    # The access log keeps people's requests and the agents' refusals, not the agents' routine traffic.
    access = [line for line in server.output().splitlines() if '" 20' in line or '" 40' in line]
    assert any(f"POST /api/v1/projects/invoices/processes/{process['id']}/start" in a for a in access)
    assert any('GET /api/v1/agent/commands HTTP/1.1" 401' in a for a in access), access
    assert not [a for a in access if "/api/v1/agent/" in a and '" 401' not in a], access


@pytest.mark.postgres
def test_postgres_migrate_then_serve_with_two_workers(tmp_path: Path, scratch_postgres: str) -> None:
    settings = {"database_url": scratch_postgres, "secret_key": SECRET_KEY, "bootstrap_token": ADMIN_TOKEN}
    refused = trainyard_api(tmp_path, "serve", "--port", str(_free_port()), **settings)
    assert refused.returncode != 0
    assert "trainyard-api migrate" in refused.stderr, refused.stderr

    migrated = trainyard_api(tmp_path, "migrate", **settings)
    assert migrated.returncode == 0, migrated.stderr
    with serving(tmp_path, "--workers", "2", **settings) as server:
        assert ok(httpx.get(f"{server.base_url}/readyz")) == {"status": "ready"}
        projects = httpx.get(
            f"{server.base_url}/api/v1/projects", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert ok(projects)["items"] == []
    assert server.process.returncode in CLEAN_EXIT, server.output()
