"""Conditional GET with a wait: how a client learns of a change without polling.

A route answers with an `ETag`, a digest of what a watcher cares about in the answer (a run's
status, stage, progress and ETA, say; never a field that moves with the clock, such as the elapsed
time, or every answer would differ). A request whose `If-None-Match` names the current tag is
answered 304; with `wait=S` too, it is held until the tag changes (answered at once, 200, with the
new tag) or S seconds pass (304).

What wakes it is the notifier (`api/core/notify.py`): a change commits and wakes the ids it names (a
run's, its process's, its project's: `changed_after_commit`), in this process at commit and in every
other API process through PostgreSQL's NOTIFY. The order is the long-poll's: mark, read, listen since
the mark, wait; so a change that commits between the read and the wait still wakes the waiter. A
wake that changed nothing this answer shows (a log line, a metric point) is a second read and back
to waiting. The request holds no database connection while it waits (`commit_early`).
"""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Collection
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import Header, Query, Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.notify import Notifier
from api.core.unit_of_work import commit_early
from shared.protocol import MAX_POLL_WAIT_SECONDS

Answer = TypeVar("Answer", bound=BaseModel)
_ETAG_HEADER = {
    "ETag": {
        "description": "The answer's version: send it back as `If-None-Match`.",
        "schema": {"type": "string"},
    }
}
# The responses a watchable GET declares beside its own.
WATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": _ETAG_HEADER},
    304: {
        "description": "The `ETag` in `If-None-Match` is current (after `wait` seconds, if given): no body.",
        "headers": _ETAG_HEADER,
    },
}
IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        max_length=1024,
        description="The `ETag` of the answer the client holds: 304 while it is current.",
    ),
]

WaitQuery = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_POLL_WAIT_SECONDS,
        description="With `If-None-Match` naming the current `ETag`: hold the request until the answer "
        "changes (200 with the new `ETag`) or this many seconds pass (304).",
    ),
]


def etag_of(answer: BaseModel, volatile: Any) -> str:
    """A strong tag of `answer` without its `volatile` fields (pydantic's `exclude`, nested allowed)."""
    digest = hashlib.blake2b(answer.model_dump_json(exclude=volatile).encode(), digest_size=12)
    return f'"{digest.hexdigest()}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110's weak comparison over the header's list (`*` matches whatever exists)."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _not_modified(etag: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag})


async def answer_when_changed(
    held_for: str | None,
    response: Response,
    session: AsyncSession,
    notifier: Notifier,
    wait: float,
    read: Callable[[], Awaitable[tuple[Answer, Collection[UUID]]]],
    volatile: Any,
) -> Answer | Response:
    """`read()`'s answer with its `ETag`, or 304; held up to `wait` seconds while the client's tag is
    current. `read` returns the answer and the ids whose change may change it; it is called again
    after each wake and must then read what has committed since (a refresh, `populate_existing`)."""
    mark = notifier.mark()
    answer, keys = await read()
    etag = etag_of(answer, volatile)
    if not _matches(held_for, etag):
        response.headers["ETag"] = etag
        return answer
    if wait <= 0:
        return _not_modified(etag)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        with notifier.listen(*keys, since=mark) as woken:
            await commit_early(session, "held until the answer changes: no connection while it waits")
            try:
                async with asyncio.timeout_at(deadline):
                    await woken.wait()
            except TimeoutError:
                return _not_modified(etag)
        mark = notifier.mark()
        answer, keys = await read()
        etag = etag_of(answer, volatile)
        if not _matches(held_for, etag):
            response.headers["ETag"] = etag
            return answer
        if loop.time() >= deadline:
            return _not_modified(etag)
