"""SQLite's fast path: a hot operation's statements as one call on sqlite3, off the event loop.

Through SQLAlchemy's async layer every statement, checkout and return on aiosqlite is a hand-off
between threads and a greenlet (docs/benchmarks.md: the poll's unit costs 0.7 ms of CPU that way,
0.2 ms as one call). So the hot operations (the agent's poll, `api/agent_routes/poll_store.py`; a
telemetry batch, `api/telemetry/ingest.py`) take the pool's one connection, and run their statements on
its sqlite3 connection in one
call on a thread of this module's: with the pool's only connection checked out, no other request uses
it meanwhile, so the thread need not be aiosqlite's (sqlite3 is told `check_same_thread=False`).

The sqlite3 connection is found by public means only: each is made by `sqlite3.connect`'s `factory`
(`_Tracked`), which registers it under a key that a SQL function of its own answers; the pool's
`connect` hook asks for the key through the pool's connection and keeps the sqlite3 connection in the
pool record's `info`, which lives as long as the connection.

Statements come from their SQLAlchemy Core forms, compiled once for SQLite (`sqlite_statement`), and
values go in and come out through the columns' own types (`stored`, `read_back`): what they store and
read is what the ORM stores and reads, written once.
"""

import asyncio
import itertools
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import cache
from queue import SimpleQueue
from typing import Any, TypeVar

from sqlalchemy import Column, Dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable
from sqlalchemy.util import greenlet_spawn

T = TypeVar("T")

_KEY_FUNCTION = "trainyard_connection_key"
_INFO_KEY = "trainyard.sqlite3"
_made: dict[int, sqlite3.Connection] = {}  # made, not yet claimed by the pool's `connect` hook
_keys = itertools.count(1)


class _Tracked(sqlite3.Connection):
    """A sqlite3 connection that can be found again: `SELECT trainyard_connection_key()` names it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        key = next(_keys)
        _made[key] = self
        self.create_function(_KEY_FUNCTION, 0, lambda: key, deterministic=True)


CONNECT_ARGS: dict[str, Any] = {"factory": _Tracked, "check_same_thread": False}


def claim_connection(dbapi_connection: Any, record: Any) -> None:
    """The pool's `connect` hook: keep the new connection's sqlite3 connection in its record."""
    cursor = dbapi_connection.cursor()
    cursor.execute(f"SELECT {_KEY_FUNCTION}()")
    (key,) = cursor.fetchone()
    cursor.close()
    record.info[_INFO_KEY] = _made.pop(key)


async def on_sqlite_connection(engine: AsyncEngine, work: Callable[[sqlite3.Connection], T]) -> T:
    """`work(sqlite3 connection)` as one call on this module's thread, on the pool's connection
    (checked out for it, so nothing else uses it meanwhile; returned after it, rolled back as the pool
    does). The pool's own connection, not an `AsyncConnection`: cheaper to take and give back.

    A caller cancelled while `work` runs (its client hung up) does not return the connection under
    it: the connection goes back once `work` is done with it."""
    connection = await engine.raw_connection()
    try:
        db: sqlite3.Connection = connection.info[_INFO_KEY]
        done = _WORKER.submit(work, db)
    except BaseException:
        await greenlet_spawn(connection.close)
        raise
    try:
        return await asyncio.shield(done)
    finally:
        if done.done():
            await greenlet_spawn(connection.close)
        else:
            done.add_done_callback(lambda _: _later(greenlet_spawn(connection.close)))


_closing: set["asyncio.Task[Any]"] = set()


def _later(closing: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(closing)
    _closing.add(task)  # held until done: the loop keeps only a weak reference to a task
    task.add_done_callback(_closing.discard)


class _Worker:
    """One thread that runs calls in turn and hands each result to its caller's loop: what aiosqlite's
    own thread does (a queue and `call_soon_threadsafe`), without a `concurrent.futures` future a call
    (`run_in_executor` cost 60 us more a poll: docs/benchmarks.md)."""

    def __init__(self) -> None:
        self._calls: SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]]
        self._calls = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def submit(self, work: Callable[[sqlite3.Connection], T], db: sqlite3.Connection) -> "asyncio.Future[T]":
        if self._thread is None:
            with self._starting:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name="trainyard-sqlite", daemon=True)
                    self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, lambda: work(db)))
        return future

    def _serve(self) -> None:
        while True:
            loop, future, call = self._calls.get()
            try:
                result = call()
            except BaseException as error:  # handed to the caller, whatever it is
                loop.call_soon_threadsafe(_fail, future, error)
            else:
                loop.call_soon_threadsafe(_succeed, future, result)


def _succeed(future: "asyncio.Future[Any]", result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: "asyncio.Future[Any]", error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


# One thread: SQLite is served by one process, through one connection (`api/core/db.py`).
_WORKER = _Worker()


def committed(db: sqlite3.Connection, work: Callable[[], T]) -> T:
    """`work()` then its commit, or its rollback if it raised: one unit of work on sqlite3 (which begins
    the transaction before the first statement that writes; with nothing written the commit is a
    no-op)."""
    try:
        result = work()
    except BaseException:
        db.rollback()
        raise
    db.commit()
    return result


_DIALECT = sqlite_dialect.dialect(paramstyle="qmark")


@dataclass(frozen=True, slots=True)
class _Slot:
    """A value of an expanding parameter (`IN :ids`): the `index`th of the list given as `name`."""

    name: str
    index: int
    processor: Callable[[Any], Any] | None = None


@dataclass(frozen=True, slots=True)
class _Given:
    """A value given at each call, by name, stored through `processor` (None: as it is)."""

    name: str
    processor: Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class SqliteStatement:
    """A Core statement as sqlite3 runs it: SQLAlchemy's SQL for SQLite, and for each `?` in turn the
    value the statement holds itself (an IN list of states, a LIMIT), stored as its column stores it,
    or where to find the one given at the call."""

    sql: str
    slots: tuple[Any, ...]  # a fixed value, `_Given`, or `_Slot`

    def parameters(self, values: Mapping[str, Any]) -> list[Any]:
        out: list[Any] = []
        for slot in self.slots:
            if isinstance(slot, _Given):
                value = values[slot.name]
                out.append(value if slot.processor is None else slot.processor(value))
            elif isinstance(slot, _Slot):
                value = values[slot.name][slot.index]
                out.append(value if slot.processor is None else slot.processor(value))
            else:
                out.append(slot)
        return out


def sqlite_statement(statement: Executable, **counts: int) -> SqliteStatement:
    """`statement` compiled for SQLite, each expanding parameter (`IN :ids`) for `counts[name]`
    values; each value given at a call is stored as its column's type stores it."""
    compiled = statement.compile(dialect=_DIALECT)  # type: ignore[attr-defined]
    parameters = compiled.construct_params(_check=False)
    for name, count in counts.items():
        parameters[name] = [_Slot(name, i) for i in range(count)]
    expanded = compiled.construct_expanded_state(parameters)
    slots: list[Any] = []
    for name in expanded.positiontup or ():
        value, processor = expanded.parameters[name], expanded.processors.get(name)
        if name in compiled.binds:  # not expanded: its processor is its type's
            bind_type = compiled.binds[name].type
            processor = bind_type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
        if isinstance(value, _Slot):
            slots.append(_Slot(value.name, value.index, processor))
        elif name in compiled.binds and compiled.binds[name].required:
            slots.append(_Given(name, processor))
        else:
            slots.append(value if processor is None else processor(value))
    return SqliteStatement(expanded.statement, tuple(slots))


@cache
def stored(column: Column[Any], dialect: Dialect = _DIALECT) -> Callable[[Any], Any]:
    """How `column` stores a value on `dialect` (on SQLite: a UUID as hex, a time as text)."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return (lambda value: value) if process is None else process


@cache
def read_back(column: Column[Any], dialect: Dialect = _DIALECT) -> Callable[[Any], Any]:
    """How `column`'s stored value reads on `dialect`."""
    process = column.type.dialect_impl(dialect).result_processor(dialect, None)
    return (lambda value: value) if process is None else process
