"""Who a package runs as and what it can reach: the bubblewrap sandbox as an operator turns it on, the
start-up check of the run user, and a launch that can never work.

The sandboxed runs use this machine's own Python, which lives under /root where the run user cannot go
outside the sandbox: that they train at all shows the sandbox hands the run user its interpreter.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.run_process import command_lines
from tests.api.world import ok
from tests.e2e.harness import PROJECT, WAIT_SECONDS, package, stack, user_exists

RUN_USER = "trainyard-run"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="running packages as another user needs root"),
    pytest.mark.skipif(
        shutil.which("bwrap") is None, reason="bubblewrap is not installed (.ci/run installs it)"
    ),
]

# Tries what a hostile package would, and prints what it found as one JSON line on stdout (the run's
# log reaches the test through the API: no folder outside the run is writable in the sandbox).
PROBES = package(
    """
    import json, os, socket
    from trainyard import report


    def attempt(what, action):
        try:
            return {"what": what, "got": str(action())[:2000]}
        except OSError as error:
            return {"what": what, "error": type(error).__name__}


    def read(path):
        with open(path, "rb") as f:
            return f.read().decode("latin-1")


    def write(path):
        with open(path, "w") as f:
            f.write("x")
        return "written"


    def connect(port):
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
            return "connected"


    class Main:
        def train(self, data_directory):
            work, agent = os.environ["work_dir"], os.environ["agent_pid"]
            found = [
                {"what": "uid", "got": str(os.getuid())},
                {"what": "pids", "got": " ".join(p for p in os.listdir("/proc") if p.isdigit())},
                attempt("agent environ", lambda: read(f"/proc/{agent}/environ")),
                attempt("token file", lambda: read(os.environ["token_file"])),
                attempt("state", lambda: os.listdir(os.path.join(work, "state"))),
                attempt("write work dir", lambda: write(os.path.join(work, "planted"))),
                attempt("write run folder", lambda: write(os.path.join(os.environ["HOME"], "mine"))),
                attempt("api", lambda: connect(os.environ["api_port"])),
                attempt("limits", lambda: read("/proc/self/limits")),
                attempt("data", lambda: sorted(os.listdir(data_directory))),
            ]
            print("PROBES " + json.dumps(found), flush=True)
            report(epoch=1, total_epochs=1, loss=0.5)

        def save(self):
            with open("model.txt", "w") as f:
                f.write("trained in the sandbox")
    """
)

WAITS = package(
    """
    import time
    from trainyard import report


    class Main:
        def train(self, data_directory):
            report(epoch=1, total_epochs=1000, loss=1.0)
            while True:
                time.sleep(0.1)

        def save(self):
            pass
    """
)


def _ensure_run_user() -> None:
    if not user_exists(RUN_USER):
        command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_USER]
        subprocess.run(command, check=True)


def _sandboxed(**extra: str) -> dict[str, str]:
    _ensure_run_user()
    return {
        "TRAINYARD_RUN_AS": RUN_USER,
        "TRAINYARD_SANDBOX": "bwrap",
        "TRAINYARD_ALLOW_UNSAFE_RUN_USER": "false",
        "TRAINYARD_RUN_MAX_PROCESSES": "4096",
        **extra,
    }


async def _probes(s: object, run_id: str) -> dict[str, dict[str, str]]:
    from tests.e2e.harness import Stack

    assert isinstance(s, Stack)
    page = ok(await s.admin.get(f"/projects/{PROJECT}/runs/{run_id}/logs"))
    for line in page["lines"]:
        if line["text"].startswith("PROBES "):
            return {item["what"]: item for item in json.loads(line["text"].removeprefix("PROBES "))}
    raise AssertionError(f"the package printed no findings: {page}")


async def test_a_sandboxed_package_trains_but_reaches_nothing_of_the_agent() -> None:
    async with stack() as s:
        token = s.token_file.read_text().strip()
        api_port = s.api_url.rsplit(":", 1)[1]
        agent = s.start_agent(
            drop=("TRAINYARD_AGENT_TOKEN_FILE",), TRAINYARD_AGENT_TOKEN=token, **_sandboxed()
        )
        await s.wait_polling()
        process = await s.deploy(
            PROBES,
            parameters={
                "work_dir": str(s.work_dir),
                "token_file": str(s.token_file),
                "agent_pid": agent.pid,
                "api_port": api_port,
            },
        )
        run = await s.start(process)
        await s.wait_succeeded(run["id"])
        found = await _probes(s, run["id"])

        everything = json.dumps(found)
        assert token not in everything and token.split("_", 2)[-1] not in everything
        assert found["uid"]["got"] not in ("0", str(os.geteuid()))
        # A pid namespace of its own: the sandbox's few processes, never the machine's.
        assert len(found["pids"]["got"].split()) < 10, found["pids"]
        assert "got" not in found["agent environ"], found["agent environ"]
        assert found["token file"].get("error"), found["token file"]
        assert found["state"].get("error"), found["state"]
        assert found["write work dir"].get("error"), found["write work dir"]
        assert not (s.work_dir / "planted").exists()
        assert found["write run folder"].get("got") == "written"
        assert found["api"].get("error"), found["api"]  # no network by default
        assert "Max processes             4096" in found["limits"]["got"], found["limits"]
        assert "got" in found["data"]
        # The run's telemetry and its new version went through as anywhere else.
        points = ok(await s.admin.get(f"/projects/{PROJECT}/runs/{run['id']}/metrics"))
        assert "loss" in json.dumps(points)
        versions = ok(await s.admin.get(f"/projects/{PROJECT}/packages/p1/versions"))
        assert [v["version"] for v in versions["items"]] == ["1.0", "1.1"]


async def test_a_sandboxed_run_stops_and_leaves_no_process() -> None:
    async with stack() as s:
        s.start_agent(**_sandboxed())
        await s.wait_polling()
        process = await s.deploy(WAITS)
        run = await s.start(process)
        deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
        metrics = f"/projects/{PROJECT}/runs/{run['id']}/metrics"
        while "loss" not in (await s.admin.get(metrics)).text:  # it trains, in the sandbox
            assert asyncio.get_running_loop().time() < deadline, (await s.run(run["id"]), s.logs())
            await asyncio.sleep(0.1)
        await s.stop(process)
        ended = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert ended["status"] == "stopped", ended
        # SIGTERM reached the runner inside the sandbox (bubblewrap forwards none): no SIGKILL needed.
        assert "still alive after the grace" not in s.logs()
        needle = str(run["id"]).encode()
        assert not [pid for pid, cmdline in command_lines() if needle in cmdline]


async def test_an_agent_whose_packages_could_never_start_refuses_to_start() -> None:
    """As root, a run user that cannot execute the agent's Python (under /root) and no sandbox: the
    agent says what to set and exits, instead of retrying every run until start_timeout."""
    _ensure_run_user()
    async with stack() as s:
        agent = s.start_agent(
            TRAINYARD_RUN_AS=RUN_USER,
            TRAINYARD_ALLOW_UNSAFE_RUN_USER="false",
            TRAINYARD_RUN_PYTHON=sys.executable,
        )
        assert agent.process is not None
        code = await asyncio.to_thread(agent.process.wait, WAIT_SECONDS)
        agent.expected_down = True
        assert code == 1, agent.output()
        assert f"the run user {RUN_USER} cannot run {sys.executable}" in agent.output()
        assert "TRAINYARD_RUN_PYTHON" in agent.output() and "TRAINYARD_SANDBOX=bwrap" in agent.output()


async def test_a_launch_that_cannot_work_ends_the_run_at_once() -> None:
    """The interpreter goes away after the agent started: the launch fails with ENOENT, which no retry
    heals, so the run ends failed with the cause, long before the API's start timeout."""
    folder = Path(tempfile.mkdtemp(prefix="trainyard-python-"))
    python = folder / "python3"
    python.symlink_to(sys.executable)
    try:
        async with stack() as s:
            s.start_agent(TRAINYARD_RUN_PYTHON=str(python))
            await s.wait_polling()
            python.unlink()
            process = await s.deploy(WAITS)
            run = await s.start(process)
            ended = await s.wait_run(run["id"], "failed", "stopped", "succeeded")
            assert (ended["status"], ended["reason_code"]) == ("failed", "machine_refused"), ended
            assert "could not be launched" in ended["detail"] and str(python) in ended["detail"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
