"""Storing a telemetry batch: exactly once per (run, seq), in order, a few statements per batch.

The batch is admitted by one compare-and-set on `run_telemetry.acked_through` (from seq - 1 to seq;
the first batch creates the row with an upsert): a repeat finds it moved already and changes nothing;
a batch from beyond a gap finds it short and is refused with the missing seqs. The same statement
numbers the batch's points and lines (it returns the run's counters), and on PostgreSQL it holds the
row's lock until commit, so batches of one run are stored one after the other whatever the number of
API processes.

Then one statement updates and creates the batch's series (it returns their ids and counts), one
stores its points, one upserts its rollup rows (docs/telemetry.md), one its lines, one the run's
progress. The per-point work (grouping by series, the rollups, the columns the driver reads) is
numpy's. The unit is the engine's `BatchStore`, its two implementations side by side:
`SqliteBatches` runs the whole of it, commit included, as one call on sqlite3 (`api/core/sqlite.py`:
through SQLAlchemy's aiosqlite adapter every statement is a hand-off between threads, 25 % more CPU a
5,000-point batch); `PostgresBatches` runs the statements under `run_sync`, a round trip a statement, in
a session of the route's own, committed as the session dependency would. `tests/api/test_hot_stores.py`
compares the two; bench/telemetry.py measures them against raw `executemany`.
"""

import re
import sqlite3
import uuid
import weakref
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from typing import Any, NamedTuple, Protocol

import numpy as np
from sqlalchemy import Connection, Dialect, and_, bindparam
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.core.errors import NotFound
from api.core.notify import Notifier
from api.core.security import AGENT_BY_TOKEN, holds_agent_token, refuse_as_agent
from api.core.sqlite import committed, on_sqlite_connection, sqlite_statement, stored
from api.models import Machine, Run, RunTelemetry
from api.models.base import utcnow
from api.telemetry.downsample import rollup_rows
from api.telemetry.wire import Batch
from shared.enums import ACTIVE_RUN_STATUSES, RunStatus
from shared.protocol import TelemetryReply

MAX_MISSING_LISTED = 1000

# Statements of both databases are written with `:name` parameters (sqlite3's); PostgreSQL's are
# derived from them. The run's statuses are the enum's values, inlined.
_COUNTERS = (
    "acked_through = :seq, point_count = {0}point_count + :points, log_count = {0}log_count + :lines, "
    "updated_at = :now"
)
_ADMIT = (
    f"UPDATE run_telemetry SET {_COUNTERS.format('')} WHERE run_id = :run AND acked_through = :previous "
    "RETURNING point_count, log_count"
)
_FIRST_ADMIT = (  # the row at 0 can be left by a refused batch of an older version
    "INSERT INTO run_telemetry (run_id, acked_through, point_count, log_count, updated_at) "
    "VALUES (:run, :seq, :points, :lines, :now) ON CONFLICT (run_id) DO UPDATE SET "
    f"{_COUNTERS.format('run_telemetry.')} WHERE run_telemetry.acked_through = 0 "
    "RETURNING point_count, log_count"
)
_ACKED = "SELECT acked_through FROM run_telemetry WHERE run_id = :run"
# The agent's token (`AGENT_BY_TOKEN`, the one agent authentication) and its run, in one statement: no
# row, not an agent; no status, not its run.
AGENT_RUN = AGENT_BY_TOKEN.add_columns(Run.status).outerjoin(
    Run, and_(Run.id == bindparam("run"), Run.machine_id == Machine.id)
)
_SQLITE_AGENT_RUN = sqlite_statement(AGENT_RUN)
_PROGRESS = (  # the run's progress and ETA as the batch says; its stage only when the batch names one
    "UPDATE runs SET progress = :progress, eta_seconds = :eta, stage = coalesce(:stage, stage) "
    f"WHERE id = :run AND status IN ({', '.join(repr(s.value) for s in ACTIVE_RUN_STATUSES)})"
)

_POINT_COLUMNS = "series_id, idx, step, value, time"
_ROLLUP_COLUMNS = (
    "series_id, level, bucket, count, min_idx, min_step, min_value, min_time, "
    "max_idx, max_step, max_value, max_time"
)
_ROLLUP_MERGE = " ON CONFLICT (series_id, level, bucket) DO UPDATE SET count = metric_rollups.count + " + (
    "excluded.count, "
    + ", ".join(
        f"{side}_{column} = CASE WHEN excluded.{side}_value {op} metric_rollups.{side}_value "
        f"THEN excluded.{side}_{column} ELSE metric_rollups.{side}_{column} END"
        for side, op in (("min", "<"), ("max", ">"))
        for column in ("idx", "step", "time", "value")  # every SET expression reads the old row
    )
)
_SERIES_MERGE = (
    "count = {0}.count + {1}.count, last_step = coalesce({1}.last_step, {0}.last_step), "
    "last_value = coalesce({1}.last_value, {0}.last_value), "
    "last_time = coalesce({1}.last_time, {0}.last_time)"
)

# SQLite: rows go in CHUNK_ROWS at a time, one prepared statement of that many rows executed by
# sqlite3 in C for each chunk (25 to 30 % faster than a statement a row); the rows left over, one a row.
CHUNK_ROWS = {"metric_points": 500, "metric_rollups": 64, "run_log_lines": 64}
_POINTS = ("metric_points", _POINT_COLUMNS, "")
_ROLLUPS = ("metric_rollups", _ROLLUP_COLUMNS, _ROLLUP_MERGE)
_LINES = ("run_log_lines", "run_id, idx, stream, time, text", "")


@cache
def _sqlite_insert(table: str, columns: str, tail: str, rows: int) -> str:
    """An INSERT of `rows` rows, its parameters numbered column after column (`_chunks`)."""
    width = columns.count(",") + 1
    values = ", ".join(
        "(" + ", ".join(f"?{c * rows + r + 1}" for c in range(width)) + ")" for r in range(rows)
    )
    return f"INSERT INTO {table} ({columns}) VALUES {values}{tail}"


def _chunks(columns: list[list[Any]], rows: int) -> Iterator[list[Any]]:
    """The whole chunks of `rows` rows of `columns`, each as the parameters of `_sqlite_insert`."""
    for start in range(0, len(columns[0]) - rows + 1, rows):
        chunk: list[Any] = []
        for column in columns:
            chunk += column[start : start + rows]
        yield chunk


@cache
def _sqlite_series(rows: int) -> str:
    """The series' upsert, one statement for `rows` names (at most 1,024: 6,144 parameters)."""
    return (
        "INSERT INTO metric_series (run_id, name, count, last_step, last_value, last_time) VALUES "
        + ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
        + " ON CONFLICT (run_id, name) DO UPDATE SET "
        + _SERIES_MERGE.format("metric_series", "excluded")
        + " RETURNING name, id, count"
    )


@cache
def _pg(statement: str) -> str:
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", statement)


# PostgreSQL: one statement over arrays each. The series are updated, then the names not found
# inserted, in one statement: an upsert would draw a value of the id sequence for every series of
# every batch, and exhaust an integer sequence within days.
_PG_SERIES = (
    "WITH v AS (SELECT * FROM unnest(%(names)s::text[], %(counts)s::integer[], %(steps)s::float8[], "
    "%(values)s::float8[], %(times)s::float8[]) AS v(name, count, last_step, last_value, last_time)), "
    f"updated AS (UPDATE metric_series s SET {_SERIES_MERGE.format('s', 'v')} "
    "FROM v WHERE s.run_id = %(run)s AND s.name = v.name RETURNING s.name, s.id, s.count), "
    "created AS (INSERT INTO metric_series (run_id, name, count, last_step, last_value, last_time) "
    "SELECT %(run)s, v.* FROM v WHERE v.name NOT IN (SELECT name FROM updated) RETURNING name, id, count) "
    "SELECT * FROM updated UNION ALL SELECT * FROM created"
)
_PG_POINTS = (
    f"INSERT INTO metric_points ({_POINT_COLUMNS}) SELECT * FROM "
    "unnest(%s::integer[], %s::integer[], %s::float8[], %s::float8[], %s::float8[])"
)
_PG_ROLLUPS = (
    f"INSERT INTO metric_rollups ({_ROLLUP_COLUMNS}) SELECT * FROM unnest(%s::integer[], "
    "%s::smallint[], %s::integer[], %s::integer[], %s::integer[], %s::float8[], %s::float8[], "
    "%s::float8[], %s::integer[], %s::float8[], %s::float8[], %s::float8[])" + _ROLLUP_MERGE
)
_PG_LINES = (
    "INSERT INTO run_log_lines (run_id, idx, stream, time, text) SELECT %s, * FROM "
    "unnest(%s::integer[], %s::text[], %s::float8[], %s::text[])"
)


class _Database(Protocol):
    """The statements of a batch, on one database: each a call, none of them committing."""

    def agent_run(self, digest: str, run_id: uuid.UUID) -> tuple[str | None, str | None] | None:
        """`AGENT_RUN`'s token HMAC and run status (None: no machine holds `digest`)."""
        ...

    def row(self, statement: str, parameters: dict[str, Any]) -> Sequence[Any] | None: ...

    def execute(self, statement: str, parameters: dict[str, Any]) -> None: ...

    def series(self, run: Any, names: list[str], columns: list[list[Any]]) -> Iterable[Sequence[Any]]: ...

    def points(self, columns: list[list[Any]]) -> None: ...

    def rollups(self, columns: list[list[Any]]) -> None: ...

    def lines(self, run: Any, columns: list[list[Any]]) -> None: ...


class _Sqlite:
    """sqlite3 itself, on aiosqlite's thread, in the transaction SQLAlchemy began."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def agent_run(self, digest: str, run_id: uuid.UUID) -> tuple[str | None, str | None] | None:
        parameters = _SQLITE_AGENT_RUN.parameters({"digest": digest, "run": run_id})
        found = self.db.execute(_SQLITE_AGENT_RUN.sql, parameters).fetchone()
        return None if found is None else (found[2], found[3])

    def row(self, statement: str, parameters: dict[str, Any]) -> Sequence[Any] | None:
        found: Sequence[Any] | None = self.db.execute(statement, parameters).fetchone()
        return found

    def execute(self, statement: str, parameters: dict[str, Any]) -> None:
        self.db.execute(statement, parameters)

    def series(self, run: Any, names: list[str], columns: list[list[Any]]) -> Iterable[Sequence[Any]]:
        values = [v for row in zip([run] * len(names), names, *columns, strict=True) for v in row]
        return self.db.execute(_sqlite_series(len(names)), values).fetchall()

    def points(self, columns: list[list[Any]]) -> None:
        self._insert(_POINTS, columns)

    def rollups(self, columns: list[list[Any]]) -> None:
        self._insert(_ROLLUPS, columns)

    def _insert(self, statement: tuple[str, str, str], columns: list[list[Any]]) -> None:
        rows = CHUNK_ROWS[statement[0]]
        self.db.executemany(_sqlite_insert(*statement, rows), _chunks(columns, rows))
        left = len(columns[0]) % rows
        if left:
            rest = (column[len(column) - left :] for column in columns)
            self.db.executemany(_sqlite_insert(*statement, 1), zip(*rest, strict=True))

    def lines(self, run: Any, columns: list[list[Any]]) -> None:
        self._insert(_LINES, [[run] * len(columns[0]), *columns])


class _Postgres:
    """psycopg through SQLAlchemy's connection, under `run_sync`: a round trip a statement."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def agent_run(self, digest: str, run_id: uuid.UUID) -> tuple[str | None, str | None] | None:
        found = self.connection.execute(AGENT_RUN, {"digest": digest, "run": run_id}).first()
        return None if found is None else (found.token_hmac, found.status)

    def row(self, statement: str, parameters: dict[str, Any]) -> Sequence[Any] | None:
        return self.connection.exec_driver_sql(_pg(statement), parameters).first()

    def execute(self, statement: str, parameters: dict[str, Any]) -> None:
        self.connection.exec_driver_sql(_pg(statement), parameters)

    def series(self, run: Any, names: list[str], columns: list[list[Any]]) -> Iterable[Sequence[Any]]:
        counts, steps, values, times = columns
        parameters = {"names": names, "counts": counts, "steps": steps, "values": values, "times": times}
        return self.connection.exec_driver_sql(_PG_SERIES, {**parameters, "run": run}).all()

    def points(self, columns: list[list[Any]]) -> None:
        self.connection.exec_driver_sql(_PG_POINTS, tuple(columns))

    def rollups(self, columns: list[list[Any]]) -> None:
        self.connection.exec_driver_sql(_PG_ROLLUPS, tuple(columns))

    def lines(self, run: Any, columns: list[list[Any]]) -> None:
        self.connection.exec_driver_sql(_PG_LINES, (run, *columns))


class _Outcome(NamedTuple):
    agent: bool  # the token is a machine's
    status: str | None = None  # the run's, None when the machine has no such run
    acked: int | None = None  # what the run has when the batch was not stored now, else None


def _store(db: _Database, digest: str, run_id: uuid.UUID, run: Any, now: Any, batch: Batch) -> _Outcome:
    """The batch's statements, from the agent's token to the run's progress (`run`: the run's id as
    the database stores it)."""
    found = db.agent_run(digest, run_id)
    if found is None or not holds_agent_token(found[0], digest):
        return _Outcome(agent=False)
    if found[1] is None:
        return _Outcome(agent=True)
    status = found[1]
    n_points, n_lines = len(batch.value), len(batch.logs.text)
    admit = {"run": run, "seq": batch.seq, "previous": batch.seq - 1, "now": now}
    counters = db.row(
        _FIRST_ADMIT if batch.seq == 1 else _ADMIT, {**admit, "points": n_points, "lines": n_lines}
    )
    if counters is None:
        acked = db.row(_ACKED, {"run": run})
        return _Outcome(True, status, 0 if acked is None else int(acked[0]))
    if n_points:
        _store_points(db, run, batch, counters[0] - n_points)
    if n_lines:
        logs, base = batch.logs, counters[1] - n_lines
        texts = [text.replace("\x00", "\\x00") for text in logs.text]
        db.lines(run, [list(range(base, base + n_lines)), list(logs.stream), list(logs.time), texts])
    if RunStatus(status) in ACTIVE_RUN_STATUSES and batch.changes_progress:
        db.execute(
            _PROGRESS,
            {"run": run, "progress": batch.progress, "eta": batch.eta_seconds, "stage": batch.stage},
        )
    return _Outcome(True, status)


def _store_points(db: _Database, run: Any, batch: Batch, base: int) -> None:
    order = np.argsort(batch.series, kind="stable")  # the points grouped by series, in order in each
    counts = np.bincount(batch.series, minlength=len(batch.names))
    last = order[np.maximum(np.cumsum(counts) - 1, 0)]  # each series' last point, if it has one
    latest = [
        [v if c else None for v, c in zip(column[last].tolist(), counts.tolist(), strict=True)]
        for column in (batch.step, batch.value, batch.time)
    ]
    found = {
        name: (sid, count) for name, sid, count in db.series(run, batch.names, [counts.tolist(), *latest])
    }
    ids = np.array([found[name][0] for name in batch.names], dtype=np.int64)
    before = np.array([found[name][1] for name in batch.names], dtype=np.int64) - counts
    rows = rollup_rows(before, counts, batch.value[order])
    low, high = order[rows.low], order[rows.high]  # where, in the batch, each row's extremes are
    columns = (batch.step, batch.value, batch.time)
    db.points(
        [ids[batch.series].tolist(), list(range(base, base + len(order))), *(c.tolist() for c in columns)]
    )
    db.rollups(
        [
            ids[rows.group].tolist(),
            rows.level.tolist(),
            rows.bucket.tolist(),
            rows.count.tolist(),
            (low + base).tolist(),
            *(c[low].tolist() for c in columns),
            (high + base).tolist(),
            *(c[high].tolist() for c in columns),
        ]
    )


def _keys(dialect: Dialect, run_id: uuid.UUID) -> tuple[Any, Any]:
    """The run's id and the time now as `dialect` stores them."""
    key = stored(RunTelemetry.__table__.c.run_id, dialect)(run_id)
    return key, stored(RunTelemetry.__table__.c.updated_at, dialect)(utcnow())


def _reply(outcome: _Outcome, run_id: uuid.UUID, batch: Batch) -> tuple[TelemetryReply, bool]:
    if outcome.status is None:
        raise NotFound(f"no run {run_id} on this machine", code="run_not_found")
    ended = RunStatus(outcome.status) not in ACTIVE_RUN_STATUSES
    if outcome.acked is not None:
        acked = outcome.acked
        missing = list(range(acked + 1, min(batch.seq, acked + 1 + MAX_MISSING_LISTED)))
        return TelemetryReply(acked_through=acked, missing=missing, stop=ended), False
    return TelemetryReply(acked_through=batch.seq, stop=ended), True


class BatchStore(Protocol):
    async def store(self, digest: str, run_id: uuid.UUID, batch: Batch) -> _Outcome:
        """`batch`'s statements as one unit, committed (nothing written unless stored now), and the
        run's followers woken after the commit when it stored points or lines."""
        ...


class SqliteBatches:
    """No session: the statements and the commit in one call on the pool's connection (through a
    session, the commit was a hand-off of its own, 0.6 to 1.3 ms a batch with SQLAlchemy's part).
    SQLite is served by one process, so the wake-up is the in-process notifier's, after the commit."""

    def __init__(self, engine: AsyncEngine, notifier: Notifier) -> None:
        self.engine, self.notifier = engine, notifier

    async def store(self, digest: str, run_id: uuid.UUID, batch: Batch) -> _Outcome:
        key, now = _keys(self.engine.dialect, run_id)
        outcome = await on_sqlite_connection(
            self.engine,
            lambda db: committed(db, lambda: _store(_Sqlite(db), digest, run_id, key, now, batch)),
        )
        if _stored(outcome) and _wakes(batch):
            self.notifier.wake({run_id})
        return outcome


class PostgresBatches:
    """A session of the route's own, the statements under `run_sync` (a round trip each), committed
    as the session dependency would; the commit publishes the wake-up to every API process
    (`api/core/notify.py`)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], notifier: Notifier) -> None:
        self.sessionmaker, self.notifier = sessionmaker, notifier

    async def store(self, digest: str, run_id: uuid.UUID, batch: Batch) -> _Outcome:
        async with self.sessionmaker() as session:
            try:
                connection = await session.connection()
                key, now = _keys(connection.dialect, run_id)
                outcome = await connection.run_sync(
                    lambda sync: _store(_Postgres(sync), digest, run_id, key, now, batch)
                )
                if _stored(outcome) and _wakes(batch):
                    self.notifier.run_changed_after_commit(session, run_id)
            except BaseException:
                await session.rollback()
                raise
            await session.commit()
        return outcome


def _stored(outcome: _Outcome) -> bool:
    return outcome.status is not None and outcome.acked is None


def _wakes(batch: Batch) -> bool:
    """Points, lines or progress: what a log follower or a waiter on the run (`wait=`) looks for."""
    return bool(len(batch.value) or len(batch.logs.text) or batch.changes_progress)


_stores: "weakref.WeakKeyDictionary[AsyncEngine, BatchStore]" = weakref.WeakKeyDictionary()


def batch_store(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], notifier: Notifier
) -> BatchStore:
    """The engine's implementation, chosen once from its dialect."""
    store = _stores.get(engine)
    if store is None:
        sqlite = engine.dialect.name == "sqlite"
        store = SqliteBatches(engine, notifier) if sqlite else PostgresBatches(sessionmaker, notifier)
        _stores[engine] = store
    return store


async def ingest(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    notifier: Notifier,
    digest: str,
    run_id: uuid.UUID,
    batch: Batch,
) -> tuple[TelemetryReply, bool]:
    """Store `batch` for the agent whose token's HMAC is `digest`, once, committed; returns the reply
    and whether it was stored now (not a repeat or refused). 401/403 for a token that is no machine's,
    as `CurrentAgent`; 404 `run_not_found` for a run that is not the machine's (neither wrote anything).

    The route's one unit of work, committed by the engine's `BatchStore` as the session dependency
    would (before the answer; rolled back if anything raises)."""
    outcome = await batch_store(engine, sessionmaker, notifier).store(digest, run_id, batch)
    if not outcome.agent:
        async with sessionmaker() as session:
            await refuse_as_agent(session, digest)
    return _reply(outcome, run_id, batch)
