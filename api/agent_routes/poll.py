"""The agent's long-poll, the API's hottest path: 10,000 machines' agents each re-poll every 30 s.

So it is built for the cost of one poll, in CPU as it arrives and in memory while it is held: no
session, no ORM object, no connection across the wait, and a write only when something changed. Its
database work (the token's lookup, the machine seen, its runs' offline flag cleared, the pending
commands read and marked delivered, the commit) is one unit: on SQLite one call on aiosqlite's thread,
straight on sqlite3 (as the telemetry batch, `api/telemetry/ingest.py`: through SQLAlchemy's async
layer each statement, checkout and return was a hand-off between threads and a greenlet); on
PostgreSQL Core statements on one `AsyncConnection`. What it decides for a machine's liveness is what
`service.mark_seen` decides for `hello`.

The machine is known only once that unit has run, so its waiter cannot be registered before the look
for commands. Instead the poll reads the notifier's wake counter before it (`Notifier.mark`) and
registers its waiter with it (`Notifier.listen(..., since=mark)`): a wake of the machine after that
value, a command committed after the look, wakes the waiter at once (api/core/notify.py).
"""

import hmac
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Annotated, Any, NoReturn

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from api.agent_routes.service import (
    CLEAR_OFFLINE,
    MARK_SEEN,
    MAX_COMMANDS_PER_POLL,
    SEEN_RESOLUTION,
    seen_parameters,
)
from api.core.db import committed, on_sqlite_thread, read_back, stored
from api.core.notify import Notifier
from api.core.security import bearer_digest, bearer_scheme, refuse_as_agent
from api.models import AgentCommand, Machine, Run
from api.models.base import utcnow
from api.runs.lifecycle import UNTAKEN_COMMAND_STATES
from shared.enums import CommandKind, CommandState
from shared.protocol import MAX_POLL_WAIT_SECONDS, Command

_UNTAKEN = [s.value for s in UNTAKEN_COMMAND_STATES]

# PostgreSQL: Core statements, their compiled forms cached by SQLAlchemy.
_MACHINE_SEEN = select(
    Machine.id,
    Machine.token_hmac,
    Machine.last_seen_at,
    exists().where(Run.machine_id == Machine.id, Run.agent_offline.is_(True)).label("runs_offline"),
)
_BY_TOKEN = _MACHINE_SEEN.where(Machine.token_hmac == bindparam("digest"))
_PENDING = (
    select(
        AgentCommand.id, AgentCommand.kind, AgentCommand.run_id, AgentCommand.created_at, AgentCommand.payload
    )
    .where(AgentCommand.machine_id == bindparam("machine"), AgentCommand.state.in_(_UNTAKEN))
    .order_by(AgentCommand.id)
    .limit(MAX_COMMANDS_PER_POLL)
)
_DELIVER = (
    update(AgentCommand)
    .where(AgentCommand.id.in_(bindparam("ids", expanding=True)), AgentCommand.state.in_(_UNTAKEN))
    .values(
        state=CommandState.DELIVERED.value,
        delivered_at=bindparam("now"),
        delivery_count=AgentCommand.delivery_count + 1,
    )
)

# SQLite: the same statements for sqlite3 itself. Values go in as SQLAlchemy's column types store them
# (`_processor`: a UUID as hex, a time as text) and come out through the same types.
_IN_UNTAKEN = f"state IN ({', '.join(repr(state) for state in _UNTAKEN)})"
_SQLITE_BY_TOKEN = (
    "SELECT m.id, m.token_hmac, m.last_seen_at, EXISTS (SELECT 1 FROM runs r WHERE r.machine_id = m.id "
    "AND r.agent_offline = 1) FROM machines m WHERE m.token_hmac = ?"
)
_SQLITE_MARK_SEEN = (
    "UPDATE machines SET last_seen_at = ? WHERE id = ? AND (last_seen_at IS NULL OR last_seen_at < ?)"
)
_SQLITE_CLEAR_OFFLINE = "UPDATE runs SET agent_offline = 0 WHERE machine_id = ? AND agent_offline = 1"
_SQLITE_PENDING = (
    "SELECT id, kind, run_id, created_at, payload FROM agent_commands "
    f"WHERE machine_id = ? AND {_IN_UNTAKEN} ORDER BY id LIMIT {MAX_COMMANDS_PER_POLL}"
)


@cache
def _sqlite_deliver(count: int) -> str:
    return (
        f"UPDATE agent_commands SET state = '{CommandState.DELIVERED.value}', delivered_at = ?, "
        f"delivery_count = delivery_count + 1 WHERE id IN ({', '.join(['?'] * count)}) AND {_IN_UNTAKEN}"
    )


@dataclass(frozen=True, slots=True)
class Poll:
    """A poll's pass: the machine whose agent polled and the commands it takes, and the notifier's wake
    counter as it was before the look (`Notifier.mark`)."""

    machine_id: uuid.UUID
    commands: list[Command]
    mark: int


def _wait_is_valid(request: Request) -> bool:
    """Whether the endpoint will take the query's `wait` (`Query(ge=0, le=MAX_POLL_WAIT_SECONDS)`). The
    poll authenticates before FastAPI validates the query, as any dependency: a poll it will refuse
    with 422 (after a valid token) takes nothing."""
    raw = request.query_params.get("wait")
    if raw is None:
        return True
    try:
        return 0 <= float(raw) <= MAX_POLL_WAIT_SECONDS
    except ValueError:
        return False


async def polling_agent(
    request: Request,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Poll:
    """The poll's database work, in one unit, with `CurrentAgent`'s answers (401, 403
    `agent_token_required`): the token's HMAC looked up at every poll (a revoked or rotated token is
    refused at once) and compared in constant time; then the machine seen, its runs' offline flag
    cleared, every command not yet acknowledged delivered (at least once; the agent dedups by id),
    committed; nothing written, nothing to commit."""
    digest = bearer_digest(request)
    app = request.app
    engine: AsyncEngine = app.state.engine
    notifier: Notifier = app.state.notifier
    take = _wait_is_valid(request)
    mark = notifier.mark()  # before the look: see `Notifier.listen`
    if engine.dialect.name == "sqlite":
        poll = await _on_sqlite(engine, digest, take, mark)
    else:
        async with engine.connect() as connection:
            poll = await _on_connection(connection, digest, take, mark)
    if poll is None:
        await _refuse(app.state.sessionmaker, digest)
    return poll


PollingAgentDep = Annotated[Poll, Depends(polling_agent)]


async def _refuse(sessionmaker: async_sessionmaker[AsyncSession], digest: str) -> NoReturn:
    async with sessionmaker() as session:
        await refuse_as_agent(session, digest)


def _stale(last_seen_at: datetime | None, now: datetime) -> bool:
    return last_seen_at is None or now - last_seen_at > SEEN_RESOLUTION


async def _on_connection(connection: AsyncConnection, digest: str, take: bool, mark: int) -> Poll | None:
    row = (await connection.execute(_BY_TOKEN, {"digest": digest})).first()
    if row is None or not row.token_hmac or not hmac.compare_digest(row.token_hmac, digest):
        return None
    if not take:
        return Poll(row.id, [], mark)
    machine = {"machine": row.id}
    now = utcnow()
    wrote = False
    if _stale(row.last_seen_at, now):
        await connection.execute(MARK_SEEN, seen_parameters(row.id))
        wrote = True
    if row.runs_offline:
        await connection.execute(CLEAR_OFFLINE, machine)
        wrote = True
    rows = (await connection.execute(_PENDING, machine)).all()
    if rows:
        await connection.execute(_DELIVER, {"ids": [r.id for r in rows], "now": now})
        wrote = True
    if wrote:
        await connection.commit()
    return Poll(row.id, [_command(*r) for r in rows], mark)


def _command(
    command_id: uuid.UUID, kind: str, run_id: uuid.UUID, created_at: datetime, payload: dict[str, Any]
) -> Command:
    return Command(
        id=command_id, kind=CommandKind(kind), run_id=run_id, created_at=created_at, payload=payload
    )


_Found = tuple[Any, list[tuple[Any, ...]]]  # the machine's id as stored, and the commands' rows


def _sqlite_poll(
    db: sqlite3.Connection, digest: str, take: bool, now: str, seen_before: str
) -> _Found | None:
    """The poll on sqlite3, on aiosqlite's thread: the token's machine, and when `take`, what the poll
    writes, committed if it wrote anything, rolled back on any error. Times are stored as text that
    sorts as they do (SQLAlchemy's format, which `MARK_SEEN`'s comparison relies on as well)."""
    found = db.execute(_SQLITE_BY_TOKEN, (digest,)).fetchone()
    if found is None or not found[1] or not hmac.compare_digest(found[1], digest):
        return None
    machine, _, last_seen_at, runs_offline = found
    if not take:
        return machine, []

    def writes() -> list[tuple[Any, ...]]:
        if last_seen_at is None or last_seen_at < seen_before:
            db.execute(_SQLITE_MARK_SEEN, (now, machine, seen_before))
        if runs_offline:
            db.execute(_SQLITE_CLEAR_OFFLINE, (machine,))
        rows = db.execute(_SQLITE_PENDING, (machine,)).fetchall()
        if rows:
            db.execute(_sqlite_deliver(len(rows)), [now, *(row[0] for row in rows)])
        return rows

    rows = committed(db, writes)  # nothing written: the commit is a no-op
    return machine, rows


async def _on_sqlite(engine: AsyncEngine, digest: str, take: bool, mark: int) -> Poll | None:
    """`_sqlite_poll` as one call on aiosqlite's thread, the one that owns the connection, on a connection
    of the engine's pool (returned after it, rolled back as the pool does)."""
    dialect = engine.dialect
    now = utcnow()
    stored_time = stored(dialect, Machine.__table__.c.last_seen_at)
    now_stored, seen_before = stored_time(now), stored_time(now - SEEN_RESOLUTION)
    found: _Found | None = await on_sqlite_thread(
        engine, lambda db: _sqlite_poll(db, digest, take, now_stored, seen_before)
    )
    if found is None:
        return None
    machine, rows = found
    columns = AgentCommand.__table__.c
    uuid_of, time_of = read_back(dialect, columns.id), read_back(dialect, columns.created_at)
    payload_of = read_back(dialect, columns.payload)
    commands = [
        _command(uuid_of(row[0]), row[1], uuid_of(row[2]), time_of(row[3]), payload_of(row[4]))
        for row in rows
    ]
    return Poll(read_back(dialect, Machine.__table__.c.id)(machine), commands, mark)
