"""The start call and its delivery on one API process, for one tree or several side by side.

    .venv/bin/python bench/start_call.py                               # this tree, PostgreSQL
    .venv/bin/python bench/start_call.py --tree before=/tmp/old --tree after=.
    .venv/bin/python bench/start_call.py --py-spy /tmp/start.svg       # and a profile of the API (py-spy)
    .venv/bin/python bench/start_call.py --quick                       # 5 agents, 20 starts

A small reproduction of bench/fleet.py's delivery window, made to compare code rather than topologies:
for each tree (`--tree NAME=DIR`: a checkout, e.g. `git archive` of an older commit; default this one),
a scratch database on the test PostgreSQL (`TRAINYARD_TEST_POSTGRES_URL`), `python -m api.cli migrate`
and `serve` from that tree with this interpreter (one uvicorn process), and fleet.py's agents (its
`Fleet`: hello, then long-polls, ack, `exited` at once) for `--agents` machines, each with a process,
talking to that API directly. All trees' APIs run at once. Once every poll is held: `--starts` rounds,
each one start per tree, the trees' order alternating (a b, b a, a b...), so that whatever else a shared
machine does falls on every tree alike. A start is of a random machine whose poll is held, timed from
just before the call to its answer (the start call) and to the moment the agent's poll returns it
(delivery). Beside them, each API process's CPU over the whole window divided by its starts: a start's
whole cycle (the call, the poll that takes it, the ack, the exit, the next poll).
"""

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
from common import free_port
from fleet import (
    BOUND_SECONDS,
    PG_ADMIN,
    SECRET,
    TOKEN,
    WAITING,
    Fleet,
    RawConnection,
    percentile,
    setup,
    stop,
    until,
    wait_ready,
)

PAUSE = 0.05  # seconds between starts: the agent's exit lands and its next poll is held


@dataclass
class Figures:
    tree: str
    calls: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0


@dataclass
class Arm:
    """One tree's API on its scratch database, its agents, and what was measured of it."""

    figures: Figures
    database: str
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    admin: httpx.AsyncClient | None = None
    fleet: Fleet | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def held(self) -> bool:
        assert self.admin is not None and self.fleet is not None
        if self.fleet.errors:
            raise SystemExit(f"agents failed: {self.fleet.errors[:5]}")
        found = WAITING.search((await self.admin.get(f"http://127.0.0.1:{self.port}/metrics")).content)
        return found is not None and int(float(found.group(1))) >= len(self.fleet.machines)

    async def start_one(self) -> None:
        """A start of a random machine whose poll is held, timed to its answer and to its delivery."""
        assert self.admin is not None and self.fleet is not None
        machines = self.fleet.machines
        ready = [m for m in machines if time.monotonic() - m.sending_since > PAUSE and m.started is None]
        machine = self.rng.choice(ready or machines)
        machine.started = asyncio.get_running_loop().create_future()
        asked = time.perf_counter()
        call = await self.admin.post(f"{machine.process}/start")
        self.figures.calls.append(time.perf_counter() - asked)
        call.raise_for_status()
        self.figures.delivered.append(await asyncio.wait_for(machine.started, BOUND_SECONDS) - asked)
        machine.started = None

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return float(sum(psutil.Process(self.process.pid).cpu_times()[:2]))


def serve(tree: Path, root: Path, url: str) -> tuple[subprocess.Popen[bytes], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(
        PYTHONPATH=str(tree),
        TRAINYARD_DATA_DIR=str(root / "data"),
        TRAINYARD_DATABASE_URL=url,
        TRAINYARD_SECRET_KEY=SECRET,
        TRAINYARD_BOOTSTRAP_TOKEN=TOKEN,
    )
    command = [sys.executable, "-m", "api.cli"]
    subprocess.run([*command, "migrate"], env=env, cwd=tree, check=True, capture_output=True)
    port = free_port()
    log = root / "api.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "serve", "--port", str(port)], env=env, cwd=tree, stdout=sink, stderr=subprocess.STDOUT
        )
    wait_ready(process, f"http://127.0.0.1:{port}/readyz", log)
    return process, port


async def profile(arm: Arm, args: argparse.Namespace) -> asyncio.subprocess.Process:
    """py-spy recording the arm's API until it is sent SIGINT (.txt: collapsed stacks, else an SVG)."""
    assert arm.process is not None
    out = args.py_spy.with_name(f"{args.py_spy.stem}-{arm.figures.tree}{args.py_spy.suffix}")
    return await asyncio.create_subprocess_exec(
        *[args.py_spy_binary, "record", "--pid", str(arm.process.pid), "--rate", "200", "-o", str(out)],
        *(["--format", "raw"] if out.suffix == ".txt" else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def measure(arms: list[Arm], args: argparse.Namespace) -> None:
    spies: list[asyncio.subprocess.Process] = []
    try:
        for arm in arms:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            arm.admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{arm.port}/api/v1", headers=headers)
            machines = await setup(arm.admin, args.agents, 0, args.agents)
            arm.fleet = Fleet(machines, lambda token, port=arm.port: RawConnection(port, token))
            arm.tasks = [asyncio.create_task(arm.fleet.agent(machine)) for machine in machines]
        for arm in arms:
            await until(arm.held, f"{arm.figures.tree}: every poll to be held")
        if args.py_spy is not None:
            spies = [await profile(arm, args) for arm in arms]
            await asyncio.sleep(1.0)  # py-spy attaches
        before = [arm.cpu_seconds() for arm in arms]
        for i in range(args.starts):
            for arm in arms if i % 2 == 0 else arms[::-1]:
                await arm.start_one()
                await asyncio.sleep(PAUSE)
        for arm, cpu in zip(arms, before, strict=True):
            # The last run's exit and its agent's next poll belong to the window too.
            await until(arm.held, f"{arm.figures.tree}: every poll to be held again")
            arm.figures.cpu_seconds = arm.cpu_seconds() - cpu
    finally:
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
            await asyncio.wait_for(spy.wait(), 60)
        for arm in arms:
            if arm.fleet is not None:
                arm.fleet.stopping = True
            for task in arm.tasks:
                task.cancel()
            await asyncio.gather(*arm.tasks, return_exceptions=True)
            if arm.admin is not None:
                await arm.admin.aclose()


def run_arms(trees: list[tuple[str, Path]], root: Path, args: argparse.Namespace) -> list[Figures]:
    arms = [Arm(Figures(name), f"trainyard_start_{uuid.uuid4().hex[:12]}") for name, _ in trees]
    try:
        for arm, (name, tree) in zip(arms, trees, strict=True):
            with psycopg.connect(PG_ADMIN, autocommit=True) as pg:
                pg.execute(f'CREATE DATABASE "{arm.database}"')
            (root / name).mkdir()
            url = PG_ADMIN.rsplit("/", 1)[0] + f"/{arm.database}"
            arm.process, arm.port = serve(tree, root / name, url)
        asyncio.run(measure(arms, args))
    finally:
        for arm in arms:
            if arm.process is not None:
                stop(arm.process, kill=True)
            with psycopg.connect(PG_ADMIN, autocommit=True) as pg:
                pg.execute(f'DROP DATABASE IF EXISTS "{arm.database}" WITH (FORCE)')
    return [arm.figures for arm in arms]


def report(arms: list[Figures]) -> str:
    def ms(values: list[float], q: float) -> str:
        return f"{1000 * percentile(values, q):.1f}"

    lines = [
        "| tree | starts | start call p50 / p90 / p99 (ms) | delivery p50 / p90 / p99 (ms) "
        "| API CPU per start (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for arm in arms:
        lines.append(
            f"| {arm.tree} | {len(arm.calls)} "
            f"| {ms(arm.calls, 50)} / {ms(arm.calls, 90)} / {ms(arm.calls, 99)} "
            f"| {ms(arm.delivered, 50)} / {ms(arm.delivered, 90)} / {ms(arm.delivered, 99)} "
            f"| {1000 * arm.cpu_seconds / len(arm.calls):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a checkout to run the API from (repeatable); default: this one",
    )
    parser.add_argument("--agents", type=int, default=20, help="machines (and agents) per tree")
    parser.add_argument("--starts", type=int, default=300, help="starts per tree")
    parser.add_argument("--quick", action="store_true", help="5 agents, 20 starts")
    parser.add_argument(
        "--py-spy", type=Path, help="a py-spy profile of each tree's API (.svg, or .txt: collapsed stacks)"
    )
    parser.add_argument("--py-spy-binary", default="py-spy")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.starts = 5, 20
    here = Path(__file__).resolve().parent.parent
    trees = [(name, Path(path).resolve()) for name, _, path in (t.partition("=") for t in args.tree)]
    trees = trees or [("this tree", here)]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="trainyard-start-") as scratch:
        arms = run_arms(trees, Path(scratch), args)
    print(
        f"{args.agents} agents per tree, {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    print()
    print(report(arms))


if __name__ == "__main__":
    main()
