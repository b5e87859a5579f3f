"""The engine and the one unit of work per request: only `get_session` commits or rolls back."""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from api.core import sqlite
from api.core.config import Settings
from api.core.notify import Notifier

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
        # `CONNECT_ARGS` and `claim_connection`: the hot operations' one call on sqlite3 (api/core/sqlite.py).
        engine = create_async_engine(
            url, pool_size=1, max_overflow=0, pool_timeout=120, connect_args=sqlite.CONNECT_ARGS
        )
        event.listen(engine.sync_engine, "connect", configure_sqlite)
        event.listen(engine.sync_engine, "connect", sqlite.claim_connection)
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
