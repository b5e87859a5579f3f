"""What clients and bots pay for the help they get (docs/clients.md): one function per measurement.

- `idempotent_post`: POST /projects with an `Idempotency-Key` against the same POST without one, and
  the retry that replays the first answer, p50 and p99 on loopback.

A real `trainyard-api serve` on a free port, on SQLite and on PostgreSQL (a scratch database at
TRAINYARD_TEST_POSTGRES_URL's server, dropped afterwards), one client on one kept-alive connection,
the kinds of request interleaved so that drift on a shared machine falls on all of them alike.

    python bench/clients.py [--quick] [--samples N] [--databases sqlite,postgresql]
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
from common import api_command, free_port

TOKEN = "bench-bootstrap-token-0123456789abcdefghij"
SECRET = "bench-secret-key-0123456789abcdefghijklmnop"
POSTGRES_URL = os.environ.get("TRAINYARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
READY_TIMEOUT = 60.0


@contextlib.contextmanager
def serving(database: str) -> Iterator[str]:
    """`trainyard-api migrate` then `serve` on `database` (sqlite or postgresql); yields its base URL."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        env.update(
            TRAINYARD_DATA_DIR=str(root / "data"),
            TRAINYARD_BOOTSTRAP_TOKEN=TOKEN,
            TRAINYARD_SECRET_KEY=SECRET,
        )
        scratch_db = f"trainyard_bench_{uuid.uuid4().hex[:8]}"
        if database == "postgresql":
            with psycopg.connect(POSTGRES_URL, autocommit=True) as pg:
                pg.execute(f'CREATE DATABASE "{scratch_db}"')
            env["TRAINYARD_DATABASE_URL"] = f"{POSTGRES_URL.rpartition('/')[0]}/{scratch_db}"
        try:
            subprocess.run([api_command(), "migrate"], env=env, check=True, capture_output=True)
            port = free_port()
            with (root / "api.log").open("wb") as log:
                process = subprocess.Popen(
                    [api_command(), "serve", "--port", str(port)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                url = f"http://127.0.0.1:{port}"
                _wait_ready(process, url, root)
                yield url
            finally:
                process.terminate()
                process.wait(timeout=READY_TIMEOUT)
        finally:
            if database == "postgresql":
                with psycopg.connect(POSTGRES_URL, autocommit=True) as pg:
                    pg.execute(f'DROP DATABASE IF EXISTS "{scratch_db}" WITH (FORCE)')


def _wait_ready(process: subprocess.Popen[bytes], url: str, root: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API exited:\n{(root / 'api.log').read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit("the API did not become ready")


def _timed(client: httpx.Client, name: str, key: str | None = None) -> tuple[float, httpx.Response]:
    headers = {} if key is None else {"Idempotency-Key": key}
    started = time.perf_counter()
    response = client.post("/projects", json={"name": name}, headers=headers)
    return time.perf_counter() - started, response


def idempotent_post(url: str, samples: int) -> dict[str, list[float]]:
    """Seconds per POST /projects: without a key, with a new key, and the retry replaying it."""
    times: dict[str, list[float]] = {"plain POST": [], "POST with a new key": [], "retry, replayed": []}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=60) as client:
        for i in range(samples + 5):  # the first five warm the connection and the caches
            plain_time, plain = _timed(client, f"plain-{i}")
            key = str(uuid.uuid4())
            keyed_time, keyed = _timed(client, f"keyed-{i}", key)
            replay_time, replay = _timed(client, f"keyed-{i}", key)
            assert plain.status_code == keyed.status_code == replay.status_code == 201, replay.text
            assert replay.headers["Idempotent-Replayed"] == "true" and replay.content == keyed.content
            if i >= 5:
                times["plain POST"].append(plain_time)
                times["POST with a new key"].append(keyed_time)
                times["retry, replayed"].append(replay_time)
    return times


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few samples: that it runs, not its figures")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    samples = 10 if args.quick else args.samples
    print(
        f"python {sys.version.split()[0]}, {samples} samples of each, interleaved, one kept-alive connection"
    )
    print("| database | request | p50 (ms) | p99 (ms) |")
    print("| --- | --- | --- | --- |")
    for database in args.databases.split(","):
        with serving(database) as url:
            for what, values in idempotent_post(url, samples).items():
                print(f"| {database} | {what} | {ms(values, 0.5)} | {ms(values, 0.99)} |")


if __name__ == "__main__":
    main()
