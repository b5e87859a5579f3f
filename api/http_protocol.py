"""uvicorn's httptools protocol with a bound on a request's head (request line and header fields).

llhttp, under httptools, sets no limit of its own: an 8 MiB header was read whole, before any
authentication. h11 has one (`h11_max_incomplete_event_size`), but parses in Python, several times
the CPU per request on the agents' polls (docs/benchmarks.md) and answers 400 rather than 431. This
subclass counts the bytes received while a request's head is incomplete and, past `MAX_HEAD_BYTES`,
answers 431 `request_head_too_large` and closes the connection; what it holds of a head is at most
the limit plus one read. The number of header fields is bounded in the app (api/transport.py), so
that it holds under any server.

It leans on four methods of uvicorn's `HttpToolsProtocol` (`data_received`, `on_headers_complete`,
`on_message_complete`, `send_400_response`'s headers); `tests/api/test_transport.py` drives a real
`trainyard-api serve` with raw sockets, so an uvicorn that changed them fails there.
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
    _head_complete = False
    _head_bytes = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_complete or self.transport.is_closing():
            return
        # Counted after parsing: a read that completed the head (and may carry a body) is not a head.
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            logger.warning("Refused a request whose head is over %d bytes.", MAX_HEAD_BYTES)
            self.transport.write(_refusal(self.server_state.default_headers))
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._head_complete = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_complete = False  # the next request on this connection starts with its head
        self._head_bytes = 0
