"""Fixtures for looking at the database itself: what a refused request must leave untouched."""

from collections.abc import Awaitable, Callable

import pytest
from fastapi import FastAPI
from sqlalchemy import Connection, MetaData, select

DatabaseDump = dict[str, list[tuple[str, ...]]]


def _reflect(connection: Connection) -> MetaData:
    # Reflected, not api.models.Base.metadata: a table the models forgot is dumped too.
    metadata = MetaData()
    metadata.reflect(connection)
    return metadata


# Bookkeeping that any successful request may touch, at most once a minute: comparing it would make a
# test's outcome depend on how long it ran.
_VOLATILE = {("api_tokens", "last_used_at")}


def _dump(connection: Connection, metadata: MetaData) -> DatabaseDump:
    dump: DatabaseDump = {}
    for table in metadata.sorted_tables:
        columns = [c for c in table.columns if (table.name, c.name) not in _VOLATILE]
        rows = connection.execute(select(*columns).select_from(table)).all()
        dump[table.name] = sorted(tuple(repr(value) for value in row) for row in rows)
    return dump


@pytest.fixture
def dump_database(app: FastAPI) -> Callable[[], Awaitable[DatabaseDump]]:
    """Every row of every table, as text: compare two dumps to prove that nothing changed."""
    reflected: list[MetaData] = []

    async def dump() -> DatabaseDump:
        async with app.state.engine.connect() as connection:
            if not reflected:
                reflected.append(await connection.run_sync(_reflect))
            result: DatabaseDump = await connection.run_sync(_dump, reflected[0])
        return result

    return dump


def text_of(dump: DatabaseDump) -> str:
    return "\n".join(f"{table}: {row}" for table, rows in dump.items() for row in rows)


def count_rows(dump: DatabaseDump) -> dict[str, int]:
    return {table: len(rows) for table, rows in dump.items()}
