"""The process of one instance of a service: the package's `main.py` `Main` answering HTTP.

Started by its file path (`python /path/to/server.py --service <id> --instance <n>`) in the unpacked
package folder, by the package environment's interpreter, as the run user: it imports nothing of ours
(standard library only), so a package's own `agent.py`, `api.py` or `server.py` cannot collide.

It binds `TRAINYARD_SERVE_HOST`:`TRAINYARD_SERVE_PORT` first (a port taken meanwhile exits with
`EXIT_PORT_TAKEN`, so the agent tries another without counting a failure), then builds `Main()` once
(UiPath's ML Skill contract: `__init__` loads the model) and answers:

    GET  /health    200 {"status": "ok"} once `Main()` is built (its `X-Trainyard-Instance` header
                    says `<service>/<instance>`); 503 {"status": "loading"} before
    POST /predict   `Authorization: Bearer <TRAINYARD_SERVICE_SECRET>` (401 otherwise); the body is
                    handed to `predict` as the parsed JSON value when the Content-Type is JSON, else
                    as `bytes`; a str answer goes back as text/plain, bytes as
                    application/octet-stream, anything else as JSON. The model raising is a 500 with
                    {"error": "<type>: <message>"} (its traceback on stderr) and the process serves on.

A failure to build `Main()` exits 1 with the traceback on stderr: the agent reports it and restarts
with backoff. SIGTERM while loading ends the process at once; once loaded, SIGTERM or SIGINT stops
accepting, lets the predictions in hand finish (up to `FINISH_SECONDS`), and exits 0.

`predict` is called by one request at a time (a lock): a package's model need not be thread-safe,
and an instance is one model's worth of memory; a service scales by its `instances`.
"""

from __future__ import annotations

import errno
import hmac
import importlib
import json
import os
import signal
import socket
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
SECRET_ENV = "TRAINYARD_SERVICE_SECRET"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
EXIT_PORT_TAKEN = 98  # errno's EADDRINUSE: the agent picks another port and launches again
ERROR_MAX_CHARS = 4000  # of the model's message, in the 500's body
FINISH_SECONDS = 10.0  # at a stop, for the predictions in hand (the agent's grace bounds it anyway)


class Model:
    """`Main()` once, and `predict` one call at a time."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.main: Any = None
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._calls = 0

    def load(self) -> None:
        if not os.path.isfile("main.py"):
            raise RuntimeError(f"the package has no main.py (in {os.getcwd()}): it cannot be served")
        main = importlib.import_module("main")  # the package's own, first on sys.path
        cls = getattr(main, "Main", None)
        if not isinstance(cls, type) or not callable(getattr(cls, "predict", None)):
            raise RuntimeError("main.py has no class Main with a predict method")
        self.main = cls()
        self.ready.set()

    def predict(self, value: object) -> object:
        with self._idle:
            self._calls += 1
        try:
            with self._lock:
                return self.main.predict(value)
        finally:
            with self._idle:
                self._calls -= 1
                self._idle.notify_all()

    def finish(self, timeout: float) -> None:
        """Until no prediction is in hand (or `timeout`)."""
        with self._idle:
            self._idle.wait_for(lambda: self._calls == 0, timeout)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the API's client reuses its connections
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: stderr is for the model's own words and its tracebacks."""

    # -- answers ---------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: object, **headers: str) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", **headers)

    def _error(self, status: int, message: str, **headers: str) -> None:
        self._json(status, {"error": message}, **headers)

    # -- routes ----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/health":
            self._error(HTTPStatus.NOT_FOUND, f"no such path: GET {self.path[:200]}")
        elif self.server.model.ready.is_set():
            self._json(HTTPStatus.OK, {"status": "ok"}, X_Trainyard_Instance=self.server.instance)
        else:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "loading"})

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/predict":
            self._drain_body()
            self._error(HTTPStatus.NOT_FOUND, f"no such path: POST {self.path[:200]}")
            return
        if not self._authorised():
            self._drain_body()
            self._error(
                HTTPStatus.UNAUTHORIZED, "a valid bearer secret is required", WWW_Authenticate="Bearer"
            )
            return
        body = self._read_body()
        if body is None:
            return
        if not self.server.model.ready.is_set():
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the model is still loading")
            return
        value: object = body
        if _is_json(self.headers.get("Content-Type", "")):
            try:
                value = json.loads(body)
            except ValueError as error:
                self._error(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {error}")
                return
        try:
            result = self.server.model.predict(value)
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            message = f"{type(error).__name__}: {error}"
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, message[:ERROR_MAX_CHARS])
            return
        self._answer(result)

    def _answer(self, result: object) -> None:
        if isinstance(result, str):
            self._send(HTTPStatus.OK, result.encode("utf-8", "surrogateescape"), "text/plain; charset=utf-8")
        elif isinstance(result, bytes | bytearray):
            self._send(HTTPStatus.OK, bytes(result), "application/octet-stream")
        else:
            try:
                encoded = json.dumps(result, allow_nan=False).encode()
            except (TypeError, ValueError) as error:
                message = f"TypeError: predict returned a {type(result).__name__}, not JSON ({error})"
                print(message, file=sys.stderr, flush=True)
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, message[:ERROR_MAX_CHARS])
                return
            self._send(HTTPStatus.OK, encoded, "application/json")

    # -- the request -----------------------------------------------------------------------------

    def _authorised(self) -> bool:
        given = self.headers.get("Authorization", "")
        scheme, _, secret = given.partition(" ")
        expected = self.server.secret
        return scheme.lower() == "bearer" and hmac.compare_digest(secret.strip().encode(), expected.encode())

    def _length(self) -> int | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return None
        return length if length >= 0 else None

    def _drain_body(self) -> None:
        """Read (and drop) a small body, so the connection stays usable; a large one closes it."""
        length = self._length()
        if length is None or length > 1024 * 1024:
            self.close_connection = True
        elif length:
            self.rfile.read(length)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
            return None
        length = self._length()
        if length is None:
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required")
            return None
        if length > self.server.max_body:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {self.server.max_body} bytes")
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return None  # the client went away mid-body
        return body


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], model: Model, secret: str, max_body: int, instance: str
    ) -> None:
        self.address_family = _family(address[0])
        super().__init__(address, Handler)
        self.model, self.secret, self.max_body = model, secret, max_body
        self.instance = instance  # in /health's answer: the agent knows it reached its own process


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _instance(argv: list[str]) -> str:
    """`<service>/<instance>` from `--service S --instance N` (the agent's way to tell its instances)."""
    named = dict(zip(argv[1::2], argv[2::2], strict=False))
    return f"{named.get('--service', '')}/{named.get('--instance', '')}"


def main(argv: list[str]) -> int:
    # The package folder first, so its own modules win; then ours (the `trainyard` module).
    cwd = os.getcwd()
    sys.path[:] = [cwd, RUNTIME_DIR] + [p for p in sys.path if p not in ("", cwd, RUNTIME_DIR)]
    secret = os.environ.pop(SECRET_ENV, "")  # not passed on to what the package starts
    if not secret:
        print(f"trainyard server: {SECRET_ENV} is not set", file=sys.stderr)
        return 2
    host = os.environ.get("TRAINYARD_SERVE_HOST", "127.0.0.1")
    port = int(os.environ.get("TRAINYARD_SERVE_PORT", "0"))
    max_body = int(os.environ.get("TRAINYARD_SERVE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
    model = Model()
    try:
        server = Server((host, port), model, secret, max_body, _instance(argv))
    except OSError as error:
        print(f"trainyard server: cannot listen on {host}:{port}: {error}", file=sys.stderr)
        return EXIT_PORT_TAKEN if error.errno == errno.EADDRINUSE else 1
    serving = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    serving.start()
    print(f"trainyard server: listening on {host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        model.load()
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        print("trainyard server: Main() could not be built", file=sys.stderr, flush=True)
        server.shutdown()
        server.server_close()
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    print("trainyard server: the model is loaded", file=sys.stderr, flush=True)
    stopping.wait()
    server.shutdown()  # no new connection
    model.finish(FINISH_SECONDS)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
