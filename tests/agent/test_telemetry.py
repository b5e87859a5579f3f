"""The telemetry shipper against the real API in a process of its own, with faults: the API SIGKILLed
and restarted mid-shipping, the shipper SIGKILLed and restarted. Every point the package reported and
every line it printed must be stored once, in order."""

import asyncio
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx import ASGITransport
from sqlalchemy import update

from agent.client import ApiClient
from agent.telemetry import STATE_FILE, RunTelemetry, Tracker, _read, read_spool, spool_end
from api.models.telemetry import RunTelemetry as TelemetryRow
from tests.agent.shipper_process import folder_of, settings
from tests.agent.test_client import agent_settings
from tests.agent.test_runtime import RUNNER
from tests.api.test_cli import COMMAND, Server, _env, _free_port, migrate
from tests.api.world import World, agent_client, make_world, ok, report, start_run, take_commands
from tests.conftest import ADMIN_TOKEN, SECRET_KEY

PATIENCE = 90.0  # bounds on waiting, never timing assertions
STAMP = re.compile(r"^\S+Z ")
TRAIN = """
import random, sys, time
from trainyard import report

class Main:
    def train(self, data_directory):
        rng = random.Random(7)
        for step in range(STEPS):
            report(step=step, total_steps=STEPS, loss=rng.random(), accuracy=step / STEPS, stage="training")
            if step % 10 == 0:
                print(f"step {step} \\u00e9", flush=True)
            if step % 200 == 0:
                time.sleep(0.05)
        print("done", file=sys.stderr)

    def save(self):
        pass
"""


@contextmanager
def api_on(cwd: Path, port: int) -> Iterator[Server]:
    log = cwd / f"serve-{port}-{time.monotonic_ns()}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(port)],
            cwd=cwd,
            env=_env(cwd / "data", bootstrap_token=ADMIN_TOKEN, secret_key=SECRET_KEY),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, log, f"http://127.0.0.1:{port}")
    try:
        server.wait_until_up()
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def a_running_run(base_url: str) -> tuple[str, str, str]:
    """(project, run id, agent token) of a run the agent launched."""
    async with (
        httpx.AsyncClient(
            base_url=f"{base_url}/api/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as admin,
    ):
        world = await make_world(admin)
        run = await start_run(admin, world)
    async with httpx.AsyncClient(
        base_url=f"{base_url}/api/v1/agent", headers={"Authorization": f"Bearer {world.agent_token}"}
    ) as agent:
        await take_commands(agent)
        await report(agent, run["id"], "launched")
    return world.project, run["id"], world.agent_token


def start_package(root: Path, steps: int) -> subprocess.Popen[bytes]:
    package = root / "package"
    package.mkdir(parents=True)
    (package / "train.py").write_text(TRAIN.replace("STEPS", str(steps)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_") and k != "RANK"}
    env.update(
        TRAINYARD_SPOOL=str(root / "spool.jsonl"),
        TRAINYARD_STDOUT_LOG=str(root / "stdout.log"),
        TRAINYARD_STDERR_LOG=str(root / "stderr.log"),
        TRAINYARD_OUTCOME=str(root / "outcome.json"),
        data_directory=str(root),
    )
    return subprocess.Popen([sys.executable, str(RUNNER)], cwd=package, env=env, start_new_session=True)


def reported(root: Path) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for record in read_spool(root / "spool.jsonl"):
        for name, value in record["series"].items():
            series.setdefault(name, []).append((record["step"], value))
    return series


def printed(root: Path) -> list[str]:
    return [STAMP.sub("", line) for line in (root / "stdout.log").read_text().splitlines()]


async def stored(base_url: str, project: str, run_id: str) -> tuple[dict[str, Any], list[str]]:
    async with httpx.AsyncClient(
        base_url=f"{base_url}/api/v1/projects/{project}/runs/{run_id}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    ) as client:
        chart = ok(await client.get("/metrics", params={"max_points": 20_000}))
        lines: list[str] = []
        offset = 0
        while True:
            page = ok(await client.get("/logs", params={"offset": offset, "limit": 5000, "stream": "stdout"}))
            lines += [line["text"] for line in page["lines"]]
            if not page["lines"]:
                break
            offset = page["next_offset"]
    series = {s["name"]: list(zip(s["step"], s["value"], strict=True)) for s in chart["series"]}
    assert not any(s["downsampled"] for s in chart["series"])
    return {"series": series, "progress": chart["progress"], "stage": chart["stage"]}, lines


def wait_for(condition: Any) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    migrate(tmp_path)
    return tmp_path


async def test_the_api_killed_and_restarted_mid_shipping_loses_and_duplicates_nothing(cwd: Path) -> None:
    port = _free_port()
    root = cwd / "runs" / "r1"
    with api_on(cwd, port) as server:
        project, run_id, token = await a_running_run(server.base_url)
        package = start_package(root, 4000)
        async with ApiClient(settings(server.base_url, token, cwd / "runs")) as client:
            telemetry = RunTelemetry(client, uuid.UUID(run_id), folder_of(root), started_at=time.time())
            shipping = asyncio.create_task(telemetry.ship_forever())
            for _ in range(2):
                await asyncio.to_thread(
                    wait_for, lambda: telemetry.state.acked >= 2 or package.poll() is not None
                )
                server.process.send_signal(signal.SIGKILL)
                server.process.wait()
                await asyncio.sleep(random.uniform(0.1, 0.5))  # the package goes on; the files grow
                with api_on(cwd, port) as server:
                    await asyncio.to_thread(
                        wait_for, lambda: telemetry.state.acked >= 4 or package.poll() is not None
                    )
            with api_on(cwd, port) as server:
                assert await asyncio.to_thread(package.wait, PATIENCE) == 0
                await asyncio.wait_for(telemetry.flush(), PATIENCE)
                shipping.cancel()
                got, lines = await stored(server.base_url, project, run_id)
    assert got["series"] == reported(root) and len(got["series"]["loss"]) == 4000
    assert lines == printed(root) and len(lines) == 400
    assert (
        got["progress"] == pytest.approx(3999 / 4000) and got["stage"] == "saving"
    )  # the runner reports it before save()


async def test_the_shipper_killed_and_restarted_loses_and_duplicates_nothing(cwd: Path) -> None:
    port = _free_port()
    root = cwd / "runs" / "r2"
    with api_on(cwd, port) as server:
        project, run_id, token = await a_running_run(server.base_url)
        package = start_package(root, 4000)
        started = str(time.time())
        rng = random.Random(3)
        for _ in range(5):
            shipper = await asyncio.to_thread(
                subprocess.Popen,
                [
                    sys.executable,
                    "-m",
                    "tests.agent.shipper_process",
                    server.base_url,
                    token,
                    run_id,
                    str(root),
                    started,
                ],
                env={k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")},
            )
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            shipper.send_signal(signal.SIGKILL)
            await asyncio.to_thread(shipper.wait)
        assert await asyncio.to_thread(package.wait, PATIENCE) == 0
        async with ApiClient(settings(server.base_url, token, cwd / "runs")) as client:
            telemetry = RunTelemetry(client, uuid.UUID(run_id), folder_of(root), started_at=float(started))
            await asyncio.wait_for(telemetry.flush(), PATIENCE)
        got, lines = await stored(server.base_url, project, run_id)
    assert got["series"] == reported(root) and len(got["series"]["accuracy"]) == 4000
    assert lines == printed(root)


def test_progress_from_epochs_alone_gives_a_smoothed_eta() -> None:
    tracker = Tracker()
    for epoch in range(1, 5):
        tracker.observe({"t": 1000.0 + 10 * epoch, "epoch": epoch, "total_epochs": 20}, started_at=1000.0)
    assert tracker.fraction() == pytest.approx(4 / 20)
    assert tracker.eta() == pytest.approx(160.0)  # 10 s an epoch, 16 epochs to go
    tracker.observe({"t": 1070.0, "epoch": 5, "total_epochs": 20}, started_at=1000.0)  # a slow epoch
    assert 160.0 * 15 / 16 < tracker.eta() < 30 * 15  # moved towards the new pace, not to it


def test_the_reader_stops_at_the_first_nul_of_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    whole = b'{"t":1.0,"seq":1,"step":1,"series":{"loss":0.5}}\n'
    # A line being stored (its first bytes visible, the rest still zeros), then the mapping's zeros.
    spool.write_bytes(whole + b'{"t":2.0,"seq":2,"st' + b"\0" * 4096)
    assert spool_end(spool) == len(whole) + 20
    assert _read(spool, 0, 1 << 20, spool=True) == whole
    assert [record["seq"] for record in read_spool(spool)] == [1]
    # A spool an older trainyard wrote with write(2), without zeros, and a log, which may hold NULs.
    spool.write_bytes(whole * 3)
    assert spool_end(spool) == 3 * len(whole) and _read(spool, 0, 1 << 20, spool=True) == whole * 3
    log = tmp_path / "stdout.log"
    log.write_bytes(b"a\0b\n")
    assert _read(log, 0, 1 << 20) == b"a\0b\n"


def test_the_reader_follows_no_symlink_and_waits_on_no_fifo(tmp_path: Path) -> None:
    # The run's folder is the package's: it could point its spool or its log at a file only the agent
    # may read, to have it shipped to the API, or make one a FIFO, to hang the agent's reader.
    secret = tmp_path / "secret"
    secret.write_bytes(b'{"t":1.0,"seq":1,"step":1,"series":{"secret":42.0}}\n')
    run = tmp_path / "run"
    run.mkdir()
    (run / "spool.jsonl").symlink_to(secret)
    (run / "stdout.log").symlink_to(secret)
    os.mkfifo(run / "stderr.log")
    for name in ("spool.jsonl", "stdout.log", "stderr.log"):
        assert _read(run / name, 0, 1 << 20, spool=name == "spool.jsonl") == b""
        assert spool_end(run / name) == 0 and read_spool(run / name) == []


async def _launched_run_with_spool(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path
) -> tuple[World, str, Path, Callable[[range], None]]:
    """A launched run and its folder; `write(steps)` appends a loss point per step to its spool."""
    world = await make_world(client)
    run_id = (await start_run(client, world))["id"]
    async with agent_client(app, world.agent_token) as agent:
        await take_commands(agent)
        await report(agent, run_id, "launched")
    root = tmp_path / "run"
    root.mkdir()
    spool = root / "spool.jsonl"

    def write(steps: range) -> None:
        with spool.open("a") as file:
            for step in steps:
                file.write(json.dumps({"t": time.time(), "step": step, "series": {"loss": step / 10}}) + "\n")

    return world, run_id, root, write


async def test_a_batch_whose_bounds_cannot_be_saved_is_never_sent(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A full disk (the state file's temporary is /dev/full: ENOSPC) while a batch is cut: the batch
    must not be sent, or an agent restarted later cuts the same seq over more lines, which the API
    takes for a repeat, and those lines are lost."""
    world, run_id, root, write = await _launched_run_with_spool(app, client, tmp_path)

    write(range(5))
    full = root / f".{STATE_FILE}.tmp"
    full.symlink_to("/dev/full")
    settings = agent_settings(world.agent_token, tmp_path)
    async with ApiClient(settings, transport=ASGITransport(app=app)) as api:
        telemetry = RunTelemetry(api, uuid.UUID(run_id), folder_of(root), started_at=time.time())
        for _ in range(2):  # the shipper's next turn, the disk still full
            with pytest.raises(OSError) as caught:
                await telemetry.flush()
            assert caught.value.errno == errno.ENOSPC
        assert (telemetry.state.next_seq, telemetry.state.pending) == (1, [])
        full.unlink()  # space returns; the agent was restarted meanwhile, and the run went on
        write(range(5, 10))
        restarted = RunTelemetry(api, uuid.UUID(run_id), folder_of(root), started_at=time.time())
        await restarted.flush()
    chart = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/metrics"))
    (loss,) = [series for series in chart["series"] if series["name"] == "loss"]
    assert loss["step"] == list(range(10))


async def test_a_renumbering_that_cannot_be_saved_is_never_adopted(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The API's database restored from a backup lacks a batch the agent no longer holds: the agent
    numbers what is left after what the API has. On a full disk that renumbering must stay unadopted
    (sent, then lost on a restart, the old numbers would be sent again and taken as new)."""
    world, run_id, root, write = await _launched_run_with_spool(app, client, tmp_path)

    settings = agent_settings(world.agent_token, tmp_path)
    async with ApiClient(settings, transport=ASGITransport(app=app)) as api:
        telemetry = RunTelemetry(api, uuid.UUID(run_id), folder_of(root), started_at=time.time())
        write(range(5))
        await telemetry.flush()
        async with app.state.engine.begin() as connection:  # the restore: batch 1 is gone
            await connection.execute(
                update(TelemetryRow).where(TelemetryRow.run_id == uuid.UUID(run_id)).values(acked_through=0)
            )
        write(range(5, 10))
        assert await asyncio.to_thread(telemetry._cut)
        assert [p.seq for p in telemetry.state.pending] == [2]
        full = root / f".{STATE_FILE}.tmp"
        full.symlink_to("/dev/full")
        with pytest.raises(OSError) as caught:
            await telemetry._send(telemetry.state.pending[0])
        assert caught.value.errno == errno.ENOSPC
        assert ([p.seq for p in telemetry.state.pending], telemetry.state.next_seq) == ([2], 3)
        full.unlink()
        await telemetry.flush()
        assert (telemetry.state.pending, telemetry.state.acked) == ([], 1)
    chart = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/metrics"))
    (loss,) = [series for series in chart["series"] if series["name"] == "loss"]
    assert loss["step"] == list(range(10))
