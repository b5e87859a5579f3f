"""Holding the agent's long-poll outside FastAPI: a held poll keeps its connection and little else.

10,000 machines' agents each hold `GET /api/v1/agent/commands?wait=30` nearly all the time. Held inside
the endpoint, each wait kept FastAPI's and Starlette's per-request state alive with it (the request
handler's exit stacks, the solved dependencies, the routers' frames): ~32 KiB a poll, where uvicorn's
own connection costs ~10. So the endpoint (api/agent_routes/router.py) stays the one implementation of
the poll: it authenticates, takes the commands and answers at once when there are any or when
`wait=0`. With none to give it leaves a `PollHold` (its listener and how long to wait) and returns;
`HeldPolls`, an ASGI middleware just outside the router, swallows that provisional answer, lets every
frame of the first pass go, and waits itself. Woken, it passes the request through the app again as a
poll that does not wait (authenticated again, commands taken as any poll takes them); at the end of the
wait, or when the agent hung up first, it answers `[]`.

The listener is registered after the first pass's look, since the look is what finds the machine, but
with the notifier's wake count read before it (`Notifier.listen`'s `since`): a command committed after
the look began has woken the listener already or will wake it. It is released only after the wait.
"""

import asyncio
import contextlib
from enum import Enum

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.notify import Wakeup

HOLD_KEY = "trainyard.poll_hold"
EMPTY_ANSWER: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-length", b"2"), (b"content-type", b"application/json")],
}


class Outcome(Enum):
    WOKEN = "woken"
    TIMED_OUT = "timed out"
    GONE = "gone"


class PollHold:
    """What the poll's first pass leaves for `HeldPolls`: the listener to wait on, and for how long."""

    __slots__ = ("after_wait", "listening", "seconds", "woken")

    def __init__(self) -> None:
        self.after_wait = False  # the second pass: answer without waiting
        self.listening: contextlib.ExitStack | None = None
        self.woken: Wakeup | None = None
        self.seconds = 0.0

    def keep(self, listening: contextlib.ExitStack, woken: Wakeup, seconds: float) -> None:
        """Hold the poll: `listening` stays registered until the wait ends."""
        self.listening, self.woken, self.seconds = listening, woken, seconds

    def release(self) -> None:
        if self.listening is not None:
            self.listening.close()
            self.listening = None


async def wait_for(woken: Wakeup, seconds: float, receive: Receive) -> Outcome:
    """Until `woken` is set, `seconds` pass, or the client disconnects, whichever comes first. One
    watcher task reads the connection for the disconnect; a timer, not a timeout scope, ends the wait."""
    outcome = Outcome.WOKEN

    def end(why: Outcome) -> None:
        nonlocal outcome
        if not woken.is_set():
            outcome = why
            woken.set()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        end(Outcome.GONE)

    watcher = asyncio.create_task(watch())
    timer = asyncio.get_running_loop().call_later(seconds, end, Outcome.TIMED_OUT)
    try:
        await woken.wait()
    finally:
        timer.cancel()
        watcher.cancel()
    return outcome


class HeldPolls:
    """Carries the wait of the poll at `path` (GET) that its endpoint left in a `PollHold`."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        hold = PollHold()
        # The second pass routes a copy of the scope as it came, not one holding the first's routing
        # state; the first routes `scope` itself, so the middlewares outside see the route it matched.
        pristine = dict(scope)
        scope[HOLD_KEY] = pristine[HOLD_KEY] = hold

        async def unless_held(message: Message) -> None:
            if hold.woken is None:
                await send(message)

        try:
            await self.app(scope, receive, unless_held)
            if hold.woken is None:  # answered (or refused) in the first pass
                return
            # What the first pass left in the scope (FastAPI's three exit stacks among it) would live
            # as long as the wait: only the route, which the metrics outside read, stays.
            for key in scope.keys() - pristine.keys() - {"route"}:
                del scope[key]
            outcome = await wait_for(hold.woken, hold.seconds, receive)
        finally:
            hold.release()
        if outcome is Outcome.WOKEN:
            hold.after_wait = True
            await self.app(pristine, receive, send)
        else:  # to an agent that hung up too: uvicorn drops it, and the metrics count it as before
            await send(EMPTY_ANSWER)
            await send({"type": "http.response.body", "body": b"[]"})
