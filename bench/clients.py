"""What clients and bots pay for the help they get (docs/clients.md): one function per measurement.

- `idempotent_post`: POST /projects with an `Idempotency-Key` against the same POST without one, and
  the retry that replays the first answer, p50 and p99 on loopback.
- `change_to_news`: from a run's status change (the agent's `launched` report, sent) to (a) the answer
  of a client waiting with `wait=` and `If-None-Match`, and (b) the webhook's arrival at a receiver on
  loopback; beside a bare loopback HTTP round trip to that receiver, the floor of both.

A real `trainyard-api serve` on a free port, on SQLite and on PostgreSQL (a scratch database at
TRAINYARD_TEST_POSTGRES_URL's server, dropped afterwards), one client on one kept-alive connection,
the kinds of request interleaved so that drift on a shared machine falls on all of them alike.

    python bench/clients.py [--quick] [--samples N] [--databases sqlite,postgresql]
"""

import argparse
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
from common import api_command, free_port

TOKEN = "bench-bootstrap-token-0123456789abcdefghij"
SECRET = "bench-secret-key-0123456789abcdefghijklmnop"
POSTGRES_URL = os.environ.get("TRAINYARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
READY_TIMEOUT = 60.0


@contextlib.contextmanager
def serving(database: str, **settings: str) -> Iterator[str]:
    """`trainyard-api migrate` then `serve` on `database` (sqlite or postgresql); yields its base URL."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        env.update(
            TRAINYARD_DATA_DIR=str(root / "data"),
            TRAINYARD_BOOTSTRAP_TOKEN=TOKEN,
            TRAINYARD_SECRET_KEY=SECRET,
        )
        env.update({f"TRAINYARD_{name.upper()}": value for name, value in settings.items()})
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


class Receiver:
    """A webhook receiver on loopback: the arrival time of each `run.status_changed` to `running`."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}  # run id -> perf_counter at arrival
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                now = time.perf_counter()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                if self.path != "/hook":
                    return  # the bare round trip
                event = json.loads(body)
                if event["type"] == "run.status_changed" and event["data"]["status"] == "running":
                    with receiver.arrived:
                        receiver.arrivals[event["data"]["run_id"]] = now
                        receiver.arrived.notify_all()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arrival(self, run_id: str) -> float:
        with self.arrived:
            if not self.arrived.wait_for(lambda: run_id in self.arrivals, timeout=60):
                raise SystemExit(f"no webhook for run {run_id}")
            return self.arrivals[run_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def change_to_news(url: str, samples: int, receiver: Receiver) -> dict[str, list[float]]:
    """Seconds from the agent's `launched` report to a waiting client's answer and to the webhook."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    times: dict[str, list[float]] = {
        "bare loopback HTTP round trip": [],
        "status change -> waiting client answered": [],
        "status change -> webhook received": [],
    }
    api = httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=60)
    watcher = httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=60)
    bare = httpx.Client(base_url=receiver.url, timeout=60)
    with api, watcher, bare:
        project = f"news-{uuid.uuid4().hex[:6]}"
        api.post("/model-types", json={"name": "bench"})
        machine = api.post("/machines", json={"name": project, "address": "10.0.0.1"}).json()
        assert api.post("/projects", json={"name": project}).status_code == 201
        made = api.post(f"/projects/{project}/templates", json={"name": "t", "model_type": "bench"})
        assert made.status_code == 201, made.text
        process = api.post(f"/projects/{project}/templates/t/processes", json={"machine": project}).json()
        hook = {"url": f"{receiver.url}/hook", "events": ["run.status_changed"]}
        assert api.post(f"/projects/{project}/webhooks", json=hook).status_code == 201
        agent = httpx.Client(
            base_url=f"{url}/api/v1/agent",
            headers={"Authorization": f"Bearer {machine['agent_token']}"},
            timeout=60,
        )
        path = f"/projects/{project}/processes/{process['id']}"
        with agent, concurrent.futures.ThreadPoolExecutor(1) as pool:
            for i in range(samples + 3):  # the first three warm the connections
                started = time.perf_counter()
                assert bare.post("/bare", content=b"{}").status_code == 200
                round_trip = time.perf_counter() - started

                run = api.post(f"{path}/start").json()["latest_run"]
                for command in agent.get("/commands").json():
                    agent.post(f"/commands/{command['id']}/ack")
                run_path = f"/projects/{project}/runs/{run['id']}"
                etag = watcher.get(run_path).headers["ETag"]

                def wait(run_path: str = run_path, etag: str = etag) -> float:
                    answer = watcher.get(run_path, params={"wait": 30}, headers={"If-None-Match": etag})
                    assert answer.status_code == 200 and answer.json()["status"] == "running", answer.text
                    return time.perf_counter()

                waiting = pool.submit(wait)
                time.sleep(0.05)  # the waiter's request reaches its wait; it is answered only by a change
                changed = time.perf_counter()
                reply = agent.post(f"/runs/{run['id']}/events", json={"type": "launched"})
                assert reply.status_code == 200, reply.text
                answered = waiting.result()
                received = receiver.arrival(run["id"])

                assert api.post(f"{path}/stop").status_code == 202
                for command in agent.get("/commands").json():
                    agent.post(f"/commands/{command['id']}/ack")
                agent.post(f"/runs/{run['id']}/events", json={"type": "exited", "exit_code": -15})
                if i >= 3:
                    times["bare loopback HTTP round trip"].append(round_trip)
                    times["status change -> waiting client answered"].append(answered - changed)
                    times["status change -> webhook received"].append(received - changed)
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
    receiver = Receiver()
    try:
        for database in args.databases.split(","):
            with serving(database, webhooks_allow_private="true") as url:
                measured = idempotent_post(url, samples) | change_to_news(url, samples, receiver)
                for what, values in measured.items():
                    print(f"| {database} | {what} | {ms(values, 0.5)} | {ms(values, 0.99)} |")
    finally:
        receiver.close()


if __name__ == "__main__":
    main()
