"""Telemetry: ingestion against raw executemany, the chart read of a 1,000,000-point run, the cost of
`report()`, and the slowdown of a real torch loop that reports every step. One run, one table.

    .venv/bin/python bench/telemetry.py            # 1,000,000 points, 10^6 report() calls, 3,000 loop rounds
    .venv/bin/python bench/telemetry.py --quick    # small sizes, for CI: it must keep working
    .venv/bin/python bench/telemetry.py --no-postgres --batch 50000

Ingestion: the real API (`trainyard-api serve`, one uvicorn process) on SQLite and on PostgreSQL;
columnar batches (5,000 points: what the agent ships in a steady stream of reports; 50,000: what it
ships while a backlog drains) are encoded before timing starts and posted one after the other by an
agent token. The limit beside it: `executemany` of the same rows, one batch a transaction, into the
same `metric_points` table (same indexes, same pragmas) of the same PostgreSQL database, or of a copy
of the API's SQLite file (`Raw`), each batch right after the API's.

Torch: a real training loop (an MLP on the CPU, one thread, pinned to one core), in three arms: one
that never reads the loss, PyTorch's tutorial loop (`running_loss += loss.item()` at every step) and
that loop with `report()` at every step; blocks of each arm side by side, the order rotating, each
block a step not timed (so that the timed one starts from what its own arm leaves behind) and a step
timed; the slowdown is the median of the rounds' ratios, by CPU and by wall-clock time.
"""

import argparse
import io
import math
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psycopg
from common import api_command, free_port

from shared.protocol import PackedPoints, TelemetryBatch

TOKEN = "bench-bootstrap-token-0123456789abcdef"
SECRET = "bench-secret-key-0123456789abcdefghijklmnop"
BATCHES = (5_000, 50_000)
SERIES = ("loss", "accuracy", "learning_rate", "grad_norm")
RAW_IDX_OFFSET = 1_000_000_000
RAW_PG = "INSERT INTO metric_points (series_id, idx, step, value, time) VALUES (%s, %s, %s, %s, %s)"
PG_ADMIN = os.environ.get("TRAINYARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RUNTIME = Path(__file__).resolve().parents[1] / "agent" / "runtime"


class Encoded(NamedTuple):
    body: bytes  # as the agent sends it: the points packed (agent/telemetry.py)
    names: list[str]
    series: list[int]
    step: list[float]
    value: list[float]
    time: list[float]


def batches(points: int, size: int) -> list[Encoded]:
    """The run's telemetry as encoded batches of `size` points: the series in turn, a random walk each."""
    rng = random.Random(1)
    encoded = []
    now = time.time()
    for seq, start in enumerate(range(0, points, size), start=1):
        n = min(size, points - start)
        series = [(start + i) % len(SERIES) for i in range(n)]
        steps = [float((start + i) // len(SERIES)) for i in range(n)]
        values = [math.sin(step / 1000) + rng.gauss(0, 0.1) for step in steps]
        times = [now + s for s in steps]
        batch = TelemetryBatch(
            seq=seq, names=list(SERIES), packed=PackedPoints.pack(series, steps, values, times)
        )
        body = batch.model_dump_json(exclude_defaults=True).encode()
        encoded.append(Encoded(body, list(SERIES), series, steps, values, times))
    return encoded


class Api:
    def __init__(self, workdir: Path, database_url: str | None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        self.env.update(TRAINYARD_DATA_DIR=str(workdir / "data"), TRAINYARD_BOOTSTRAP_TOKEN=TOKEN)
        self.env["TRAINYARD_SECRET_KEY"] = SECRET
        if database_url:
            self.env["TRAINYARD_DATABASE_URL"] = database_url
        subprocess.run([api_command(), "migrate"], env=self.env, check=True, capture_output=True)
        port = free_port()
        self.log = (workdir / f"serve-{port}.log").open("wb")
        self.process = subprocess.Popen(
            [api_command(), "serve", "--port", str(port)], env=self.env, stdout=self.log, stderr=self.log
        )
        self.base = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise SystemExit("the API did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def a_running_run(base: str) -> tuple[str, str]:
    """(run id, agent token) of a launched run, built through the API as a user would."""
    admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    admin.post("/projects", json={"name": "bench"}).raise_for_status()
    admin.post("/model-types", json={"name": "classifier"}).raise_for_status()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as folder:
        folder.writestr(
            "train.py",
            "class Main:\n    def train(self, d):\n        pass\n\n    def save(self):\n        pass\n",
        )
    files = {"file": ("pkg.zip", archive.getvalue(), "application/zip")}
    admin.post("/projects/bench/packages/pkg/versions", files=files).raise_for_status()
    template = {"name": "tpl", "model_type": "classifier", "base_package": "pkg"}
    admin.post("/projects/bench/templates", json=template).raise_for_status()
    machine = admin.post("/machines", json={"name": "m1", "address": "10.0.0.1"}).json()
    process = admin.post("/projects/bench/templates/tpl/processes", json={"machine": "m1"}).json()
    run_id = admin.post(f"/projects/bench/processes/{process['id']}/start").json()["latest_run"]["id"]
    agent = httpx.Client(
        base_url=f"{base}/agent", headers={"Authorization": f"Bearer {machine['agent_token']}"}
    )
    for command in agent.get("/commands").json():
        agent.post(f"/commands/{command['id']}/ack").raise_for_status()
    agent.post(f"/runs/{run_id}/events", json={"type": "launched"}).raise_for_status()
    return run_id, machine["agent_token"]


def chart_read_ms(base: str, run_id: str, reads: int) -> float:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as client:
        times = []
        for _ in range(reads):
            started = time.perf_counter()
            body = client.get(f"/projects/bench/runs/{run_id}/metrics", params={"max_points": 2000}).json()
            times.append(time.perf_counter() - started)
            assert all(len(s["value"]) <= 2000 for s in body["series"]), body
    return statistics.median(times) * 1000


class Raw:
    """`executemany` of the batches' rows into the API's own `metric_points` (same indexes, same
    pragmas), one batch a transaction, on a connection of the bench's: the limit the API is held to.

    On SQLite, into a copy of the API's database (taken once the first batch made the series), not
    into the API's file itself: in one file the two share one WAL, and the checkpoint of all of it
    (about 1,000 pages, 10 to 30 ms, `PRAGMA wal_autocheckpoint`) falls on whichever commit crosses
    the mark. With the API and raw committing in turn, that locked onto the API's commit: it paid 29
    of the 32 checkpoints of 200 batch pairs while writing about 60 % of the pages, and raw ran
    checkpoint-free. Each in its own file pays for its own pages, as it would alone."""

    def __init__(self, path: Path | None, url: str | None) -> None:
        self.source = path
        self.sqlite: sqlite3.Connection | None = None
        self.postgres = psycopg.connect(url) if url else None
        self.idx = RAW_IDX_OFFSET  # its own range of idx, after anything the API numbers

    def _copy(self) -> sqlite3.Connection:
        """The API's database as it is now, copied (sqlite3's online backup) beside it, and opened."""
        assert self.source is not None
        copy = self.source.with_name("raw-executemany.db")
        with sqlite3.connect(self.source, timeout=60) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        source.close()
        target.close()
        connection = sqlite3.connect(copy, isolation_level=None, timeout=60)
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):  # as api/core/db.py
            connection.execute(f"PRAGMA {pragma}")
        return connection

    def series_ids(self) -> dict[str, int]:
        if self.source is not None:
            self.sqlite = self.sqlite or self._copy()
            return dict(self.sqlite.execute("SELECT name, id FROM metric_series").fetchall())
        assert self.postgres is not None
        with self.postgres.transaction():
            return dict(self.postgres.execute("SELECT name, id FROM metric_series").fetchall())

    def rows(self, batch: Encoded, ids: dict[str, int]) -> list[tuple[int, int, float, float, float]]:
        sids = [ids[batch.names[s]] for s in batch.series]
        idxs = range(self.idx, self.idx + len(sids))
        self.idx += len(sids)
        return list(zip(sids, idxs, batch.step, batch.value, batch.time, strict=True))

    def insert(self, rows: list[tuple[int, int, float, float, float]]) -> float:
        """Seconds to store `rows`, commit included."""
        started = time.perf_counter()
        if self.sqlite is not None:
            self.sqlite.execute("BEGIN")
            self.sqlite.executemany(
                "INSERT INTO metric_points (series_id, idx, step, value, time) VALUES (?, ?, ?, ?, ?)", rows
            )
            self.sqlite.execute("COMMIT")
        else:
            assert self.postgres is not None
            with self.postgres.transaction(), self.postgres.cursor() as cursor:
                cursor.executemany(RAW_PG, rows)
        return time.perf_counter() - started

    def close(self) -> None:
        """The connection closed; on PostgreSQL its rows out again first (the chart read is of the
        API's alone; on SQLite they are in the copy)."""
        if self.sqlite is not None:
            self.sqlite.close()
        if self.postgres is not None:
            with self.postgres.transaction():
                self.postgres.execute(f"DELETE FROM metric_points WHERE idx >= {RAW_IDX_OFFSET}")
            self.postgres.close()


def side_by_side(base: str, run_id: str, token: str, encoded: list[Encoded], raw: Raw) -> tuple[float, float]:
    """Points per second into the API and raw, batch by batch in turn: the API's batch posted (HTTP
    included), then the same rows `executemany`d. Whatever else the machine runs hits both alike."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    api_seconds = raw_seconds = 0.0
    ids: dict[str, int] = {}
    with httpx.Client(base_url=f"{base}/agent", headers=headers, timeout=120) as agent:
        for batch in encoded:
            started = time.perf_counter()
            response = agent.post(f"/runs/{run_id}/telemetry", content=batch.body)
            api_seconds += time.perf_counter() - started
            if response.status_code != 200:
                raise SystemExit(f"telemetry refused: {response.status_code} {response.text}")
            ids = ids or raw.series_ids()  # made by the first batch
            rows = raw.rows(batch, ids)
            raw_seconds += raw.insert(rows)
    points = sum(len(batch.value) for batch in encoded)
    return points / api_seconds, points / raw_seconds


def database(workdir: Path, kind: str, points: int, reads: int, size: int) -> dict[str, Any]:
    encoded = batches(points, size)
    url = None
    if kind == "postgresql":
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN.rpartition("/")[0] + f"/{name}"
    folder = workdir / f"{kind}-{size}"
    try:
        api = Api(folder, url)
        try:
            run_id, token = a_running_run(api.base)
            raw = Raw(folder / "data" / "trainyard.db" if url is None else None, url)
            try:
                rate, raw_rate = side_by_side(api.base, run_id, token, encoded, raw)
            finally:
                raw.close()
            read_ms = chart_read_ms(api.base, run_id, reads)
        finally:
            api.stop()
    finally:
        if url is not None:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')
    return {"db": kind, "batch": size, "points": points, "api": rate, "raw": raw_rate, "read_ms": read_ms}


def report_p50_us(calls: int, workdir: Path) -> tuple[float, float]:
    """p50 of one call, and the mean of all with the formatting and storing the thread did."""
    code = f"""
import os, sys, time
os.environ["TRAINYARD_SPOOL"] = {str(workdir / "bench-spool.jsonl")!r}
sys.path.insert(0, {str(RUNTIME)!r})
from trainyard import flush, report
clock = time.perf_counter_ns
took = []
began = clock()
for i in range({calls}):
    started = clock()
    report(step=i, total_steps={calls}, loss=i / 7, accuracy=0.9, learning_rate=0.001)
    took.append(clock() - started)
flush()  # what the thread had not stored yet: its cost is in the mean
mean = (clock() - began) / {calls}
took.sort()
print(took[len(took) // 2] / 1000, mean / 1000)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    p50, mean = map(float, out.split())
    return p50, mean


TORCH_LOOP = """
import gc, os, statistics, sys, time
os.sched_setaffinity(0, {{{cpu}}})  # one core: no migration between the runs compared
import torch
torch.set_num_threads(1)
sys.path.insert(0, {runtime!r})
from trainyard import report
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
wall, cpu = time.perf_counter, time.process_time
def run(arm, steps):
    # "bare" never reads the loss; "plain" is PyTorch's tutorial loop (running_loss += loss.item());
    # "reported" is that loop with report() at every step. A first step, not timed, makes what the
    # timed ones start from the arm's own: a report() leaves the caches colder for the step after it,
    # which the timed steps of "reported" pay and those of the others do not.
    inside = running = 0.0
    for step in range(-1, steps):
        if step == 0:
            started, started_cpu, inside = wall(), cpu(), 0.0
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
        if arm == "bare":
            continue
        value = loss.item()
        running += value
        if arm == "reported":
            at = wall()
            report(step=step, total_steps=steps, loss=value, learning_rate=0.01)
            inside += wall() - at  # two clock reads: 0.1 us
    return (wall() - started) / steps, (cpu() - started_cpu) / steps, inside / steps
os.environ["TRAINYARD_SPOOL"] = {spool!r}
for arm in ("bare", "plain", "reported"):
    run(arm, 100)  # warm: torch's allocator, report()'s spool and name cache
gc.collect()
gc.disable()  # no collection lands in one arm's block and not in another's
arms = ("bare", "plain", "reported")
times = {{arm: [] for arm in arms}}
inside = []
for round in range({pairs}):
    # Short blocks back to back, the order rotating: the machine's speed drifts (a step's time moves
    # by 20 % over seconds here, each step's much like the one before it), and blocks a few steps
    # long, side by side, see the same speed. The median of thousands of such ratios is steady.
    for arm in arms[round % 3:] + arms[:round % 3]:
        w, c, i = run(arm, {steps})
        times[arm].append((w, c))
        if arm == "reported":
            inside.append(i)
median = statistics.median
def ratios(kind, base):
    values = [r[kind] / b[kind] for r, b in zip(times["reported"], times[base])]
    q1, mid, q3 = statistics.quantiles(values, n=4)
    return median(values), q1, q3
out = [median(w for w, _ in times["plain"]), median(w for w, _ in times["reported"]), median(inside)]
for kind in (1, 0):  # CPU time, then wall-clock time
    for base in ("plain", "bare"):
        out += ratios(kind, base)
print(*out)
"""


def torch_slowdown(rounds: int, steps: int, workdir: Path) -> dict[str, float] | None:
    """ms a step without and with `report()`, the time spent inside `report()`, and the slowdowns in %
    (median and quartiles of the rounds' ratios, by CPU and by wall-clock time, against the tutorial
    loop and against a loop that never reads the loss)."""
    cpu = max(os.sched_getaffinity(0))
    code = TORCH_LOOP.format(
        runtime=str(RUNTIME), spool=str(workdir / "torch-spool.jsonl"), pairs=rounds, steps=steps, cpu=cpu
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"torch loop skipped: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    numbers = [float(word) for word in done.stdout.split()]
    result = {"plain_ms": numbers[0] * 1e3, "reported_ms": numbers[1] * 1e3, "inside_us": numbers[2] * 1e6}
    for index, name in enumerate(("cpu_plain", "cpu_bare", "wall_plain", "wall_bare")):
        ratio, q1, q3 = numbers[3 + 3 * index : 6 + 3 * index]
        result[name] = (ratio - 1) * 100
        result[name + "_q1"], result[name + "_q3"] = (q1 - 1) * 100, (q3 - 1) * 100
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--batch", type=int, action="append", help=f"points a batch (repeatable; default {BATCHES})"
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-ingest", action="store_true", help="report() and the torch loop only")
    args = parser.parse_args()
    points, reads, calls, pairs, steps = (
        (100_000, 3, 100_000, 30, 1) if args.quick else (1_000_000, 9, 1_000_000, 3000, 1)
    )
    sizes = args.batch or list(BATCHES)
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-") as scratch:
        workdir = Path(scratch)
        kinds = ["sqlite"] if args.no_postgres else ["sqlite", "postgresql"]
        rows = (
            []
            if args.no_ingest
            else [database(workdir, kind, points, reads, size) for kind in kinds for size in sizes]
        )
        p50, mean = report_p50_us(calls, workdir)
        loop = None if args.no_torch else torch_slowdown(pairs, steps, workdir)
    read = f"read of {points:,} points to 2,000 a series (ms, median of {reads})"
    print(f"\n| database | points | batch | API points/s | raw executemany points/s | API / raw | {read} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['db']} | {row['points']:,} | {row['batch']:,} | {row['api']:,.0f} | {row['raw']:,.0f} | "
            f"{row['api'] / row['raw'] * 100:.0f} % | {row['read_ms']:.1f} |"
        )
    print(
        f"\n`report()` p50 over {calls:,} calls: {p50:.2f} us "
        f"(mean, the thread's storing included: {mean:.2f} us)"
    )
    if loop is not None:
        print(
            f"torch loop, {pairs:,} rounds of blocks of {steps} timed step(s) (one thread, one core): "
            f"{loop['plain_ms']:.3f} ms a step without reporting, {loop['reported_ms']:.3f} ms with "
            f"({loop['inside_us']:.1f} us of it inside report())"
        )
        for kind, base, words in (
            ("cpu", "plain", "CPU time, against the tutorial loop (running_loss += loss.item())"),
            ("cpu", "bare", "CPU time, against a loop that never reads the loss"),
            ("wall", "plain", "wall-clock time, against the tutorial loop"),
            ("wall", "bare", "wall-clock time, against a loop that never reads the loss"),
        ):
            key = f"{kind}_{base}"
            print(
                f"  slowdown by {words}: {loop[key]:+.2f} % "
                f"(quartiles {loop[key + '_q1']:+.2f} % to {loop[key + '_q3']:+.2f} %)"
            )


if __name__ == "__main__":
    main()
