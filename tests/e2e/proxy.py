"""A loopback TCP proxy for the fault suite: it stands between the agent and the API and, at seeded
random moments (drawn per request), cuts a connection (a reset, or a plain close) part way through a
request or a response, or stalls it (holds the bytes, then delivers them late, after the client may
have given up and retried). Each request draws its fault from the suite's random generator, as long as the
budget of faults lasts: after that it relays faithfully, so a run always gets through in the end.

asyncio only, bound to 127.0.0.1; no mocks: the agent and the API are the real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

KINDS = ("reset", "close", "stall")
DIRECTIONS = ("request", "response")


@dataclass
class Fault:
    kind: str  # reset: RST to both sides; close: FIN to both; stall: the bytes held `seconds`, then sent
    direction: str  # request (agent -> API) or response (API -> agent)
    after: int  # bytes of that direction relayed before the fault strikes
    seconds: float = 0.0


@dataclass
class FaultProxy:
    upstream_port: int
    rng: random.Random
    budget: int  # faults to make in all
    probability: float  # that a connection draws one, while the budget lasts
    stall_seconds: tuple[float, float]  # a stall's length is drawn from this range
    made: Counter[str] = field(default_factory=Counter)
    low_water: int = 10
    running_low: asyncio.Event = field(default_factory=asyncio.Event)  # budget <= low_water
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task

    def _draw(self, relayed: dict[str, int]) -> Fault | None:
        """A fault for the exchange a request just began, or None."""
        if self.budget <= 0 or self.rng.random() >= self.probability:
            return None
        self.budget -= 1
        if self.budget <= self.low_water:
            self.running_low.set()
        kind, direction = self.rng.choice(KINDS), self.rng.choice(DIRECTIONS)
        # Most requests and answers here are a few hundred bytes: a cut anywhere in the next 600 falls in
        # the headers, the body, or (past the end) in the next exchange of a kept-alive connection.
        after = relayed[direction] + self.rng.randrange(0, 600)
        self.made[f"{kind} {direction}"] += 1
        return Fault(kind, direction, after, self.rng.uniform(*self.stall_seconds))

    async def _accepted(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                server_in, server_out = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:  # the API is down: the agent sees its connection closed, and retries
                client_out.transport.abort()
                return
            link = _Link((client_out, server_out))
            self._writers.update(link.writers)
            await asyncio.gather(
                self._pump(client_in, server_out, "request", link),
                self._pump(server_in, client_out, "response", link),
                return_exceptions=True,
            )
            for writer in link.writers:
                writer.close()
                self._writers.discard(writer)
        finally:
            self._tasks.discard(task)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, direction: str, link: _Link
    ) -> None:
        try:
            while data := await source.read(65536):
                if direction == "request" and link.fault is None:
                    link.fault = self._draw(link.relayed)  # agent's connections are kept alive: per request
                fault = link.fault
                if fault is not None and fault.direction == direction:
                    at = link.relayed[direction]
                    if at + len(data) > fault.after:
                        link.fault = None
                        cut = fault.after - at
                        sink.write(data[:cut])
                        await sink.drain()
                        link.relayed[direction] += cut
                        if fault.kind != "stall":
                            _cut(link.writers, reset=fault.kind == "reset")
                            return
                        await asyncio.sleep(fault.seconds)  # the client may time out and retry meanwhile
                        data = data[cut:]
                link.relayed[direction] += len(data)
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except (OSError, RuntimeError):
            _cut(link.writers, reset=False)


@dataclass
class _Link:
    """One proxied connection: its two writers, the bytes relayed each way, the fault it awaits."""

    writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter]
    relayed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    fault: Fault | None = None


def _cut(writers: tuple[asyncio.StreamWriter, ...], *, reset: bool) -> None:
    for writer in writers:
        sock = writer.get_extra_info("socket")
        if reset and sock is not None:
            with contextlib.suppress(OSError):  # linger 0: close() sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
