"""The poll's database work, one interface (`PollStore`) and its two implementations side by side.

A poll's unit: the agent's token looked up (`AGENT_BY_TOKEN`, with the columns the poll needs) and
compared in constant time; then, when it takes, the machine seen (`last_seen_at` at most once per
`SEEN_RESOLUTION`), its runs' offline flag cleared when set, the pending commands read and marked
delivered, committed; nothing written, nothing to commit. The statements are written once, as
SQLAlchemy Core: PostgreSQL runs them on one `AsyncConnection`; SQLite runs the same statements,
compiled for sqlite3 once, as one call on the pool's connection (`api/core/sqlite.py`: through
SQLAlchemy's async layer this unit cost 0.7 ms of CPU, as one call 0.2: docs/benchmarks.md).
`tests/api/test_hot_stores.py` runs both on the same inputs and compares their answers and rows.
"""

import sqlite3
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Protocol

from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from api.agent_routes.service import CLEAR_OFFLINE, MARK_SEEN, MAX_COMMANDS_PER_POLL, SEEN_RESOLUTION
from api.core.security import AGENT_BY_TOKEN, holds_agent_token
from api.core.sqlite import committed, on_sqlite_connection, read_back, sqlite_statement
from api.models import AgentCommand, Machine, Run
from api.models.base import utcnow
from api.runs.lifecycle import UNTAKEN_COMMAND_STATES
from shared.enums import CommandKind, CommandState
from shared.protocol import Command

_UNTAKEN = [s.value for s in UNTAKEN_COMMAND_STATES]

BY_TOKEN = AGENT_BY_TOKEN.add_columns(
    Machine.last_seen_at,
    exists().where(Run.machine_id == Machine.id, Run.agent_offline.is_(True)).label("runs_offline"),
)
PENDING = (
    select(
        AgentCommand.id,
        AgentCommand.kind,
        AgentCommand.run_id,
        AgentCommand.service_id,
        AgentCommand.created_at,
        AgentCommand.payload,
    )
    .where(AgentCommand.machine_id == bindparam("machine"), AgentCommand.state.in_(_UNTAKEN))
    .order_by(AgentCommand.id)
    .limit(MAX_COMMANDS_PER_POLL)
)
DELIVER = (
    update(AgentCommand)
    .where(AgentCommand.id.in_(bindparam("ids", expanding=True)), AgentCommand.state.in_(_UNTAKEN))
    .values(
        state=CommandState.DELIVERED.value,
        delivered_at=bindparam("now"),
        delivery_count=AgentCommand.delivery_count + 1,
    )
)


@dataclass(frozen=True, slots=True)
class Taken:
    """What a poll's unit found: the machine whose agent polled, and the commands it took."""

    machine_id: uuid.UUID
    commands: list[Command]


class PollStore(Protocol):
    async def poll(self, digest: str, take: bool) -> Taken | None:
        """The machine whose agent token's HMAC is `digest` (None: no machine's) and, when `take`, its
        pending commands, marked delivered with the machine seen, committed."""
        ...


def _stale(last_seen_at: datetime | None, now: datetime) -> bool:
    return last_seen_at is None or now - last_seen_at > SEEN_RESOLUTION


def _command(
    command_id: uuid.UUID,
    kind: str,
    run_id: uuid.UUID | None,
    service_id: uuid.UUID | None,
    created_at: datetime,
    payload: dict[str, Any],
) -> Command:
    """A run's command carries `run_id`, a service's `service_id` (agent_commands holds exactly one)."""
    return Command(
        id=command_id,
        kind=CommandKind(kind),
        run_id=run_id,
        service_id=service_id,
        created_at=created_at,
        payload=payload,
    )


class PostgresPolls:
    """The Core statements on one `AsyncConnection` of the engine's."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def poll(self, digest: str, take: bool) -> Taken | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(BY_TOKEN, {"digest": digest})).first()
            if row is None or not holds_agent_token(row.token_hmac, digest):
                return None
            if not take:
                return Taken(row.id, [])
            machine = {"machine": row.id}
            now = utcnow()
            wrote = False
            if _stale(row.last_seen_at, now):
                await connection.execute(
                    MARK_SEEN, {**machine, "seen_before": now - SEEN_RESOLUTION, "now": now}
                )
                wrote = True
            if row.runs_offline:
                await connection.execute(CLEAR_OFFLINE, machine)
                wrote = True
            rows = (await connection.execute(PENDING, machine)).all()
            if rows:
                await connection.execute(DELIVER, {"ids": [r.id for r in rows], "now": now})
                wrote = True
            if wrote:
                await connection.commit()
        return Taken(row.id, [_command(*r) for r in rows])


_SQLITE_BY_TOKEN = sqlite_statement(BY_TOKEN)
_SQLITE_MARK_SEEN = sqlite_statement(MARK_SEEN)
_SQLITE_CLEAR_OFFLINE = sqlite_statement(CLEAR_OFFLINE)
_SQLITE_PENDING = sqlite_statement(PENDING)


@cache
def _sqlite_deliver(count: int) -> Any:
    return sqlite_statement(DELIVER, ids=count)


_Found = tuple[Any, list[tuple[Any, ...]]]  # the machine's id as stored, and the commands' rows


def _sqlite_unit(db: sqlite3.Connection, digest: str, take: bool, now: datetime) -> _Found | None:
    """The unit on sqlite3: committed if it wrote anything, rolled back on any error. Values go in
    through the columns' types (`SqliteStatement.parameters`); times are stored as text that sorts as
    they do, which `MARK_SEEN`'s comparison relies on as on the ORM's path."""
    found = db.execute(_SQLITE_BY_TOKEN.sql, _SQLITE_BY_TOKEN.parameters({"digest": digest})).fetchone()
    if found is None or not holds_agent_token(found[2], digest):
        return None
    machine_key, _, _, last_seen_at, runs_offline = found
    if not take:
        return machine_key, []
    machine_id = _uuid(machine_key)
    machine = {"machine": machine_id}

    def writes() -> list[tuple[Any, ...]]:
        if _stale(_time(last_seen_at), now):
            seen = {**machine, "seen_before": now - SEEN_RESOLUTION, "now": now}
            db.execute(_SQLITE_MARK_SEEN.sql, _SQLITE_MARK_SEEN.parameters(seen))
        if runs_offline:
            db.execute(_SQLITE_CLEAR_OFFLINE.sql, _SQLITE_CLEAR_OFFLINE.parameters(machine))
        rows = db.execute(_SQLITE_PENDING.sql, _SQLITE_PENDING.parameters(machine)).fetchall()
        if rows:
            deliver = _sqlite_deliver(len(rows))
            db.execute(deliver.sql, deliver.parameters({"ids": [_uuid(r[0]) for r in rows], "now": now}))
        return rows

    return machine_key, committed(db, writes)  # nothing written: the commit is a no-op


_COMMANDS = AgentCommand.__table__.c
_uuid = read_back(_COMMANDS.id)  # any UUID column's: a machine's id reads the same way
_time = read_back(Machine.__table__.c.last_seen_at)
_created = read_back(_COMMANDS.created_at)
_payload = read_back(_COMMANDS.payload)


class SqlitePolls:
    """The same statements compiled for sqlite3, as one call on the pool's connection."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def poll(self, digest: str, take: bool) -> Taken | None:
        now = utcnow()
        found = await on_sqlite_connection(self.engine, lambda db: _sqlite_unit(db, digest, take, now))
        if found is None:
            return None
        machine, rows = found
        commands = [
            _command(
                _uuid(row[0]),
                row[1],
                None if row[2] is None else _uuid(row[2]),
                None if row[3] is None else _uuid(row[3]),
                _created(row[4]),
                _payload(row[5]),
            )
            for row in rows
        ]
        return Taken(_uuid(machine), commands)


_stores: "weakref.WeakKeyDictionary[AsyncEngine, PollStore]" = weakref.WeakKeyDictionary()


def poll_store(engine: AsyncEngine) -> PollStore:
    """The engine's implementation, chosen once from its dialect."""
    store = _stores.get(engine)
    if store is None:
        store = _stores[engine] = (
            SqlitePolls(engine) if engine.dialect.name == "sqlite" else PostgresPolls(engine)
        )
    return store
