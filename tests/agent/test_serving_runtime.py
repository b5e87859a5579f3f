"""The serving process (agent/runtime/server.py) on a real small package, started by its file path as
the agent starts it: health, the secret, JSON and bytes in, text and JSON out, a model that raises."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

SERVER = Path(__file__).resolve().parents[2] / "agent" / "runtime" / "server.py"
SECRET = "s3cret-for-the-test"
PATIENCE = 60.0  # a bound on waiting for a process, never a timing assertion

MAIN = """
import json, os, time

class Main:
    def __init__(self):
        if os.path.exists("slow"):
            while not os.path.exists("go"):
                time.sleep(0.02)
        if os.path.exists("broken"):
            raise RuntimeError("the weights are missing")
        self.weights = open("weights.txt").read().strip()

    def predict(self, input):
        if input in ("raise", b"raise"):
            raise ValueError("no digit in that")
        if isinstance(input, bytes):
            return input.decode()[::-1]  # text out
        if input == "not json":
            return {1, 2}
        return {"got": input, "weights": self.weights}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Served:
    def __init__(self, folder: Path, port: int, process: subprocess.Popen[bytes], stderr: Path) -> None:
        self.folder, self.port, self.process, self.stderr = folder, port, process, stderr
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + PATIENCE
        while True:
            assert self.process.poll() is None, self.stderr.read_text()
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.stderr.read_text()
            time.sleep(0.05)

    def predict(
        self, content: bytes, content_type: str | None = None, secret: str = SECRET
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {secret}"}
        if content_type:
            headers["Content-Type"] = content_type
        return httpx.post(f"{self.url}/predict", content=content, headers=headers)


def start(folder: Path, port: int | None = None, **extra: str) -> Served:
    port = port or free_port()
    stderr = folder.parent / f"stderr-{port}.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TRAINYARD_SERVE_HOST": "127.0.0.1",
        "TRAINYARD_SERVE_PORT": str(port),
        "TRAINYARD_SERVICE_SECRET": SECRET,
        **extra,
    }
    with stderr.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, str(SERVER), "--service", "test", "--instance", "0"],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    return Served(folder, port, process, stderr)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    package = tmp_path / "package"
    package.mkdir()
    (package / "main.py").write_text(textwrap.dedent(MAIN))
    (package / "weights.txt").write_text("w1\n")
    # A module of the package named like ours must not shadow or be shadowed.
    (package / "server.py").write_text("raise SystemExit('the package server.py must never be imported')\n")
    return package


@pytest.fixture
def served(folder: Path) -> Iterator[Served]:
    server = start(folder)
    try:
        server.wait_ready()
        yield server
    finally:
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def test_health_answers_once_the_model_is_loaded(folder: Path) -> None:
    (folder / "slow").touch()
    server = start(folder)
    try:
        deadline = time.monotonic() + PATIENCE
        while True:  # listening before Main() is built: the health says so
            try:
                answer = httpx.get(f"{server.url}/health")
                break
            except httpx.TransportError:
                assert server.process.poll() is None and time.monotonic() < deadline, (
                    server.stderr.read_text()
                )
                time.sleep(0.05)
        assert (answer.status_code, answer.json()) == (503, {"status": "loading"})
        early = server.predict(b"[1]", "application/json")
        assert early.status_code == 503
        (folder / "go").touch()
        server.wait_ready()
        health = httpx.get(f"{server.url}/health")
        assert health.json() == {"status": "ok"}
        # The agent knows it reached its own instance, not whatever else took the port meanwhile.
        assert health.headers["x-trainyard-instance"] == "test/0"
    finally:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


def test_predict_refuses_a_missing_or_wrong_secret(served: Served) -> None:
    assert served.predict(b"[1]", "application/json", secret="wrong").status_code == 401
    answer = httpx.post(f"{served.url}/predict", content=b"[1]")
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert answer.json() == {"error": "a valid bearer secret is required"}
    assert served.predict(b"[1]", "application/json").status_code == 200


def test_json_in_json_out_and_bytes_in_text_out(served: Served) -> None:
    answer = served.predict(json.dumps([0.5, 3, "x"]).encode(), "application/json; charset=utf-8")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json() == {"got": [0.5, 3, "x"], "weights": "w1"}

    answer = served.predict(b"\x01olleh", "application/octet-stream")
    assert answer.status_code == 200 and answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert answer.text == "hello\x01"
    # Without a Content-Type the body is bytes too.
    assert served.predict(b"abc").text == "cba"


def test_bad_json_and_an_unknown_path_are_refused_without_calling_the_model(served: Served) -> None:
    answer = served.predict(b"{not json", "application/json")
    assert answer.status_code == 400 and answer.json()["error"].startswith("the body is not valid JSON")
    headers = {"Authorization": f"Bearer {SECRET}"}
    assert httpx.post(f"{served.url}/other", content=b"x", headers=headers).status_code == 404
    assert httpx.get(f"{served.url}/predict").status_code == 404


def test_a_model_that_raises_answers_500_and_the_process_serves_on(served: Served) -> None:
    with httpx.Client() as client:  # one kept-alive connection across the failure
        headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
        failed = client.post(f"{served.url}/predict", content=b'"raise"', headers=headers)
        assert failed.status_code == 500
        assert failed.json() == {"error": "ValueError: no digit in that"}
        unserialisable = client.post(f"{served.url}/predict", content=b'"not json"', headers=headers)
        assert unserialisable.status_code == 500
        assert unserialisable.json()["error"].startswith("TypeError: predict returned a set, not JSON")
        again = client.post(f"{served.url}/predict", content=b"2", headers=headers)
        assert again.status_code == 200 and again.json() == {"got": 2, "weights": "w1"}
    assert served.process.poll() is None
    stderr = served.stderr.read_text()
    assert "Traceback" in stderr and "ValueError: no digit in that" in stderr


def test_a_body_over_the_limit_is_refused(folder: Path) -> None:
    limited = start(folder, TRAINYARD_SERVE_MAX_BODY_BYTES="10")
    try:
        limited.wait_ready()
        assert limited.predict(b"x" * 11).status_code == 413
        assert limited.predict(b"x" * 10).text == "x" * 10
    finally:
        os.killpg(limited.process.pid, signal.SIGKILL)
        limited.process.wait()


def test_sigterm_ends_it_cleanly(served: Served) -> None:
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=PATIENCE) == 0


def test_a_model_that_cannot_load_exits_1_with_its_traceback(folder: Path) -> None:
    (folder / "broken").touch()
    server = start(folder)
    assert server.process.wait(timeout=PATIENCE) == 1
    stderr = server.stderr.read_text()
    assert "RuntimeError: the weights are missing" in stderr and "Traceback" in stderr


def test_a_port_taken_exits_98_so_the_agent_tries_another(folder: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = start(folder, port=taken.getsockname()[1])
        assert server.process.wait(timeout=PATIENCE) == 98


def test_a_package_without_main_py_cannot_be_served(folder: Path) -> None:
    (folder / "main.py").unlink()
    server = start(folder)
    assert server.process.wait(timeout=PATIENCE) == 1
    assert "has no main.py" in server.stderr.read_text()
