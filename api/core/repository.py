"""Small lookups every service shares: objects by name, and unique names turned into clear conflicts."""

import asyncio
import unicodedata
from collections.abc import Iterable
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.blobs import StoredBlob
from api.core.errors import Conflict, NotFound
from api.models import Base, Blob
from api.models.base import utcnow

M = TypeVar("M", bound=Base)
_BATCH = 500  # rows per INSERT: under SQLite's limit of bound parameters
_CHECKS_IN_FLIGHT = 16  # record_blobs' look in the store: HEAD requests at once on S3


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


async def record_blobs(session: AsyncSession, blobs: Iterable[StoredBlob]) -> None:
    """Make sure a `blobs` row exists for each blob already in the store: rows that point at blobs come
    after the blob's file is in place, never before.

    One upsert per batch: a row that exists gets `created_at = now` (a reuse starts the collector's
    grace period again, api/storage/collector.py), a missing one is inserted. Either way the row is
    then this transaction's until it ends (locked on PostgreSQL; SQLite has one writer), so the
    collector cannot take the content any more, and the store is asked whether it is still there: the
    collector may have removed it since the caller's put (which found it stored and sent nothing, or
    stored it longer ago than the grace period). Such a blob is refused, 409 `blob_gone` (send it
    again: the put then stores it anew), never recorded over nothing. A blob with no `store` (known from
    a row or a document, not from a put) is not asked about. Rows are taken in hash order, so two
    recorders of the same blobs never wait on each other in a cycle."""
    unique = {blob.sha256: blob for blob in blobs}
    ordered = [unique[sha256] for sha256 in sorted(unique)]
    now = utcnow()
    insert = dialect_insert(session)
    for start in range(0, len(ordered), _BATCH):
        rows = [
            {"sha256": blob.sha256, "size": blob.size, "created_at": now}
            for blob in ordered[start : start + _BATCH]
        ]
        await session.execute(
            insert(Blob)
            .values(rows)
            .on_conflict_do_update(index_elements=["sha256"], set_={"created_at": now})
        )
    for start in range(0, len(ordered), _CHECKS_IN_FLIGHT):
        group = ordered[start : start + _CHECKS_IN_FLIGHT]
        present = await asyncio.gather(*(_still_stored(blob) for blob in group))
        gone = [blob.sha256 for blob, there in zip(group, present, strict=True) if not there]
        if gone:
            raise Conflict(
                f"the stored content {gone[0]} was removed while this upload arrived: send it again",
                code="blob_gone",
            )


async def _still_stored(blob: StoredBlob) -> bool:
    return blob.store is None or await blob.store.exists(blob.sha256)


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
