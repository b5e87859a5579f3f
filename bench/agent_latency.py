"""The agent's latencies and the API's idle long-polls: how fast a start reaches the agent and `train()`,
how fast a stop reaches the package as SIGTERM, and how many held polls one API process keeps, in how
much memory. One run, one API, loopback, one table.

    .venv/bin/python bench/agent_latency.py            # 200 deliveries, 30 starts/stops, 10,000 polls
    .venv/bin/python bench/agent_latency.py --quick    # 20, 5, 500: for CI, it must keep working
    .venv/bin/python bench/agent_latency.py --repetitions 100 --polls 5000 --machines 1

It starts the real API (`trainyard-api migrate`, then `serve` on a free port, SQLite in a temporary
folder) and measures, in this order:

- round trips: GET /healthz (the limit printed beside delivery) and an agent's poll with `wait=0`.
- delivery: the bench holds `GET /agent/commands?wait=30` as a machine's agent (httpx); once the API
  says it holds it (`trainyard_long_polls_waiting` on /metrics), it posts start as admin and times from
  just before that call to the poll's answer carrying the command; then it acks and reports `exited`.
- start and stop: the real agent (`python -m agent.cli run`) and a package whose `train()` writes
  `time.time()` to a file as it is entered and whose SIGTERM handler writes it to another; the bench
  reads the same clock just before the start call and just before the stop call.
- the idle agent: its RSS after polling a few seconds, and whether torch is in its /proc/<pid>/maps.
- idle polls: up to N polls held at once, each on its own connection (raw asyncio streams, a minimal
  HTTP/1.1 GET), M machines' tokens in turn, sent in batches as fast as the server takes them; its
  RSS before and once it counts them all held (or as many as it got to before the first polls' wait
  ends), and how many were answered before their wait (none should be). The limit beside it: the same
  polls against a bare FastAPI long-poll under the same uvicorn.
"""

import argparse
import asyncio
import contextlib
import io
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import api_command, free_port

from shared.protocol import MAX_POLL_WAIT_SECONDS

TOKEN = "bench-bootstrap-token-0123456789abcdef"
PROJECT = "bench"
WAIT = MAX_POLL_WAIT_SECONDS
BOUND_SECONDS = 60.0  # a bound on waiting for a process, never a figure
ENDED = {"succeeded", "failed", "stopped"}
MiB = 1024 * 1024
POLL_BATCH = 250  # polls sent before waiting for the server to hold them: well under uvicorn's backlog
WAITING = re.compile(rb"^trainyard_long_polls_waiting (\S+)$", re.MULTILINE)
REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = """\
import os
import signal
import sys
import time


def mark(name, at):
    path = os.path.join(os.environ["marks"], name)
    with open(path + ".tmp", "w") as file:
        file.write(repr(at))
    os.replace(path + ".tmp", path)


def on_sigterm(signum, frame):
    mark("sigterm", time.time())
    sys.exit(0)


class Main:
    def train(self, data_directory):
        entered = time.time()
        signal.signal(signal.SIGTERM, on_sigterm)
        mark("train", entered)
        while True:
            time.sleep(0.01)

    def save(self):
        pass
"""
BARE_APP = """\
import asyncio

from fastapi import FastAPI, Header
from fastapi.responses import PlainTextResponse

app = FastAPI()
held = 0


@app.get("/api/v1/agent/commands")
async def poll(wait: float = 0, authorization: str = Header()) -> list[dict]:
    global held
    held += 1
    try:
        await asyncio.sleep(wait)
    finally:
        held -= 1
    return []


@app.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> str:
    return f"trainyard_long_polls_waiting {held}.0\\n"
"""


def agent_command() -> list[str]:
    beside = Path(sys.executable).with_name("trainyard-agent")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "agent.cli"]


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: below 100 values, p99 is the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def rss(pid: int) -> int:
    process = psutil.Process(pid)
    return int(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]))


def raise_open_files(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by the API it starts) as far as the hard limit
    allows; the new soft limit."""
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
        await asyncio.sleep(0.01)


class Server:
    """An HTTP server process on a free port that answers `ready` and counts its held polls on /metrics."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, ready: str = "/readyz") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + BOUND_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{command[0]} exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}{ready}").status_code == 200:
                    return
            time.sleep(0.1)
        raise SystemExit(f"{command[0]} did not become ready")

    async def waiting(self, client: httpx.AsyncClient) -> int:
        """Long-polls this process holds, as it counts them itself."""
        found = WAITING.search((await client.get(f"{self.url}/metrics")).content)
        return int(float(found.group(1))) if found else -1

    def stop(self, *, kill: bool = False) -> None:
        # kill: uvicorn's graceful shutdown would wait for every request still asleep.
        (self.process.kill if kill else self.process.terminate)()
        try:
            self.process.wait(timeout=BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def trainyard_api(root: Path) -> Server:
    """`trainyard-api serve`, its SQLite and blobs in `root`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(TRAINYARD_DATA_DIR=str(root / "data"), TRAINYARD_BOOTSTRAP_TOKEN=TOKEN)
    subprocess.run([api_command(), "migrate"], env=env, check=True, capture_output=True)
    return Server([api_command(), "serve"], env, root / "api.log")


def bare_fastapi(root: Path) -> Server:
    """The limit beside the API's memory: a bare FastAPI long-poll under the same uvicorn."""
    (root / "bare_poll.py").write_text(BARE_APP)
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(root), "bare_poll:app"]
    return Server(command, dict(os.environ), root / "bare.log", ready="/metrics")


@dataclass
class World:
    """What the setup made through the API: the process paths and the machines' tokens."""

    processes: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)


async def setup(admin: httpx.AsyncClient, marks: Path) -> World:
    world = World()
    for path, body in (("/model-types", {"name": "classifier"}), ("/projects", {"name": PROJECT})):
        (await admin.post(path, json=body)).raise_for_status()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as folder:
        folder.writestr("train.py", TRAIN_PY)
    files = {"file": ("latency.zip", archive.getvalue(), "application/zip")}
    (await admin.post(f"/projects/{PROJECT}/packages/latency/versions", files=files)).raise_for_status()
    template = {
        "name": "latency",
        "model_type": "classifier",
        "base_package": "latency",
        "parameters": {"marks": str(marks)},
    }
    (await admin.post(f"/projects/{PROJECT}/templates", json=template)).raise_for_status()
    for machine in ("agent", "direct"):
        world.tokens[machine] = await new_machine(admin, machine)
        created = await admin.post(
            f"/projects/{PROJECT}/templates/latency/processes", json={"machine": machine}
        )
        created.raise_for_status()
        world.processes[machine] = f"/projects/{PROJECT}/processes/{created.json()['id']}"
    return world


async def new_machine(admin: httpx.AsyncClient, name: str) -> str:
    created = await admin.post("/machines", json={"name": name, "address": "127.0.0.1"})
    created.raise_for_status()
    return str(created.json()["agent_token"])


async def round_trips(client: httpx.AsyncClient, url: str, count: int) -> list[float]:
    for _ in range(5):  # warm the connection and the route
        (await client.get(url)).raise_for_status()
    took = []
    for _ in range(count):
        started = time.perf_counter()
        (await client.get(url)).raise_for_status()
        took.append(time.perf_counter() - started)
    return took


async def deliveries(
    api: Server, admin: httpx.AsyncClient, agent: httpx.AsyncClient, process: str, count: int
) -> tuple[list[float], list[float]]:
    """(start call -> the held poll answered with the command, the start call alone), in seconds."""

    async def timed(call: Awaitable[httpx.Response]) -> tuple[float, httpx.Response]:
        response = await call
        return time.perf_counter(), response

    delivered, calls = [], []
    for _ in range(count):
        poll = asyncio.ensure_future(timed(agent.get("/commands", params={"wait": WAIT})))

        async def held() -> bool:
            return await api.waiting(admin) >= 1

        await until(held, "the API to hold the bench's poll")
        started = time.perf_counter()
        start_done, start = await timed(admin.post(f"{process}/start"))
        polled, answer = await poll
        start.raise_for_status()
        commands = answer.json()
        run_id = start.json()["latest_run"]["id"]
        if [c["run_id"] for c in commands] != [run_id]:
            raise SystemExit(f"the poll did not answer with the start of {run_id}: {commands}")
        delivered.append(polled - started)
        calls.append(start_done - started)
        (await agent.post(f"/commands/{commands[0]['id']}/ack")).raise_for_status()
        exited = {"type": "exited", "exit_code": 1, "error_tail": "bench: delivery only"}
        (await agent.post(f"/runs/{run_id}/events", json=exited)).raise_for_status()
    return delivered, calls


class Agent:
    """The real `trainyard-agent run` process for machine `agent`."""

    def __init__(self, root: Path, api_url: str, token: str) -> None:
        token_file = root / "agent-token"
        token_file.write_text(token + "\n")
        os.chmod(token_file, 0o600)
        work_dir = root / "agent"
        work_dir.mkdir(mode=0o755)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TRAINYARD_API_URL": api_url,
            "TRAINYARD_AGENT_TOKEN_FILE": str(token_file),
            "TRAINYARD_AGENT_WORK_DIR": str(work_dir),
            "TRAINYARD_STOP_GRACE": "5",
        }
        # Packages run as the agent's own user (root as root: this machine's Python lives under /root,
        # where no other user reaches), unsandboxed: the figures are the protocol's, with no
        # bubblewrap start in them (docs/agent.md, "The package is untrusted", for production).
        env["TRAINYARD_ALLOW_UNSAFE_RUN_USER"] = "true"
        if os.geteuid() == 0:
            env["TRAINYARD_RUN_AS"] = "root"
        self.log = root / "agent.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [*agent_command(), "run"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check(self) -> None:
        if self.process.poll() is not None:
            raise SystemExit(f"the agent exited:\n{self.log.read_text()[-3000:]}")

    def torch_mapped(self) -> bool:
        return "torch" in Path(f"/proc/{self.process.pid}/maps").read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Cycle:
    """One start and stop through the real agent, in seconds."""

    to_launched: float
    to_train: float
    to_sigterm: float


async def read_mark(path: Path, agent: Agent) -> float:
    async def there() -> bool:
        agent.check()
        return await asyncio.to_thread(path.exists)

    await until(there, f"{path.name} from the package")
    return float(await asyncio.to_thread(path.read_text))


async def ended_run(admin: httpx.AsyncClient, agent: Agent, path: str) -> dict[str, Any]:
    run: dict[str, Any] = {}

    async def ended() -> bool:
        nonlocal run
        agent.check()
        run = (await admin.get(path)).json()
        return run["status"] in ENDED

    await until(ended, "the stopped run to end")
    return run


async def start_stop(
    admin: httpx.AsyncClient, agent: Agent, process: str, marks: Path, count: int
) -> list[Cycle]:
    cycles = []
    for _ in range(count):
        for name in ("train", "sigterm"):
            (marks / name).unlink(missing_ok=True)
        asked = time.time()
        started = await admin.post(f"{process}/start")
        started.raise_for_status()
        run_path = f"/projects/{PROJECT}/runs/{started.json()['latest_run']['id']}"
        entered = await read_mark(marks / "train", agent)
        stop_asked = time.time()
        (await admin.post(f"{process}/stop")).raise_for_status()
        sigterm = await read_mark(marks / "sigterm", agent)
        run = await ended_run(admin, agent, run_path)
        launched = datetime.fromisoformat(run["launched_at"]).timestamp()
        cycles.append(Cycle(launched - asked, entered - asked, sigterm - stop_asked))
    return cycles


@dataclass
class Polls:
    """Idle long-polls held by one server process."""

    polls: int
    machines: int
    rss_before: int = 0
    rss_held: int = 0
    held: int = 0  # as the server counts them, when its RSS was read
    established_seconds: float = 0.0
    cpu_seconds: float = 0.0
    sent: int = 0
    answered_early: int = 0
    failed: list[str] = field(default_factory=list)

    @property
    def per_poll(self) -> float:
        return (self.rss_held - self.rss_before) / max(self.held, 1)


async def hold_poll(port: int, token: str, polls: Polls) -> None:
    """One agent's poll on its own connection, sent again when answered, until cancelled."""
    request = (
        f"GET /api/v1/agent/commands?wait={WAIT} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            writer.write(request)
            await writer.drain()
            sent = time.monotonic()
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            status = head.split(b" ", 2)[1].decode()
            if status != "200":
                polls.failed.append(f"HTTP {status}")
            elif time.monotonic() - sent < WAIT - 1:
                polls.answered_early += 1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
        polls.failed.append(repr(error))
    finally:
        if writer is not None:
            writer.close()


async def idle_polls(server: Server, client: httpx.AsyncClient, tokens: list[str], count: int) -> Polls:
    """Up to `count` polls at once, the tokens in turn, sent in batches as fast as the server takes
    them (it says how many it holds); its RSS once it holds them all or, if the first polls' wait is
    about to end before that, as many as it got to."""
    polls = Polls(count, len(tokens))
    await asyncio.sleep(1.0)
    pid = server.process.pid
    polls.rss_before = int(statistics.median(rss(pid) for _ in range(5)))
    cpu = psutil.Process(pid).cpu_times()
    started = time.monotonic()
    tasks: list[asyncio.Task[None]] = []

    def late() -> bool:  # the first polls' wait is about to end
        return time.monotonic() - started > WAIT - 2

    async def caught_up() -> bool:
        await asyncio.sleep(0.1)  # /metrics costs the server a little too
        polls.held = await server.waiting(client)
        return polls.held >= len(tasks) or late() or bool(polls.failed)

    try:
        while len(tasks) < count and not late() and not polls.failed:
            more = range(len(tasks), min(count, len(tasks) + POLL_BATCH))
            tasks.extend(
                asyncio.create_task(hold_poll(server.port, tokens[i % len(tokens)], polls)) for i in more
            )
            await until(caught_up, f"{len(tasks)} polls to be held")
        polls.established_seconds = time.monotonic() - started
        after = psutil.Process(pid).cpu_times()
        polls.cpu_seconds = (after.user + after.system) - (cpu.user + cpu.system)
        polls.sent = len(tasks)
        polls.rss_held = rss(pid)
        polls.held = min(polls.held, await server.waiting(client))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return polls


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@dataclass
class Figures:
    healthz: list[float]
    poll_now: list[float]
    delivered: list[float]
    start_calls: list[float]
    cycles: list[Cycle]
    agent_idle: int
    agent_torch: bool
    agent_after: int
    api_polls: Polls
    bare_polls: Polls


async def measure(root: Path, repetitions: int, cycles_count: int, poll_count: int, machines: int) -> Figures:
    marks = root / "marks"
    marks.mkdir()
    os.chmod(marks, 0o777)  # the run's user writes here
    api = trainyard_api(root)
    agent: Agent | None = None
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=f"{api.url}/api/v1", headers=headers, timeout=90) as admin:
            world = await setup(admin, marks)
            healthz = await round_trips(admin, f"{api.url}/healthz", repetitions)
            direct_headers = {"Authorization": f"Bearer {world.tokens['direct']}"}
            async with httpx.AsyncClient(
                base_url=f"{api.url}/api/v1/agent", headers=direct_headers, timeout=90
            ) as direct:
                poll_now = await round_trips(direct, "/commands?wait=0", repetitions)
                delivered, start_calls = await deliveries(
                    api, admin, direct, world.processes["direct"], repetitions
                )
            running = agent = Agent(root, api.url, world.tokens["agent"])

            async def seen() -> bool:
                running.check()
                return bool((await admin.get("/machines/agent")).json().get("last_seen_at"))

            await until(seen, "the agent's first poll")
            await asyncio.sleep(3.0)
            agent_idle, agent_torch = rss(agent.process.pid), agent.torch_mapped()
            cycles = await start_stop(admin, agent, world.processes["agent"], marks, cycles_count)
            agent_after = rss(agent.process.pid)
            agent.stop()
            agent = None
            tokens = [await new_machine(admin, f"idle-{i:05d}") for i in range(machines)]
            api_polls = await idle_polls(api, admin, tokens, poll_count)
    finally:
        if agent is not None:
            agent.stop()
        api.stop()
    bare = bare_fastapi(root)
    try:
        async with httpx.AsyncClient(timeout=90) as client:
            bare_polls = await idle_polls(bare, client, tokens, poll_count)
    finally:
        bare.stop(kill=True)
    return Figures(
        healthz,
        poll_now,
        delivered,
        start_calls,
        cycles,
        agent_idle,
        agent_torch,
        agent_after,
        api_polls,
        bare_polls,
    )


def report(f: Figures) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    python = sys.version.split()[0]
    print(f"\n{os.cpu_count()} CPUs, load average {load}, Python {python}; p99 by nearest rank\n")
    healthz = f"GET /healthz round trip p50 {ms(statistics.median(f.healthz))}"
    latencies = [
        (
            "command delivery: start call -> held poll answered",
            f.delivered,
            "p50 <= 25 ms, p99 <= 100 ms",
            healthz,
        ),
        ("the start call alone (admin POST .../start)", f.start_calls, "", ""),
        ("start call -> `train()` entered (real agent)", [c.to_train for c in f.cycles], "p50 <= 500 ms", ""),
        ("of which start call -> `launched` at the API", [c.to_launched for c in f.cycles], "", ""),
        ("stop call -> SIGTERM in the package", [c.to_sigterm for c in f.cycles], "p50 <= 50 ms", ""),
        ("GET /healthz round trip", f.healthz, "", "the loopback limit"),
        ("GET /agent/commands?wait=0 round trip (auth + DB)", f.poll_now, "", ""),
    ]
    print("| measure | p50 | p99 | n | target | beside it |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for what, values, target, beside in latencies:
        p50, p99 = ms(statistics.median(values)), ms(percentile(values, 99))
        print(f"| {what} | {p50} | {p99} | {len(values)} | {target} | {beside} |")
    api, bare = f.api_polls, f.bare_polls
    # What 400 MB at 10,000 polls leaves each poll above this API's idle RSS.
    per_poll = f"<= {(400e6 - api.rss_before) / 10_000 / 1024:.0f}"

    def both(cell: Callable[[Polls], str]) -> list[str]:
        return [cell(api), cell(bare)]

    rows = [
        ["polls asked / machines' tokens", f"{api.polls:,} / {api.machines:,}", f"{bare.polls:,}", "10,000"],
        [
            "sent / held at once, as the server counts them",
            *both(lambda p: f"{p.sent:,} / {p.held:,}"),
            "all",
        ],
        [
            "answered before their wait / failed",
            *both(lambda p: f"{p.answered_early} / {len(p.failed)}"),
            "0 / 0",
        ],
        ["time to send them and see them held (s)", *both(lambda p: f"{p.established_seconds:.1f}"), ""],
        [
            "server CPU per held poll (ms)",
            *both(lambda p: f"{p.cpu_seconds / max(p.held, 1) * 1000:.2f}"),
            "",
        ],
        ["server RSS before (MiB)", *both(lambda p: f"{p.rss_before / MiB:.1f}"), ""],
        ["server RSS while held (MiB)", *both(lambda p: f"{p.rss_held / MiB:.1f}"), ""],
        ["per held poll (KiB)", *both(lambda p: f"{p.per_poll / 1024:.1f}"), per_poll],
        [
            "at 10,000 held: RSS before + 10,000 x per poll (MiB)",
            *both(lambda p: f"{(p.rss_before + 10_000 * p.per_poll) / MiB:.0f}"),
            "<= 381 (400 MB)",
        ],
    ]
    print(f"\n| idle long-polls, wait={WAIT} s | trainyard-api | bare FastAPI long-poll | target |")
    print("| --- | ---: | ---: | --- |")
    for what, *cells in rows:
        print(f"| {what} | {' | '.join(cells)} |")
    torch = "yes" if f.agent_torch else "no"
    print("\n| the agent process | figure | target |")
    print("| --- | ---: | --- |")
    idle = f"{f.agent_idle / MiB:.1f} MiB / {torch}"
    print(f"| RSS idle, after polling 3 s / torch mapped | {idle} | < 80 MB / no |")
    print(f"| RSS after {len(f.cycles)} runs | {f.agent_after / MiB:.1f} MiB | |")
    for name, polls in (("trainyard-api", api), ("bare FastAPI", bare)):
        if polls.failed:
            print(f"{name}: {len(polls.failed)} polls failed, e.g. {polls.failed[0]}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20 deliveries, 5 starts/stops, 500 polls: CI")
    parser.add_argument("--repetitions", type=int, help="deliveries and round trips (default 200)")
    parser.add_argument("--cycles", type=int, help="starts and stops through the real agent (default 30)")
    parser.add_argument("--polls", type=int, help="idle long-polls held at once (default 10,000)")
    parser.add_argument("--machines", type=int, default=100, help="machines' tokens the polls use in turn")
    args = parser.parse_args()
    repetitions = args.repetitions or (20 if args.quick else 200)
    cycles = args.cycles or (5 if args.quick else 30)
    polls = args.polls or (500 if args.quick else 10_000)
    # One descriptor a poll in this process and one in the server, which inherits the limit.
    limit = raise_open_files(polls + 1024)
    if limit < polls + 256:
        print(f"RLIMIT_NOFILE ({limit}) caps the polls at {limit - 256}", file=sys.stderr)
        polls = limit - 256
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-") as scratch:
        root = Path(scratch)
        os.chmod(root, 0o755)  # the run's user must reach its work dir
        figures = asyncio.run(measure(root, repetitions, cycles, polls, min(args.machines, polls)))
    report(figures)


if __name__ == "__main__":
    main()
