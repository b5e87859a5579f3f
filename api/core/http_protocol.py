"""uvicorn's httptools protocol with a bound on a request's head (request line and header fields).

llhttp, under httptools, sets no limit of its own: an 8 MiB header was read whole, before any
authentication. h11 has one (`h11_max_incomplete_event_size`), but parses in Python, several times
the CPU per request on the agents' polls (docs/benchmarks.md) and answers 400 rather than 431. This
subclass counts the bytes received while a request's head is incomplete, and measures a head once
complete; past `MAX_HEAD_BYTES` it answers 431 `request_head_too_large` and closes the connection;
what it holds of a head is at most the limit plus one read. A body's bytes never count: a 1 GB
upload passes (bench/upload_memory.py sends one). The number of header fields is bounded in the app
(api/core/transport.py), so that it holds under any server.

It leans on uvicorn's `HttpToolsProtocol` (`data_received`, the parser's `on_message_begin`,
`on_headers_complete`, `on_body`, `on_message_complete`, and its `url` and `headers`);
`tests/api/test_transport.py` drives a real `trainyard-api serve` with raw sockets, so an uvicorn that
changed them fails there.
"""

import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# nginx's default is 4 buffers of 8 KiB for a request's header lines; h11's default is 16 KiB.
MAX_HEAD_BYTES = 64 * 1024

logger = logging.getLogger("uvicorn.error")


def _refusal(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = json.dumps(
        {
            "type": "urn:trainyard:problem:request_head_too_large",
            "title": "Request header fields too large",
            "status": 431,
            "detail": f"a request's line and header fields may take at most {MAX_HEAD_BYTES} bytes",
            "code": "request_head_too_large",
        }
    ).encode()
    lines = [b"HTTP/1.1 431 Request Header Fields Too Large"]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [
        b"content-type: application/problem+json",
        b"content-length: " + str(len(body)).encode(),
        b"x-content-type-options: nosniff",
        b"cache-control: no-store",
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Where the connection stands decides which of a read's bytes can be a head's.

    `_state` is "idle" (between messages), "head" (a request line begun, its fields incomplete) or
    "body". A read that starts idle or in a head and ends in a head is all head (whitespace between
    messages aside): it is counted. A read that ends a body and begins the next, pipelined, head is
    not: its head part is at most one read, and the next read counts. A head that completes within
    one read is measured from what the parser gave (`on_headers_complete`), so a large upload's
    body is never taken for a head.
    """

    _state = "idle"
    _head_bytes = 0

    def data_received(self, data: bytes) -> None:
        before = self._state
        super().data_received(data)
        if self._state != "head" or self.transport.is_closing():
            return
        if before != "body":
            self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse()

    def on_message_begin(self) -> None:
        self._state = "head"
        self._head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._state = "body"
        if self.transport.is_closing():
            return
        # The request line and each field with its separators: what the client sent, give or take
        # the whitespace llhttp trims.
        size = len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEAD_BYTES:
            self._refuse()
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._state = "idle"
        if self.transport.is_closing():
            return
        super().on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self.transport.is_closing():
            return
        super().on_body(body)

    def _refuse(self) -> None:
        logger.warning("Refused a request whose head is over %d bytes.", MAX_HEAD_BYTES)
        self.transport.write(_refusal(self.server_state.default_headers))
        self.transport.close()
