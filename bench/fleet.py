"""A fleet of agents against API replicas on one PostgreSQL: every agent's long-poll held, command
delivery under that load, each replica's CPU and memory, PostgreSQL connections, telemetry stored.

    .venv/bin/python bench/fleet.py                  # 1,000 agents, two replicas then one, 200 deliveries
    .venv/bin/python bench/fleet.py --quick          # 50 agents, 20 deliveries: for CI, it must keep working
    .venv/bin/python bench/fleet.py --agents 500 --replicas 2 --client httpx

For each topology (two replicas, then one beside it) the bench makes a scratch database on the test
PostgreSQL (`TRAINYARD_TEST_POSTGRES_URL`, else postgresql://postgres@127.0.0.1:5432/test), runs
`trainyard-api migrate` once, starts `trainyard-api serve` per replica (one uvicorn process each, one
shared data dir, `TRAINYARD_DB_POOL_SIZE` set explicitly: 8 by default, so at most 2 x 8 pooled + LISTEN
+ sweep claim = 18 connections a replica) and Debian's nginx in front of them (round-robin, the
upstream block of docs/deployment.md). Then, through the REST API as an admin would: a package, a
template, N machines (each gets its own agent token), a process for each machine that will run or take
a delivery.

Each simulated agent is one asyncio task in this process that does what agent/daemon.py does: `hello`,
then `GET /agent/commands?wait=30` again and again through nginx with its machine's token, on one
keep-alive connection of its own (its poll is its heartbeat: the API marks the machine seen). The first
poll's wait is drawn between 15 and 30 s, so that the fleet's polls end spread out, as agents started
at different times do, not in one wave. On a start it acks, and either reports `launched` and from then
on posts a telemetry batch of 50 points a second on a second connection (the `--telemetry-share` of
agents, 5 %), or reports `exited` at once (delivery targets). `--client raw` (the default) speaks
minimal HTTP/1.1 on asyncio streams; `--client httpx` shares one `httpx.AsyncClient` (its pool bounded
at N + 64 connections) among the agents.

Measured once every agent is held (the sum of `trainyard_long_polls_waiting` over the replicas' /metrics
reaches N), over a window of deliveries: a start of a random delivery target's process posted to a
random replica, timed from just before that call until the agent's poll returns that start (one at a
time, a short pause between; the start call's own time beside it); the replicas' CPU (psutil, user +
system over the window, in % of one core) and RSS (largest sample); `pg_stat_activity` rows for the
scratch database (largest sample, every 0.5 s; the bench's own connection is on another database) and
those backends' CPU; `metric_points` rows stored per second over the window; the held polls' smallest
sum while deliveries ran (a poll answered is re-sent at once, so a few may be in flight at any instant).
"""

import argparse
import asyncio
import contextlib
import io
import math
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import psutil
import psycopg
from common import api_command, free_port

from shared.protocol import MAX_POLL_WAIT_SECONDS, PackedPoints, TelemetryBatch

TOKEN = "bench-bootstrap-token-0123456789abcdef"
SECRET = "bench-secret-key-0123456789abcdefghijklmnop"
PG_ADMIN = os.environ.get("TRAINYARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PROJECT = "fleet"
WAIT = MAX_POLL_WAIT_SECONDS
BOUND_SECONDS = 120.0  # a bound on waiting for something to happen, never a figure
POINTS_PER_BATCH = 50  # a batch a second: what a run reporting a few series every step or so ships
SERIES = ("loss", "accuracy", "learning_rate", "grad_norm")
RAMP_BATCH = 250  # agents started before waiting for the replicas to hold their polls
DELIVERY_PAUSE = 0.2  # seconds between deliveries
MiB = 1024 * 1024
WAITING = re.compile(rb"^trainyard_long_polls_waiting (\S+)$", re.MULTILINE)
TRAIN_PY = (
    "class Main:\n    def train(self, data_directory):\n        pass\n\n    def save(self):\n        pass\n"
)
NGINX_CONF = """
{user}
worker_processes 1;
worker_rlimit_nofile {files};
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 100000;

    upstream trainyard {{
{servers}
        keepalive 32;
        keepalive_timeout 4s;  # below uvicorn's 5 s: nginx never reuses a connection uvicorn closed
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
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
        }}
    }}
}}
"""


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: below 100 values, p99 is the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def raise_open_files(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


async def until(check: Callable[[], Awaitable[bool]], what: str, bound: float = BOUND_SECONDS) -> None:
    deadline = time.monotonic() + bound
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {bound:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + BOUND_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def stop(process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    # kill: uvicorn's graceful shutdown would wait for every poll still held.
    (process.kill if kill else process.terminate)()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Replica:
    """`trainyard-api serve` on a free port."""

    def __init__(self, name: str, env: dict[str, str], root: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"replica-{name}.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [api_command(), "serve", "--port", str(self.port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        wait_ready(self.process, f"{self.url}/readyz", self.log)
        self.psutil = psutil.Process(self.process.pid)

    async def waiting(self, client: httpx.AsyncClient) -> int:
        found = WAITING.search((await client.get(f"{self.url}/metrics")).content)
        return int(float(found.group(1))) if found else 0


class Nginx:
    """Debian's nginx in the foreground on a free port, round-robin over the replicas."""

    def __init__(self, root: Path, replicas: list[Replica], agents: int) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise SystemExit("nginx is not installed: apt-get install nginx")
        root.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(f"        server 127.0.0.1:{r.port};" for r in replicas)
        connections = 4 * agents + 1024  # client and upstream side of each poll and telemetry post
        conf = root / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                user="user root;" if os.geteuid() == 0 else "",
                files=2 * connections,
                root=root,
                connections=connections,
                servers=servers,
                port=self.port,
            )
        )
        self.log = root / "error.log"
        with (root / "stdout.log").open("wb") as sink:
            self.process = subprocess.Popen(
                [binary, "-p", str(root), "-c", str(conf), "-e", str(self.log), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        wait_ready(self.process, f"{self.url}/healthz", self.log)

    def cpu_seconds(self) -> float:
        total = 0.0
        with contextlib.suppress(psutil.Error):
            master = psutil.Process(self.process.pid)
            for p in [master, *master.children()]:
                times = p.cpu_times()
                total += times.user + times.system
        return total


# -- the agents' HTTP ----------------------------------------------------------------------------


class Connection(Protocol):
    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]: ...

    async def close(self) -> None: ...


class RawConnection:
    """One keep-alive HTTP/1.1 connection on asyncio streams, opened again when the server closes it."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.streams is None:
                self.streams = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = self.streams
            extra = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body else ""
            if body is None and method == "POST":
                extra = "Content-Length: 0\r\n"
            writer.write(f"{method} {path} HTTP/1.1\r\n{self.head}{extra}\r\n".encode() + (body or b""))
            try:
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except (OSError, asyncio.IncompleteReadError):
                await self.close()  # a keep-alive connection the server had closed: once more
                if attempt == 2:
                    raise
                continue
            status = int(head.split(b" ", 2)[1])
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if length:
                content = await reader.readexactly(int(length.group(1)))
            elif re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head):
                content = b""
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    content += (await reader.readexactly(size + 2))[:-2]
                await reader.readuntil(b"\r\n")
            else:
                content = b""
            if re.search(rb"(?i)\r\nconnection: *close", head):
                await self.close()
            return status, content
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


class HttpxConnection:
    """A request through a shared `httpx.AsyncClient` (its pool bounded), with this machine's token."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {**self.headers, "Content-Type": "application/json"} if body else self.headers
        response = await self.client.request(method, path, content=body, headers=headers)
        return response.status_code, response.content

    async def close(self) -> None:
        pass


# -- the fleet ------------------------------------------------------------------------------------


@dataclass
class Machine:
    name: str
    token: str
    process: str | None = None  # the path of its process, for the ones that run or take deliveries
    telemetry: bool = False
    started: asyncio.Future[float] | None = None  # set by the bench before a start, answered by the agent
    polls: int = 0
    sending_since: float = 0.0  # when its current poll was sent


@dataclass
class Fleet:
    machines: list[Machine]
    connect: Callable[[str], Connection]
    stopping: bool = False
    errors: list[str] = field(default_factory=list)
    batches: int = 0

    async def agent(self, machine: Machine) -> None:
        conn = self.connect(machine.token)
        telemetry: asyncio.Task[None] | None = None
        try:
            hello = b'{"agent_version": "fleet-bench", "hostname": "' + machine.name.encode() + b'"}'
            status, content = await conn.request("POST", "/api/v1/agent/hello", hello)
            if status != 200:
                self.errors.append(f"{machine.name} hello: HTTP {status} {content[:200]!r}")
                return
            # A fleet's polls end at all moments, not in one wave: the first poll's wait is drawn.
            wait = random.Random(machine.name).randint(WAIT // 2, WAIT)
            while not self.stopping:
                machine.sending_since = time.monotonic()
                status, content = await conn.request("GET", f"/api/v1/agent/commands?wait={wait}")
                wait = WAIT
                answered = time.perf_counter()
                machine.polls += 1
                machine.sending_since = math.inf  # busy with what it brought: not a delivery target now
                if status != 200:
                    self.errors.append(f"{machine.name} poll: HTTP {status} {content[:200]!r}")
                    await asyncio.sleep(1.0)
                    continue
                for command in httpx.Response(200, content=content).json():
                    if machine.started is not None and not machine.started.done():
                        machine.started.set_result(answered)
                    status, content = await conn.request(
                        "POST", f"/api/v1/agent/commands/{command['id']}/ack"
                    )
                    if status != 200 or command["kind"] != "start_run":
                        self.errors.append(f"{machine.name} {command['kind']} ack: HTTP {status}")
                        continue
                    events = f"/api/v1/agent/runs/{command['run_id']}/events"
                    if machine.telemetry:
                        await conn.request("POST", events, b'{"type": "launched"}')
                        telemetry = asyncio.create_task(self.report(machine, command["run_id"]))
                    else:
                        exited = b'{"type": "exited", "exit_code": 1, "error_tail": "fleet bench"}'
                        status, content = await conn.request("POST", events, exited)
                        if status != 200:
                            self.errors.append(f"{machine.name} exited: HTTP {status} {content[:200]!r}")
        except Exception as error:  # any failure of an agent fails the bench, loudly
            if not self.stopping:
                self.errors.append(f"{machine.name}: {error!r}")
        finally:
            if telemetry is not None:
                telemetry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await telemetry
            await conn.close()

    async def report(self, machine: Machine, run_id: str) -> None:
        """A batch of 50 points a second on a connection of its own, as the agent's shipper does."""
        conn = self.connect(machine.token)
        rng = random.Random(machine.name)
        step = 0
        try:
            for seq in range(1, 1 << 30):
                began = time.monotonic()
                series = [i % len(SERIES) for i in range(POINTS_PER_BATCH)]
                steps = [float(step + i // len(SERIES)) for i in range(POINTS_PER_BATCH)]
                values = [rng.random() for _ in range(POINTS_PER_BATCH)]
                now = time.time()
                packed = PackedPoints.pack(series, steps, values, [now] * POINTS_PER_BATCH)
                batch = TelemetryBatch(seq=seq, names=list(SERIES), packed=packed)
                body = batch.model_dump_json(exclude_defaults=True).encode()
                status, content = await conn.request("POST", f"/api/v1/agent/runs/{run_id}/telemetry", body)
                if status != 200:
                    self.errors.append(f"{machine.name} telemetry: HTTP {status} {content[:200]!r}")
                    return
                self.batches += 1
                step += POINTS_PER_BATCH // len(SERIES)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
        except Exception as error:
            if not self.stopping:
                self.errors.append(f"{machine.name} telemetry: {error!r}")
        finally:
            await conn.close()


# -- one topology ---------------------------------------------------------------------------------


@dataclass
class Figures:
    replicas: int
    agents: int
    client: str
    pool_size: int
    ramp_seconds: float = 0.0
    held_max: int = 0
    held_min_window: int = 0
    delivered: list[float] = field(default_factory=list)
    start_calls: list[float] = field(default_factory=list)
    window_seconds: float = 0.0
    cpu_percent: dict[str, float] = field(default_factory=dict)  # % of one core over the window
    rss: dict[str, int] = field(default_factory=dict)
    pg_connections_max: int = 0
    points_per_second: float = 0.0
    points_offered: float = 0.0
    errors: list[str] = field(default_factory=list)


async def setup(admin: httpx.AsyncClient, agents: int, telemetry: int, targets: int) -> list[Machine]:
    for path, body in (("/model-types", {"name": "classifier"}), ("/projects", {"name": PROJECT})):
        (await admin.post(path, json=body)).raise_for_status()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as folder:
        folder.writestr("train.py", TRAIN_PY)
    files = {"file": ("fleet.zip", archive.getvalue(), "application/zip")}
    (await admin.post(f"/projects/{PROJECT}/packages/fleet/versions", files=files)).raise_for_status()
    template = {"name": "fleet", "model_type": "classifier", "base_package": "fleet"}
    (await admin.post(f"/projects/{PROJECT}/templates", json=template)).raise_for_status()
    gate = asyncio.Semaphore(8)

    async def register(i: int) -> Machine:
        async with gate:
            name = f"m{i:05d}"
            created = await admin.post(
                "/machines", json={"name": name, "address": f"10.{i // 250}.{i % 250}.1"}
            )
            created.raise_for_status()
            machine = Machine(name, str(created.json()["agent_token"]), telemetry=i < telemetry)
            if i < telemetry + targets:
                made = await admin.post(
                    f"/projects/{PROJECT}/templates/fleet/processes", json={"machine": name}
                )
                made.raise_for_status()
                machine.process = f"/projects/{PROJECT}/processes/{made.json()['id']}"
            return machine

    return list(await asyncio.gather(*(register(i) for i in range(agents))))


async def held(replicas: list[Replica], client: httpx.AsyncClient) -> int:
    return sum(await asyncio.gather(*(r.waiting(client) for r in replicas)))


def make_connect(
    kind: str, port: int, agents: int
) -> tuple[Callable[[str], Connection], httpx.AsyncClient | None]:
    if kind == "raw":
        return (lambda token: RawConnection(port, token)), None
    limits = httpx.Limits(max_connections=agents + 64, max_keepalive_connections=agents + 64)
    shared = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=httpx.Timeout(10, read=WAIT + 30)
    )
    return (lambda token: HttpxConnection(shared, token)), shared


def topology(root: Path, args: argparse.Namespace, replicas_count: int) -> Figures:
    """A scratch database, its replicas and nginx: started, measured, stopped and dropped."""
    figures = Figures(replicas_count, args.agents, args.client, args.pool_size)
    database = f"trainyard_fleet_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as pg:
        pg.execute(f'CREATE DATABASE "{database}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{database}"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(
        TRAINYARD_DATA_DIR=str(root / "data"),
        TRAINYARD_DATABASE_URL=url,
        TRAINYARD_SECRET_KEY=SECRET,
        TRAINYARD_BOOTSTRAP_TOKEN=TOKEN,
        TRAINYARD_DB_POOL_SIZE=str(args.pool_size),
    )
    replicas: list[Replica] = []
    nginx: Nginx | None = None
    try:
        subprocess.run([api_command(), "migrate"], env=env, check=True, capture_output=True)
        for name in "ab"[:replicas_count]:
            replicas.append(Replica(name, env, root))
        nginx = Nginx(root / "nginx", replicas, args.agents)
        asyncio.run(measure(figures, args, replicas, nginx, database, url))
    finally:
        if nginx is not None:
            stop(nginx.process)
        for replica in replicas:
            stop(replica.process, kill=True)
        with psycopg.connect(PG_ADMIN, autocommit=True) as pg_admin:
            pg_admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return figures


async def measure(
    figures: Figures,
    args: argparse.Namespace,
    replicas: list[Replica],
    nginx: Nginx,
    database: str,
    url: str,
) -> None:
    telemetry = max(1, round(args.agents * args.telemetry_share)) if args.telemetry_share > 0 else 0
    targets = min(100, args.agents - telemetry)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    admins = [
        httpx.AsyncClient(base_url=f"{r.url}/api/v1", headers=headers, timeout=BOUND_SECONDS)
        for r in replicas
    ]
    monitor = httpx.AsyncClient(timeout=BOUND_SECONDS)
    pg = await psycopg.AsyncConnection.connect(PG_ADMIN, autocommit=True)
    fleet: Fleet | None = None
    tasks: list[asyncio.Task[None]] = []
    shared: httpx.AsyncClient | None = None
    try:
        machines = await setup(admins[0], args.agents, telemetry, targets)
        connect, shared = make_connect(args.client, nginx.port, args.agents)
        fleet = Fleet(machines, connect)
        running = fleet

        # Every agent polling, in batches the server takes as fast as it can.
        began = time.monotonic()
        for start in range(0, len(machines), RAMP_BATCH):
            for machine in machines[start : start + RAMP_BATCH]:
                tasks.append(asyncio.create_task(running.agent(machine)))

            async def caught_up() -> bool:
                figures.held_max = max(figures.held_max, await held(replicas, monitor))
                if running.errors:
                    raise SystemExit(f"agents failed: {running.errors[:5]}")
                return figures.held_max >= len(tasks)

            await until(caught_up, f"{len(tasks)} polls to be held")
        figures.ramp_seconds = time.monotonic() - began

        # The runs that report telemetry: started through the replicas in turn, delivered, launched.
        reporting = [m for m in machines if m.telemetry]
        for i, machine in enumerate(reporting):
            (await admins[i % len(admins)].post(f"{machine.process}/start")).raise_for_status()

        async def reporting_all() -> bool:
            if running.errors:
                raise SystemExit(f"agents failed: {running.errors[:5]}")
            return running.batches >= len(reporting)

        await until(reporting_all, "every reporting run's first telemetry batch")
        figures.held_max = 0
        await until(caught_up, "every poll to be held again")

        # The window: deliveries one at a time while sampling.
        samples: dict[str, list[int]] = {"held": [], "pg": []}
        rss: dict[str, list[int]] = {r.name: [] for r in replicas}
        sampling = True

        backends: dict[int, list[float]] = {}  # pid: [its CPU seconds when first seen, when last seen]

        async def connections(first: bool = False) -> int:
            """The scratch database's backends now; their CPU noted (a backend born in the window from 0)."""
            query = "SELECT pid FROM pg_stat_activity WHERE datname = %s"
            pids = [int(row[0]) for row in await (await pg.execute(query, (database,))).fetchall()]
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    seconds = sum(psutil.Process(pid).cpu_times()[:2])
                    backends.setdefault(pid, [seconds if first else 0.0, seconds])[1] = seconds
            return len(pids)

        async def sample() -> None:
            while sampling:
                samples["held"].append(await held(replicas, monitor))
                samples["pg"].append(await connections())
                for r in replicas:
                    rss[r.name].append(int(r.psutil.memory_info().rss))
                await asyncio.sleep(0.5)

        async def points() -> int:
            async with await psycopg.AsyncConnection.connect(url) as db:
                row = await (await db.execute("SELECT count(*) FROM metric_points")).fetchone()
                return int(row[0]) if row else 0

        def cpu() -> dict[str, float]:
            taken = {r.name: sum(r.psutil.cpu_times()[:2]) for r in replicas}
            taken["nginx"] = nginx.cpu_seconds() if nginx else 0.0
            taken["bench (agents)"] = sum(psutil.Process().cpu_times()[:2])
            return taken

        points_before, batches_before, cpu_before = await points(), running.batches, cpu()
        await connections(first=True)
        window_began = time.monotonic()
        sampler = asyncio.create_task(sample())
        candidates = [m for m in machines if m.process and not m.telemetry]
        rng = random.Random(7)
        for _ in range(args.deliveries):
            # A machine whose poll has been out a while, so the replica holds it: a fleet's normal state.
            ready = [m for m in candidates if time.monotonic() - m.sending_since > 0.5 and m.started is None]
            machine = rng.choice(ready or candidates)
            admin = rng.choice(admins)
            machine.started = asyncio.get_running_loop().create_future()
            asked = time.perf_counter()
            call = await admin.post(f"{machine.process}/start")
            figures.start_calls.append(time.perf_counter() - asked)
            call.raise_for_status()
            answered = await asyncio.wait_for(machine.started, BOUND_SECONDS)
            figures.delivered.append(answered - asked)
            machine.started = None
            if running.errors:
                raise SystemExit(f"agents failed: {running.errors[:5]}")
            await asyncio.sleep(DELIVERY_PAUSE)
        figures.window_seconds = time.monotonic() - window_began
        cpu_after, batches_after, points_after = cpu(), running.batches, await points()
        sampling = False
        await sampler
        await connections()
        cpu_before["postgres (its backends)"] = 0.0
        cpu_after["postgres (its backends)"] = sum(last - first for first, last in backends.values())
        figures.cpu_percent = {
            k: 100 * (cpu_after[k] - cpu_before[k]) / figures.window_seconds for k in cpu_after
        }
        figures.rss = {k: max(v) for k, v in rss.items()}
        figures.pg_connections_max = max(samples["pg"])
        figures.held_min_window = min(samples["held"])
        figures.points_per_second = (points_after - points_before) / figures.window_seconds
        figures.points_offered = (batches_after - batches_before) * POINTS_PER_BATCH / figures.window_seconds
        figures.errors = list(running.errors)
    finally:
        if fleet is not None:
            fleet.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if shared is not None:
            await shared.aclose()
        await pg.close()
        await monitor.aclose()
        for admin in admins:
            await admin.aclose()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(runs: list[Figures]) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    first = runs[0]
    python = sys.version.split()[0]
    print(
        f"\n{os.cpu_count()} CPUs, load average {load}, Python {python}; {first.agents:,} agents"
        f" ({first.client} HTTP) through nginx, TRAINYARD_DB_POOL_SIZE={first.pool_size} a replica;"
        " p99 by nearest rank\n"
    )
    names = [f"{f.replicas} replica{'s' if f.replicas > 1 else ''}" for f in runs]
    rows: list[tuple[str, list[str], str]] = [
        (
            "polls held: most seen (all agents polling)",
            [f"{f.held_max:,} / {f.agents:,}" for f in runs],
            "all",
        ),
        ("polls held: fewest while deliveries ran", [f"{f.held_min_window:,}" for f in runs], ""),
        ("time to get every poll held (s)", [f"{f.ramp_seconds:.1f}" for f in runs], ""),
        (
            "command delivery: start call -> that agent's poll answered, p50",
            [ms(statistics.median(f.delivered)) for f in runs],
            "",
        ),
        ("command delivery p99", [ms(percentile(f.delivered, 99)) for f in runs], "<= 100 ms"),
        (
            "the start call alone (admin POST .../start to a replica), p50 / p99",
            [f"{ms(statistics.median(f.start_calls))} / {ms(percentile(f.start_calls, 99))}" for f in runs],
            "",
        ),
        ("deliveries / window (s)", [f"{len(f.delivered)} / {f.window_seconds:.0f}" for f in runs], ""),
    ]
    for name in ("a", "b"):
        rows.append(
            (
                f"replica {name}: CPU (% of one core) / RSS (MiB)",
                [
                    f"{f.cpu_percent[name]:.0f} / {f.rss[name] / MiB:.0f}" if name in f.rss else "-"
                    for f in runs
                ],
                "",
            )
        )
    rows += [
        ("nginx CPU (% of one core)", [f"{f.cpu_percent['nginx']:.0f}" for f in runs], ""),
        (
            "the bench's agents CPU (% of one core)",
            [f"{f.cpu_percent['bench (agents)']:.0f}" for f in runs],
            "",
        ),
        (
            "PostgreSQL: the database's backends' CPU (% of one core)",
            [f"{f.cpu_percent['postgres (its backends)']:.0f}" for f in runs],
            "",
        ),
        (
            "PostgreSQL connections to the database, most seen",
            [str(f.pg_connections_max) for f in runs],
            "<= 40",
        ),
        (
            "telemetry points/s stored (posted)",
            [f"{f.points_per_second:,.0f} ({f.points_offered:,.0f})" for f in runs],
            "",
        ),
        ("agents' errors", [str(len(f.errors)) for f in runs], "0"),
    ]
    print(f"| measure | {' | '.join(names)} | target |")
    print(f"| --- | {' | '.join('---:' for _ in names)} | --- |")
    for what, cells, target in rows:
        print(f"| {what} | {' | '.join(cells)} | {target} |")
    for f in runs:
        for error in f.errors[:5]:
            print(f"{f.replicas} replica(s): {error}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="50 agents, 20 deliveries: for CI")
    parser.add_argument("--agents", type=int, help="simulated agents (default 1,000)")
    parser.add_argument("--deliveries", type=int, help="starts timed to their agent (default 200)")
    parser.add_argument("--replicas", type=int, choices=(1, 2), action="append", help="default: 2, then 1")
    parser.add_argument("--telemetry-share", type=float, default=0.05, help="agents running a run (0.05)")
    parser.add_argument("--pool-size", type=int, default=8, help="TRAINYARD_DB_POOL_SIZE per replica (8)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="the agents' HTTP")
    args = parser.parse_args()
    args.agents = args.agents or (50 if args.quick else 1_000)
    args.deliveries = args.deliveries or (20 if args.quick else 200)
    limit = raise_open_files(8 * args.agents + 4096)  # agents' sockets, nginx's (inherited), replicas'
    if limit < 4 * args.agents + 256:
        raise SystemExit(f"RLIMIT_NOFILE ({limit}) is too low for {args.agents} agents")
    runs = []
    with tempfile.TemporaryDirectory(prefix="trainyard-fleet-") as scratch:
        for count in args.replicas or [2, 1]:
            runs.append(topology(Path(scratch) / f"replicas-{count}", args, count))
    report(runs)
    if any(f.errors for f in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
