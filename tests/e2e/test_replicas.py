"""Two API replicas on one PostgreSQL behind a real nginx (docs/deployment.md): what people and agents
send to one replica reaches what waits on the other, telemetry split over both lands once, one replica
sweeps, and a replica SIGKILLed mid-run loses nothing while the agent carries on through nginx.

Two `trainyard-api serve` processes share a scratch database and a data dir (the blob store, until S3);
nginx (Debian's, started here with a config of its own on a free port) balances them round-robin. The
real agent talks to nginx only; a second machine is driven over the agent protocol directly, its poll
pinned on replica B, so that "a start made through A reaches a poll held on B" holds by construction,
not by luck of the balancer. Every wait is a generous bound, never an assertion about speed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.test_telemetry import stored
from tests.api.test_cli import Server, _free_port, http, serving, trainyard_api
from tests.api.world import ok
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.e2e.harness import (
    MACHINE,
    PROJECT,
    WAIT_SECONDS,
    Stack,
    _kill_leftover_runners,
    package,
    public_tempdir,
    wait_for_file,
)

pytestmark = pytest.mark.postgres

POLL_WAIT_SECONDS = 30  # the protocol's longest: a poll that answers with a command was woken
START_DELAY_SECONDS = 0.5  # lets a poll reach its replica before the action is sent; not a timing check
SWEEPS = "this API process sweeps now"
STEPS = 400  # points the package reports, half before the kill and half after
REMOTE = "remote"

NGINX_CONF = """
{user}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format replicas '$request_method $uri $status $upstream_addr';
    access_log {root}/access.log replicas;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;

    upstream trainyard {{
        server {a} max_fails=1 fail_timeout=10s;
        server {b} max_fails=1 fail_timeout=10s;
        keepalive 16;
        keepalive_timeout 4s;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_read_timeout 90s;
        location / {{
            proxy_pass http://trainyard;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""

# Reports loss 1/(s+1) at each step s; stops halfway until the test writes `go`.
REPORTS_AROUND_A_KILL = package(
    f"""
    import os, time
    from trainyard import report
    from e2e_helpers import mark, wait_for


    class Main:
        def train(self, data_directory):
            for step in range({STEPS}):
                if step == {STEPS // 2}:
                    mark("half")
                    wait_for("go")
                report(step=step, total_steps={STEPS}, loss=1 / (step + 1))
                if step % 10 == 0:
                    print(f"step {{step}}", flush=True)
                time.sleep(0.002)

        def save(self):
            pass
    """
)
RUNS_UNTIL_STOPPED = package(
    """
    from e2e_helpers import mark, wait_for


    class Main:
        def train(self, data_directory):
            mark("training")
            wait_for("never", limit=600)

        def save(self):
            pass
    """
)


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    root: Path
    url: str

    def output(self) -> str:
        log = self.root / "error.log"
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def _upstream_counts(nginx: Nginx, path_pattern: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in (nginx.root / "access.log").read_text().splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and re.search(path_pattern, parts[1]):
            for address in re.findall(r"127\.0\.0\.1:\d+", parts[3]):
                counts[address] += 1
    return counts


@contextmanager
def nginx_in_front(root: Path, upstreams: list[Server]) -> Iterator[Nginx]:
    """nginx on a free loopback port, round-robin over `upstreams`, in the foreground; stopped after."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if binary is None:
        pytest.fail("nginx is not installed: `apt-get install nginx` (.ci/run installs it when missing)")
    root.mkdir(parents=True)
    port = _free_port()
    a, b = (server.base_url.removeprefix("http://") for server in upstreams)
    # As root the master process would hand the workers to `nobody`, who cannot write this folder.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, root=root, a=a, b=b, port=port))
    with (root / "stdout.log").open("wb") as sink:
        process = subprocess.Popen(
            [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log"), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    nginx = Nginx(process, root, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            assert process.poll() is None, f"nginx exited ({process.returncode}):\n{nginx.output()}"
            try:
                if httpx.get(f"{nginx.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"nginx never answered:\n{nginx.output()}"
            time.sleep(0.1)
        yield nginx
    finally:
        process.terminate()  # SIGTERM: nginx's fast shutdown
        try:
            process.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Replicas:
    a: Server
    b: Server
    nginx: Nginx
    stack: Stack
    via_a: httpx.AsyncClient
    via_b: httpx.AsyncClient

    def sweepers(self) -> list[Server]:
        return [server for server in (self.a, self.b) if SWEEPS in server.output()]

    def logs(self) -> str:
        return (
            f"--- replica a:\n{self.a.output()[-4000:]}\n--- replica b:\n{self.b.output()[-4000:]}\n"
            f"--- nginx:\n{self.nginx.output()}\n{self.stack.logs()}"
        )


@asynccontextmanager
async def replicas(database_url: str) -> AsyncIterator[Replicas]:
    """Migrated PostgreSQL, replicas a and b on one data dir, nginx in front, an admin client through
    nginx (the stack's) and one pinned on each replica; machine `local` registered, no agent yet."""
    root = public_tempdir("trainyard-replicas-")
    settings = {
        "database_url": database_url,
        "secret_key": SECRET_KEY,
        "bootstrap_token": ADMIN_TOKEN,
        "sweep_interval": "0.2",
        "start_timeout": "120",
    }
    try:
        migrated = trainyard_api(root, "migrate", **settings)
        assert migrated.returncode == 0, migrated.stderr
        # One data dir (the blob store, until S3): what one replica stores, the other serves. `serving`
        # gives each process its folder's `data`.
        (root / "data").mkdir(mode=0o700, exist_ok=True)
        for name in ("a", "b"):
            (root / name).mkdir()
            (root / name / "data").symlink_to(root / "data", target_is_directory=True)
        async with AsyncExitStack() as stack:
            a = stack.enter_context(serving(root / "a", **settings))
            b = stack.enter_context(serving(root / "b", **settings))
            nginx = stack.enter_context(nginx_in_front(root / "nginx", [a, b]))
            admin = await stack.enter_async_context(http(f"{nginx.url}/api/v1", ADMIN_TOKEN))
            via_a = await stack.enter_async_context(http(f"{a.base_url}/api/v1", ADMIN_TOKEN))
            via_b = await stack.enter_async_context(http(f"{b.base_url}/api/v1", ADMIN_TOKEN))
            ok(await admin.post("/model-types", json={"name": "classifier"}), 201)
            ok(await admin.post("/projects", json={"name": PROJECT}), 201)
            fields = {"name": MACHINE, "address": "127.0.0.1", "capacity": 20}
            machine = ok(await admin.post("/machines", json=fields), 201)
            token_file = root / "agent-token"
            token_file.write_text(machine["agent_token"] + "\n")
            os.chmod(token_file, 0o600)
            work_dir = root / "agent"
            work_dir.mkdir(mode=0o755)
            marks_root = root / "marks"
            marks_root.mkdir(mode=0o777)
            os.chmod(marks_root, 0o777)
            the_stack = Stack(a, admin, root, work_dir, marks_root, token_file)
            try:
                yield Replicas(a, b, nginx, the_stack, via_a, via_b)
            finally:
                for agent in the_stack.agents:
                    agent.stop()
                _kill_leftover_runners(work_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _held_poll_gets(agent: httpx.AsyncClient, action: Any) -> list[dict[str, Any]]:
    """Hold a poll, then do `action` elsewhere; the commands the poll was woken with, acknowledged."""
    poll = asyncio.create_task(agent.get("/commands", params={"wait": POLL_WAIT_SECONDS}))
    await asyncio.sleep(START_DELAY_SECONDS)
    assert not poll.done(), f"the poll answered before anything happened: {(await poll).text}"
    await action()
    commands: list[dict[str, Any]] = ok(await poll)
    for command in commands:
        ok(await agent.post(f"/commands/{command['id']}/ack"))
    return commands


async def test_actions_and_telemetry_cross_replicas(scratch_postgres: str) -> None:
    """A start and a stop made through replica A reach a poll held on B; telemetry batches alternating
    between A and B, each also retried on the other, are stored once and in order."""
    async with replicas(scratch_postgres) as r:
        fields = {"name": REMOTE, "address": "10.0.3.17"}
        token = ok(await r.stack.admin.post("/machines", json=fields), 201)["agent_token"]
        ok(
            await r.via_b.post(
                f"/projects/{PROJECT}/templates", json={"name": "t", "model_type": "classifier"}
            ),
            201,
        )
        created = await r.via_a.post(f"/projects/{PROJECT}/templates/t/processes", json={"machine": REMOTE})
        process = f"/projects/{PROJECT}/processes/{ok(created, 201)['id']}"
        async with (
            http(f"{r.a.base_url}/api/v1/agent", token) as agent_a,
            http(f"{r.b.base_url}/api/v1/agent", token) as agent_b,
        ):
            started: dict[str, Any] = {}

            async def start() -> None:
                started.update(ok(await r.via_a.post(f"{process}/start"), 201)["latest_run"])

            commands = await _held_poll_gets(agent_b, start)
            assert [(c["kind"], c["run_id"]) for c in commands] == [("start_run", started["id"])]
            run_id = started["id"]
            ok(await agent_a.post(f"/runs/{run_id}/events", json={"type": "launched"}))

            # Batches 1..20 alternate between the replicas, and each is sent again to the other (an
            # agent's retry after a lost answer, landing on the other replica behind the balancer).
            for seq in range(1, 21):
                batch = {
                    "seq": seq,
                    "names": ["loss"],
                    "points": {"series": [0], "step": [seq], "value": [1 / seq], "time": [time.time()]},
                    "logs": {"stream": ["stdout"], "time": [time.time()], "text": [f"batch {seq}"]},
                }
                first, again = (agent_a, agent_b) if seq % 2 else (agent_b, agent_a)
                assert ok(await first.post(f"/runs/{run_id}/telemetry", json=batch))["acked_through"] == seq
                assert ok(await again.post(f"/runs/{run_id}/telemetry", json=batch))["acked_through"] == seq

            chart, lines = await stored(r.nginx.url, PROJECT, run_id)
            assert chart["series"]["loss"] == [(seq, 1 / seq) for seq in range(1, 21)]
            assert lines == [f"batch {seq}" for seq in range(1, 21)]

            async def stop() -> None:
                ok(await r.via_a.post(f"{process}/stop"), 202)

            commands = await _held_poll_gets(agent_b, stop)
            assert [(c["kind"], c["run_id"]) for c in commands] == [("stop_run", run_id)]
        assert len(r.sweepers()) == 1, r.logs()
        for server in (r.a, r.b):
            assert "Traceback" not in server.output(), r.logs()


async def test_the_real_agent_through_nginx_survives_a_replica_killed_mid_run(scratch_postgres: str) -> None:
    """The agent knows nginx only. A stop made through B reaches it; then, mid-run, the replica that
    sweeps is SIGKILLed: the run goes on through the other, every point lands once, the run succeeds
    once with its new version, and the other replica takes the sweeps over."""
    async with replicas(scratch_postgres) as r:
        s = r.stack
        s.start_agent(TRAINYARD_API_URL=r.nginx.url)
        await s.wait_polling()

        stoppable_marks = s.marks("stoppable")
        stoppable = await s.deploy(RUNS_UNTIL_STOPPED, marks=stoppable_marks)
        first = ok(await r.via_a.post(f"{stoppable}/start"), 201)["latest_run"]
        await wait_for_file(stoppable_marks / "training", s)
        ok(await r.via_b.post(f"{stoppable}/stop"), 202)
        stopped = await s.wait_run(first["id"], "stopped", "failed", "succeeded")
        assert (stopped["status"], stopped["reason_code"]) == ("stopped", "user_stop"), stopped

        marks = s.marks("kill")
        process = await s.deploy(REPORTS_AROUND_A_KILL, marks=marks)
        run = ok(await r.via_b.post(f"{process}/start"), 201)["latest_run"]
        await wait_for_file(marks / "half", s)
        served = _upstream_counts(r.nginx, r"^/api/v1/agent/")
        assert len(served) == 2, f"the agent's requests went to one replica only: {served}"

        (sweeper,) = r.sweepers()
        survivor = r.b if sweeper is r.a else r.a
        sweeper.process.kill()  # SIGKILL: no shutdown, its claim and its held polls die with it
        sweeper.process.wait(timeout=WAIT_SECONDS)
        (marks / "go").write_text("")

        done = await s.wait_succeeded(run["id"])
        assert done["status"] == "succeeded"
        chart, _lines = await stored(survivor.base_url, PROJECT, run["id"])
        assert chart["series"]["loss"] == [(step, 1 / (step + 1)) for step in range(STEPS)]
        events = ok(
            await r.stack.admin.get(f"/projects/{PROJECT}/runs/{run['id']}/events", params={"limit": 200})
        )
        assert [e["to_status"] for e in events["items"] if e["kind"] == "run_status"].count("succeeded") == 1
        versions = ok(await s.admin.get(f"/projects/{PROJECT}/packages/p2/versions"))
        assert sorted(v["version"] for v in versions["items"]) == ["1.0", "1.1"]

        deadline = time.monotonic() + WAIT_SECONDS
        while SWEEPS not in survivor.output():
            assert time.monotonic() < deadline, f"the survivor never took the sweeps over\n{r.logs()}"
            await asyncio.sleep(0.1)
        assert "Traceback" not in survivor.output(), r.logs()
