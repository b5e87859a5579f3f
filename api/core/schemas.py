"""Schema building blocks every domain shares: names, pages, the base request and read models."""

import base64
import binascii
import inspect
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from api.core.errors import InvalidInput
from shared.names import normalize_name


class RequestModel(BaseModel):
    """What clients send: unknown fields are refused, so a typo never silently does nothing.

    NaN and Infinity are refused too: Python's JSON reader takes them, JSON (and PostgreSQL's JSONB)
    does not, so they would be stored as something else or not at all. So is NUL in any text, keys
    of nested objects included: PostgreSQL's text and JSONB cannot hold it (SQLite can: the answer
    would depend on the database).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _holds_nul(value):
            raise ValueError("text may not contain NUL (U+0000)")
        return value


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds_nul(item) for item in value)
    return False  # numbers, and nested request models, which checked their own fields


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


Name = Annotated[
    str,
    AfterValidator(normalize_name),
    Field(
        min_length=1,
        max_length=512,  # checked again after NFC; the limit that matters is 128 characters
        description="Letters of any alphabet, digits, '-', '_', '.'; NFC; 1 to 128 characters; not all dots.",
        examples=["Классификатор-счетов_v1.2"],
    ),
]
Description = Annotated[str, Field(max_length=4096)]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last one.")


def encode_cursor(last_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(last_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> uuid.UUID | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return uuid.UUID(bytes=raw)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            "the cursor is not one this API gave out", code="invalid_cursor", field="cursor"
        ) from None


@dataclass
class PageParams:
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page.")] = DEFAULT_PAGE_SIZE
    cursor: Annotated[str | None, Query(max_length=64, description="`next_cursor` of the page before.")] = (
        None
    )


PageDep = Annotated[PageParams, Depends()]


async def fetch_page(
    session: AsyncSession,
    statement: Select[*tuple[Any, ...]],
    id_column: InstrumentedAttribute[uuid.UUID],
    page: PageParams,
) -> tuple[Sequence[Any], str | None]:
    """One page of rows in id order (ids are time-ordered UUIDv7s, so this is creation order)."""
    after = decode_cursor(page.cursor)
    if after is not None:
        statement = statement.where(id_column > after)
    rows = (await session.execute(statement.order_by(id_column).limit(page.limit + 1))).all()
    if len(rows) <= page.limit:
        return rows, None
    rows = rows[: page.limit]
    last = rows[-1]
    last_id = last[0].id if hasattr(last[0], "id") else last[0]
    return rows, encode_cursor(last_id)


async def paged(
    session: AsyncSession,
    statement: Select[*tuple[Any, ...]],
    id_column: InstrumentedAttribute[uuid.UUID],
    page: PageParams,
    item: Callable[..., T | Awaitable[T]],
) -> Page[T]:
    """The page of `statement` that `page` asks for, each row made into an item by `item(*row)`
    (which may be a coroutine function): what every list route answers."""
    rows, cursor = await fetch_page(session, statement, id_column, page)
    items: list[T] = []
    for row in rows:
        made = item(*row)
        items.append(await made if inspect.isawaitable(made) else made)
    return Page(items=items, next_cursor=cursor)
