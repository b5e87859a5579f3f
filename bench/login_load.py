"""GET /projects while 40 clients log in without pause, beside GET /projects alone.

A real `trainyard-api serve` on a free port, on SQLite and on PostgreSQL (a scratch database at
TRAINYARD_TEST_POSTGRES_URL's server, dropped afterwards). 40 users each log in over and over with
their right password (a success never locks a name) while one client times GET /projects in turn.
The login rate limits are raised out of the way: this measures what argon2 does to everybody else.

    python bench/login_load.py [--tree DIR] [--samples N] [--databases sqlite,postgresql]

`--tree` runs the API from another checkout (e.g. `git archive` of an older commit) with this
interpreter, to measure before and after a change.
"""

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from common import free_port

TOKEN = "bench-bootstrap-token-0123456789abcdefghij"
SECRET = "bench-secret-key-0123456789abcdefghijklmnop"
PASSWORD = "correct horse battery staple"
LOGINS = 40
POSTGRES_URL = os.environ.get("TRAINYARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def serve(tree: Path, root: Path, database_url: str | None) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(
        PYTHONPATH=str(tree),
        TRAINYARD_DATA_DIR=str(root / "data"),
        TRAINYARD_BOOTSTRAP_TOKEN=TOKEN,
        TRAINYARD_SECRET_KEY=SECRET,
        TRAINYARD_LOGIN_IP_BURST="100000",
        TRAINYARD_LOGIN_IP_PER_MINUTE="100000",
        TRAINYARD_LOGIN_NAME_BURST="100000",
        TRAINYARD_LOGIN_NAME_PER_MINUTE="100000",
    )
    if database_url:
        env["TRAINYARD_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "api.cli"]
    subprocess.run([*command, "migrate"], env=env, cwd=tree, check=True, capture_output=True)
    port = free_port()
    log = (root / "api.log").open("wb")
    process = subprocess.Popen(
        [*command, "serve", "--port", str(port)], env=env, cwd=tree, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API exited:\n{(root / 'api.log').read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz").status_code == 200:
                return process, url
        time.sleep(0.1)
    raise SystemExit("the API did not become ready")


async def timed_gets(admin: httpx.AsyncClient, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        (await admin.get("/projects")).raise_for_status()
        times.append(time.perf_counter() - started)
    return times


async def measure(url: str, samples: int) -> tuple[list[float], list[float], float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=LOGINS + 10)
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers, timeout=120) as admin:
        for i in range(LOGINS):
            body = {"name": f"user{i}", "password": PASSWORD}
            (await admin.post("/users", json=body)).raise_for_status()
        (await admin.post("/projects", json={"name": "bench"})).raise_for_status()
        await timed_gets(admin, 5)  # warm
        alone = await timed_gets(admin, samples)

        stop = asyncio.Event()
        logins = 0

        async def log_in(name: str, client: httpx.AsyncClient) -> None:
            nonlocal logins
            while not stop.is_set():
                answer = await client.post("/auth/login", json={"username": name, "password": PASSWORD})
                answer.raise_for_status()
                logins += 1

        async with httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=120, limits=limits) as anon:
            workers = [asyncio.create_task(log_in(f"user{i}", anon)) for i in range(LOGINS)]
            await asyncio.sleep(2)  # every worker in flight
            counted, started = logins, time.perf_counter()
            loaded = await timed_gets(admin, samples)
            rate = (logins - counted) / (time.perf_counter() - started)
            stop.set()
            await asyncio.gather(*workers)
    return alone, loaded, rate


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"tree: {args.tree}, {LOGINS} clients logging in, {args.samples} GET /projects each way")
    print("| database | GET alone p50 / p95 (ms) | GET under logins p50 / p95 / max (ms) | logins/s |")
    print("| --- | --- | --- | --- |")
    for database in args.databases.split(","):
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            url = None
            name = f"trainyard_bench_{uuid.uuid4().hex[:8]}"
            if database == "postgresql":
                with psycopg.connect(POSTGRES_URL, autocommit=True) as pg:
                    pg.execute(f'CREATE DATABASE "{name}"')
                url = f"{POSTGRES_URL.rpartition('/')[0]}/{name}"
            process, api = serve(args.tree, root, url)
            try:
                alone, loaded, rate = asyncio.run(measure(api, args.samples))
            finally:
                process.terminate()
                process.wait(timeout=60)
                if url:
                    with psycopg.connect(POSTGRES_URL, autocommit=True) as pg:
                        pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            print(
                f"| {database} | {ms(alone, 0.5)} / {ms(alone, 0.95)} | "
                f"{ms(loaded, 0.5)} / {ms(loaded, 0.95)} / {max(loaded) * 1000:.0f} | {rate:.0f} |"
            )


if __name__ == "__main__":
    main()
