"""A real HTTP server on loopback standing for a serving process (agent/runtime/server.py is the real
one): it answers `POST /predict` only with the bearer secret it was given, as the real one does.

Its model: a JSON body `{"raise": "..."}` raises (500 with `{"error": "ValueError: ..."}`, as the
real server answers a model that raised); any other JSON comes back as `{"instance": N, "input": ...}`;
bytes come back as text/plain, their length."""

import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: "StandIn"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        given = self.headers.get("authorization", "").encode()
        if self.path != "/predict" or not hmac.compare_digest(given, f"Bearer {self.server.secret}".encode()):
            self._send(401, b'{"error": "unauthorized"}', "application/json")
            return
        self.server.calls += 1
        if self.headers.get("content-type", "").startswith("application/json"):
            value = json.loads(body)
            if isinstance(value, dict) and "raise" in value:
                self._send(
                    500, json.dumps({"error": f"ValueError: {value['raise']}"}).encode(), "application/json"
                )
                return
            answer = {"instance": self.server.instance, "input": value}
            self._send(200, json.dumps(answer).encode(), "application/json")
            return
        self._send(200, str(len(body)).encode(), "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, secret: str, instance: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.secret = secret
        self.instance = instance
        self.calls = 0

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serving(secret: str, instance: int = 0) -> Iterator[StandIn]:
    server = StandIn(secret, instance)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
