"""Small lookups every service shares: objects by name, and unique names turned into clear conflicts."""

import unicodedata
from collections.abc import Iterable
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import Conflict, NotFound
from api.models import Base, Blob
from api.models.base import utcnow

M = TypeVar("M", bound=Base)
_BATCH = 500  # rows per INSERT: under SQLite's limit of bound parameters


@cache
def _by_name(model: type[Base], scope: tuple[str, ...]) -> Select[Any]:
    """The lookup by name, built once per model and scope: lookups sit on every request's path."""
    statement = select(model).where(model.name == bindparam("name"))  # type: ignore[attr-defined]
    for column in scope:
        statement = statement.where(getattr(model, column) == bindparam(f"scope_{column}"))
    return statement


async def get_by_name(session: AsyncSession, model: type[M], name: str, what: str, **scope: Any) -> M:
    """The object named `name` (within `scope`, e.g. project_id=...), or a 404 `<what>_not_found`.

    Names are stored NFC; a path may spell one decomposed (macOS, some keyboards): it is the same name.
    """
    name = unicodedata.normalize("NFC", name)
    parameters = {"name": name, **{f"scope_{column}": value for column, value in scope.items()}}
    found: M | None = await session.scalar(_by_name(model, tuple(scope)), parameters)
    if found is None:
        raise NotFound(f"no {what.replace('_', ' ')} named {name!r}", code=f"{what}_not_found")
    return found


async def add_named(session: AsyncSession, obj: M, what: str) -> M:
    """Insert an object whose name must be unique in its scope; a taken name is a 409 `<what>_exists`."""
    session.add(obj)
    try:
        await session.flush()
    except IntegrityError:
        name = getattr(obj, "name", "")
        raise Conflict(
            f"a {what.replace('_', ' ')} named {name!r} exists already", code=f"{what}_exists", field="name"
        ) from None
    return obj


async def record_blobs(session: AsyncSession, blobs: Iterable[tuple[str, int]]) -> None:
    """Make sure a `blobs` row exists for each (sha256, size) already in the store: rows that point at
    blobs come after the blob's file is in place, never before."""
    rows = [{"sha256": sha256, "size": size, "created_at": utcnow()} for sha256, size in dict(blobs).items()]
    if not rows:
        return
    insert = dialect_insert(session)
    for start in range(0, len(rows), _BATCH):
        statement = (
            insert(Blob)
            .values(rows[start : start + _BATCH])
            .on_conflict_do_nothing(index_elements=["sha256"])
        )
        await session.execute(statement)


def dialect_insert(session: AsyncSession) -> Any:
    """The INSERT construct with ON CONFLICT for the session's database."""
    return postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def get_or_create_named(
    session: AsyncSession, model: type[M], what: str, values: dict[str, Any], scope: dict[str, Any]
) -> M:
    """The object named values["name"] in `scope`, created with `values` if it does not exist. Two
    creators racing both get the one row (ON CONFLICT DO NOTHING, then read), never a 500."""
    statement = dialect_insert(session)(model).values(**values, **scope).on_conflict_do_nothing()
    await session.execute(statement)
    return await get_by_name(session, model, values["name"], what, **scope)
