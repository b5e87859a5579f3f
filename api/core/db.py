"""The engine and the one unit of work per request: only `get_session` commits or rolls back."""

import sqlite3
from collections.abc import AsyncIterator, Callable
from functools import cache
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy import Column, Dialect, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import greenlet_spawn

from api.core.config import Settings
from api.core.notify import Notifier

T = TypeVar("T")

# SQLite serialises writers; a busy handler of this length lets a second process (a migration, a
# CLI) wait its turn instead of failing with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000


def async_url(url: str) -> str:
    """The app's driver for a plain database URL: aiosqlite on SQLite, psycopg 3 on PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use SQLite or PostgreSQL")


def sync_url(url: str) -> str:
    """The migrations' driver: the standard sqlite3 module, or psycopg 3."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use SQLite or PostgreSQL")


def pg_conninfo(url: str) -> str:
    """A plain libpq connection string (no SQLAlchemy driver part) for psycopg's own connections."""
    return make_url(sync_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


def configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(settings: Settings) -> AsyncEngine:
    url = async_url(settings.resolved_database_url)
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # One connection: SQLite has one writer at a time anyway, and a single connection turns what
        # would be "database is locked" races between our own requests into an orderly queue.
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=120)
        event.listen(engine.sync_engine, "connect", configure_sqlite)
        return engine
    return create_async_engine(
        url, pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size, pool_pre_ping=True
    )


def create_sessionmaker(engine: AsyncEngine, notifier: Notifier) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=notifier.session_info())


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Commit when the handler returns, roll back when it raises: nothing half-written survives."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


# scope="function": the commit happens before the response is sent, so a client never sees a success
# for a change that did not commit.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


# The hottest routes on SQLite (the agent's poll, a telemetry batch) run their statements straight on
# sqlite3, as one call on aiosqlite's thread: through SQLAlchemy's async layer every statement, checkout
# and return was a hand-off between threads and a greenlet. Values go in and come out through the
# columns' own types, so what they store and read is what the ORM stores and reads.


async def on_sqlite_thread(engine: AsyncEngine, work: Callable[[sqlite3.Connection], T]) -> T:
    """`work(sqlite3 connection)` as one call on aiosqlite's thread, the one that owns the connection,
    on a connection of the engine's pool (returned after it, rolled back as the pool does). The pool's
    own connection, not an `AsyncConnection`: cheaper to take and give back. aiosqlite has no public
    way to its thread; SQLAlchemy's own adapter uses the same queue."""
    connection = await engine.raw_connection()
    try:
        driver = connection.driver_connection
        assert driver is not None
        result: T = await driver._execute(work, driver._conn)
    finally:
        await greenlet_spawn(connection.close)
    return result


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


@cache
def stored(dialect: Dialect, column: Column[Any]) -> Callable[[Any], Any]:
    """How `column` stores a value on `dialect` (on SQLite: a UUID as hex, a time as text)."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return (lambda value: value) if process is None else process


@cache
def read_back(dialect: Dialect, column: Column[Any]) -> Callable[[Any], Any]:
    """How `column`'s stored value reads on `dialect`."""
    process = column.type.dialect_impl(dialect).result_processor(dialect, None)
    return (lambda value: value) if process is None else process
