"""Wake-ups for long-polls: a committed command wakes the agent waiting for its machine.

`Notifier` is in-process (one API process, as on SQLite). `PgNotifier` adds PostgreSQL
LISTEN/NOTIFY so a command committed by one API process wakes a poll held by another: the machine
ids are published with `pg_notify` inside the committing transaction (PostgreSQL delivers them only
if and when it commits) and a listener task on a dedicated connection wakes the local waiters.
Wake-ups fire only after the commit, so a woken poll always finds the command it was woken for.
"""

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

_NOTIFIER = "notifier"
_PENDING = "wake_machines"
CHANNEL = "trainyard_machines"
# Every key a commit wakes, published in one statement: a start wakes four (its process, project, run
# and machine), and each statement is a round trip inside the transaction (docs/benchmarks.md).
_NOTIFY = text("SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS TEXT[])) AS payload")


class Wakeup:
    """What `listen` yields: an `asyncio.Event`'s `set`, `is_set` and `wait` for its one waiter, on a bare
    future. 10,000 held polls each keep one: a future is about 100 bytes, an Event about 1 KiB (its
    waiters' deque). A wait that is cancelled (a timeout) ends it: a Wakeup is waited for once."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    def is_set(self) -> bool:
        return self._future.done() and not self._future.cancelled()

    async def wait(self) -> None:
        await self._future


class Notifier:
    # The channel committed wake-ups are published on, or None: in-process only.
    channel: str | None = None

    # How many ids' last wakes are remembered (`mark`); beyond it they are forgotten at once, and a look
    # that began before is taken as woken: a poll's second pass at worst, never a missed command.
    REMEMBERED = 8192

    def __init__(self) -> None:
        self._waiters: dict[uuid.UUID, set[Wakeup]] = defaultdict(set)
        self._wakes = 0  # wakes so far: `mark`
        self._woken_at: dict[uuid.UUID, int] = {}  # an id's last wake, as the count after it
        self._forgotten = 0  # the count when `_woken_at` was last emptied: earlier wakes are unknown
        self._loops: set[Wakeup] = set()  # waiters that are the API's own loops, not requests

    async def start(self) -> None:
        """Nothing to start in-process."""

    async def stop(self) -> None:
        """Nothing to stop in-process."""

    def payload(self, machine_id: uuid.UUID) -> str:
        return str(machine_id)

    def session_info(self) -> dict[str, Any]:
        return {_NOTIFIER: self}

    def machine_changed_after_commit(self, session: AsyncSession, machine_id: uuid.UUID) -> None:
        session.info.setdefault(_PENDING, set()).add(machine_id)

    def run_changed_after_commit(self, session: AsyncSession, run_id: uuid.UUID) -> None:
        """New telemetry of a run: wakes who follows its log. Keys are ids, and a run's id is never a
        machine's, so one hub carries both kinds of wake-up."""
        self.machine_changed_after_commit(session, run_id)

    def wake(self, machine_ids: set[uuid.UUID]) -> None:
        self._wakes += 1
        if len(self._woken_at) >= self.REMEMBERED:
            self._forget()
        for machine_id in machine_ids:
            self._woken_at[machine_id] = self._wakes
            for waiter in self._waiters.get(machine_id, ()):
                waiter.set()

    def wake_all(self) -> None:
        """Every waiter, and every look under way (`mark`): whatever committed, for any machine."""
        self._wakes += 1
        self._forget()
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    def _forget(self) -> None:
        self._woken_at.clear()
        self._forgotten = self._wakes

    def mark(self) -> int:
        """The wake counter, for a look for commands about to begin: `listen(machine, since=mark)`."""
        return self._wakes

    def woken_since(self, machine_id: uuid.UUID, mark: int) -> bool:
        """Whether `machine_id` may have been woken after `mark` (yes, when that is no longer known)."""
        return mark < self._forgotten or self._woken_at.get(machine_id, 0) > mark

    @property
    def waiting(self) -> int:
        """Requests held waiting (one listening on several keys counts once); the API's own loops
        (`listen(..., request=False)`) are not requests and are not counted."""
        held = {waiter for waiters in self._waiters.values() for waiter in waiters}
        return len(held - self._loops)

    @contextmanager
    def listen(self, *keys: uuid.UUID, since: int | None = None, request: bool = True) -> Iterator[Wakeup]:
        """An event set when something for `machine_id` commits. Listen first, then look, then wait: a
        command committed between the look and the wait still wakes the waiter. Or `mark()` first, then
        look, then listen `since` that mark: the waiter starts woken if the machine was woken after it.

        Wakes come after the commit (`_wake_after_commit`; from another process, when its
        notification arrives, later still). So a command the look did not see committed after the
        look began, after the mark, and its wake comes after the mark too: before the listen, it is
        remembered and the waiter starts woken; after it, it wakes the waiter. A wake after the mark
        for a command the look did see only makes for an early second pass, which finds nothing.

        Several `keys` (a process and its latest run, say): a wake of any of them wakes the waiter."""
        waiter = Wakeup()
        if since is not None and any(self.woken_since(key, since) for key in keys):
            waiter.set()
        for key in keys:
            self._waiters[key].add(waiter)
        if not request:
            self._loops.add(waiter)
        try:
            yield waiter
        finally:
            self._loops.discard(waiter)
            for key in keys:
                waiters = self._waiters[key]
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[key]


class PgNotifier(Notifier):
    """The in-process notifier plus PostgreSQL LISTEN/NOTIFY between API processes.

    Publishing happens in the committing transaction (`_publish_before_commit`); `start()` runs the
    listener on a connection of its own (libpq `conninfo`), reconnecting with backoff. While it is
    disconnected a waiter still wakes at the end of its wait at worst; on each (re)connect every local
    waiter is woken once, so a command committed during the gap is looked for at once.
    """

    channel = CHANNEL
    RETRY_MIN_SECONDS = 0.5
    RETRY_MAX_SECONDS = 10.0
    START_TIMEOUT_SECONDS = 5.0

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self._conninfo = conninfo
        # Tags this process's own notifications: it has woken its waiters already, at commit.
        self._origin = uuid.uuid4().hex
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    def payload(self, machine_id: uuid.UUID) -> str:
        return f"{self._origin}:{machine_id}"

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def start(self) -> None:
        """Start the listener and give it a moment to LISTEN: once the app serves, it hears."""
        self._task = asyncio.create_task(self._listen_forever(), name="pg-notify-listener")
        try:
            async with asyncio.timeout(self.START_TIMEOUT_SECONDS):
                await self._listening.wait()
        except TimeoutError:
            logger.warning("not yet listening on %s; retrying in the background", self.channel)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _received(self, payload: str) -> None:
        origin, _, machine = payload.partition(":")
        if origin == self._origin:
            return
        try:
            machine_id = uuid.UUID(machine)
        except ValueError:
            logger.warning("ignoring a malformed notification on %s: %r", self.channel, payload)
            return
        self.wake({machine_id})

    async def _listen_forever(self) -> None:
        import psycopg  # here, not at the top: an API on SQLite never loads it (~9 MiB)

        delay = self.RETRY_MIN_SECONDS
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {self.channel}")
                    self._listening.set()
                    delay = self.RETRY_MIN_SECONDS
                    self.wake_all()  # whatever was published while we were not listening
                    async for notification in conn.notifies():
                        self._received(notification.payload)
                    # notifies() ends only when the connection is closed under it
                    raise psycopg.OperationalError("the listening connection closed")
            except (psycopg.Error, OSError) as error:
                self._listening.clear()
                logger.warning("LISTEN %s lost (%s); reconnecting in %.1f s", self.channel, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.RETRY_MAX_SECONDS)


def changed_after_commit(session: AsyncSession | Session, *keys: uuid.UUID) -> None:
    """Wake, once `session` commits, whoever waits on any of `keys` (a run's, a process's, a
    project's id: ids never collide, so one hub carries every kind). Nothing when the session has no
    notifier (a script's own session) or rolls back. The notifier is the one the session was made
    with (`session_info`), so a domain needs no handle on it to say that something changed."""
    if session.info.get(_NOTIFIER) is not None:
        session.info.setdefault(_PENDING, set()).update(keys)


@event.listens_for(Session, "before_commit")
def _publish_before_commit(session: Session) -> None:
    """NOTIFY in the committing transaction: PostgreSQL delivers it on commit, never on rollback."""
    pending: set[uuid.UUID] = session.info.get(_PENDING, set())
    notifier: Notifier | None = session.info.get(_NOTIFIER)
    if not pending or notifier is None or notifier.channel is None:
        return
    payloads = [notifier.payload(machine_id) for machine_id in sorted(pending)]
    session.execute(_NOTIFY, {"channel": notifier.channel, "payloads": payloads})


@event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    pending: set[uuid.UUID] = session.info.pop(_PENDING, set())
    notifier: Notifier | None = session.info.get(_NOTIFIER)
    if pending and notifier is not None:
        notifier.wake(pending)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)
