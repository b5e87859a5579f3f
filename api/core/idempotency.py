"""`Idempotency-Key`: a retried POST gets the first one's answer, and nothing is done twice.

Every POST a signed-in user makes (creates, Primo's actions, uploads, tokens: `covers`) takes the
header. The key is claimed by an INSERT that conflicts on (user, key), in the request's own unit of
work, and the answer is written into the same row before the session dependency commits
(`api/core/db.py`): the change and the answer it got are committed together or not at all, so a crash
leaves either nothing (a retry runs it) or both (a retry replays it). The pieces:

- `claim_key`, a dependency added to each covered route: no header, nothing; a key that is not 1 to
  255 printable ASCII characters, 422 `idempotency_key_invalid`; a key already answered, its answer
  (`Replay`, rendered with `Idempotent-Replayed: true`); the same key with another request (method,
  path, query, body), 422 `idempotency_key_reused`; a key another request still holds, 409
  `idempotency_key_in_use`. On PostgreSQL a second request with a key whose first is still running
  waits on the first's uncommitted row (at most `PG_CLAIM_WAIT`) and then replays its answer; on
  SQLite requests are one at a time anyway (one connection).
- the route's handler, wrapped (`_keeping`): once it has built its answer, the answer is stored
  (status, body, `KEPT_HEADERS`), still inside the unit of work. Only 2xx answers are kept: a refused
  request changed nothing, so its key is released and a retry runs again.
- an upload commits early (`commit_early`) before its body streams in, and with it the claim, as
  `pending`; the version and the answer are committed together at the end. A pending claim older than
  `RETAKE_PENDING_AFTER` (its holder crashed) is retaken by the next request with the key; a holder
  that was merely slow then finds its claim gone when it stores its answer, and rolls its change back
  (409), so the action still runs once.

Keys live `KEEP_FOR` (24 hours); the sweeper deletes expired ones (`forget_expired_keys`). A kept body
may hold a secret shown once (a new token, a machine's agent token): bodies are stored sealed with
AES-256-GCM under a key derived from TRAINYARD_SECRET_KEY, bound to the request's fingerprint, so the
table never holds a readable token.
"""

import functools
import hashlib
import hmac
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import and_, delete, or_, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.db import SessionDep
from api.core.errors import Conflict, InvalidInput, error_responses
from api.core.openapi import api_routes
from api.core.repository import dialect_insert
from api.core.security import CurrentUser, current_user
from api.models import IdempotencyKey
from api.models.base import new_id, utcnow

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEEP_FOR = timedelta(hours=24)
# Longer than any upload should take; a claim this old was left by a process that died mid-request.
RETAKE_PENDING_AFTER = timedelta(minutes=15)
PG_CLAIM_WAIT = "10s"
# What a replayed answer repeats besides its status and body (the transport's own headers are added
# to every answer anyway).
KEPT_HEADERS = frozenset({"content-type", "location", "etag", "last-modified"})
PENDING, DONE = "pending", "done"
_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_LOCK_NOT_AVAILABLE = "55P03"
_MARK = "_trainyard_idempotent"
_NONCE_BYTES = 12

KEY_DESCRIPTION = (
    "1 to 255 printable ASCII characters, unique per request you mean (a UUID). A retry with the same "
    "key and the same request gets the first answer again, with `Idempotent-Replayed: true`, for 24 "
    "hours, and changes nothing; the same key with another request is 422 `idempotency_key_reused`; "
    "while the first request with the key still runs, 409 `idempotency_key_in_use`. Refused requests "
    "(4xx) are not kept: a retry runs again."
)


class Replay(Exception):
    """The answer a key already got: raised by `claim_key` so that the route does not run."""

    def __init__(self, status_code: int, headers: list[list[str]], body: bytes) -> None:
        super().__init__(status_code)
        self.status_code, self.headers, self.body = status_code, headers, body


@dataclass
class Claim:
    """A key this request holds: the row, and the claim that proves the row is still this request's."""

    session: AsyncSession
    sealer: AESGCM
    fingerprint: str
    row_id: uuid.UUID
    claim: uuid.UUID

    def _mine(self) -> Any:
        return and_(IdempotencyKey.id == self.row_id, IdempotencyKey.claim == self.claim)

    async def keep(self, response: Response) -> None:
        """Store the answer in the request's unit of work; a refused or streamed one releases the key."""
        body = getattr(response, "body", None)
        if response.status_code >= 400 or not isinstance(body, bytes):
            await self.session.execute(delete(IdempotencyKey).where(self._mine()))
            return
        headers = [[name, value] for name, value in response.headers.items() if name in KEPT_HEADERS]
        stored = await self.session.execute(
            update(IdempotencyKey)
            .where(self._mine(), IdempotencyKey.state == PENDING)
            .values(
                state=DONE,
                status_code=response.status_code,
                headers=headers,
                body=_seal(self.sealer, self.fingerprint, body),
            ),
            execution_options={"synchronize_session": False},
        )
        if stored.rowcount != 1:  # type: ignore[attr-defined]
            # Retaken as stale while this request ran: the request that retook it acts instead.
            raise _in_use()

    async def release(self) -> None:
        """After an error: nothing of the request is kept, and neither is a claim it committed early."""
        await self.session.rollback()
        released = await self.session.execute(
            delete(IdempotencyKey).where(self._mine(), IdempotencyKey.state == PENDING)
        )
        if released.rowcount:  # type: ignore[attr-defined]
            await self.session.commit()  # the claim an upload committed before its body streamed in
        else:
            await self.session.rollback()


@functools.lru_cache(maxsize=8)
def _sealer_for(token_key: bytes) -> AESGCM:
    return AESGCM(hmac.digest(token_key, b"trainyard idempotent answers", "sha256"))


def _seal(sealer: AESGCM, fingerprint: str, body: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + sealer.encrypt(nonce, body, fingerprint.encode())


def _unseal(sealer: AESGCM, fingerprint: str, sealed: bytes) -> bytes | None:
    """The body `_seal` stored; None when it cannot be read (sealed under another secret key)."""
    try:
        return sealer.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], fingerprint.encode())
    except InvalidTag:
        return None


def _in_use() -> Conflict:
    error = Conflict(
        "a request with this Idempotency-Key is still running: retry shortly with the same key",
        code="idempotency_key_in_use",
        field=HEADER,
    )
    error.headers = {"Retry-After": "1"}
    return error


async def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    for part in (request.method, request.url.path, request.url.query):
        digest.update(part.encode() + b"\0")
    route = request.scope.get("route")
    if isinstance(route, APIRoute) and route.body_field is not None:
        digest.update(await request.body())  # already read (and cached) by FastAPI
    elif isinstance(route, APIRoute) and "requestBody" in (route.openapi_extra or {}):
        # A streamed upload: its body is read after the key is claimed, so its declared length stands
        # for it (a retry of the same upload sends the same bytes).
        digest.update(request.headers.get("content-length", "").encode())
    return digest.hexdigest()


async def _insert(session: AsyncSession, values: dict[str, Any]) -> uuid.UUID | None:
    statement = (
        dialect_insert(session)(IdempotencyKey)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["user_id", "key"])
        .returning(IdempotencyKey.id)
    )
    if session.get_bind().dialect.name != "postgresql":
        found: uuid.UUID | None = await session.scalar(statement)
        return found
    # A first request with this key, still running, holds its row uncommitted: this INSERT waits for
    # it to end (then conflicts, and its answer is replayed), for a while.
    await session.execute(text(f"SET LOCAL lock_timeout = '{PG_CLAIM_WAIT}'"))
    try:
        inserted: uuid.UUID | None = await session.scalar(statement)
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            raise _in_use() from None
        raise
    await session.execute(text("SET LOCAL lock_timeout = DEFAULT"))
    return inserted


async def _take(
    session: AsyncSession, sealer: AESGCM, user_id: uuid.UUID, key: str, fingerprint: str
) -> tuple[uuid.UUID, uuid.UUID]:
    """Claim (user, key): a new row, or an expired or abandoned one retaken; else replay or refuse."""
    now = utcnow()
    claim = new_id()
    fresh = {
        "fingerprint": fingerprint,
        "state": PENDING,
        "claim": claim,
        "claimed_at": now,
        "expires_at": now + KEEP_FOR,
    }
    inserted = await _insert(session, {"id": new_id(), "user_id": user_id, "key": key, **fresh})
    if inserted is not None:
        return inserted, claim
    this_key = and_(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
    found = (
        await session.execute(
            select(
                IdempotencyKey.fingerprint,
                IdempotencyKey.state,
                IdempotencyKey.claimed_at,
                IdempotencyKey.expires_at,
                IdempotencyKey.status_code,
                IdempotencyKey.headers,
                IdempotencyKey.body,
            ).where(this_key)
        )
    ).first()
    if found is None:  # released by its failed holder since the INSERT: retrying is safe
        raise _in_use()
    abandoned = found.state == PENDING and found.claimed_at <= now - RETAKE_PENDING_AFTER
    if found.expires_at <= now or abandoned:
        # Taken afresh, by one of several requests that find it so: the same condition, compared and set.
        retaken = await session.scalar(
            update(IdempotencyKey)
            .where(
                this_key,
                or_(
                    IdempotencyKey.expires_at <= now,
                    and_(
                        IdempotencyKey.state == PENDING,
                        IdempotencyKey.claimed_at <= now - RETAKE_PENDING_AFTER,
                    ),
                ),
            )
            .values(**fresh, status_code=None, headers=None, body=None)
            .returning(IdempotencyKey.id),
            execution_options={"synchronize_session": False},
        )
        if retaken is None:
            raise _in_use()
        return retaken, claim
    if found.fingerprint != fingerprint:
        raise _reused("was used with another request (method, path, query or body)")
    if found.state == DONE and found.status_code is not None and found.body is not None:
        body = _unseal(sealer, fingerprint, found.body)
        if body is None:
            raise _reused("answered a request whose answer can no longer be read (the secret key changed)")
        raise Replay(found.status_code, found.headers or [], body)
    raise _in_use()


def _reused(why: str) -> InvalidInput:
    return InvalidInput(
        f"this Idempotency-Key {why}: use a new key for a new request",
        code="idempotency_key_reused",
        field=HEADER,
    )


async def claim_key(
    request: Request,
    session: SessionDep,
    principal: CurrentUser,
    key: Annotated[str | None, Header(alias=HEADER, description=KEY_DESCRIPTION)] = None,
) -> AsyncIterator[None]:
    """The dependency of every covered route (`install_idempotency`)."""
    if key is None:
        yield
        return
    if not _KEY.fullmatch(key):
        raise InvalidInput(
            "an Idempotency-Key is 1 to 255 printable ASCII characters",
            code="idempotency_key_invalid",
            field=HEADER,
        )
    sealer = _sealer_for(request.app.state.token_key)
    fingerprint = await _fingerprint(request)
    taken = await _take(session, sealer, principal.id, key, fingerprint)
    claim = Claim(session, sealer, fingerprint, *taken)
    request.state.idempotency = claim
    try:
        yield
    except BaseException:
        await claim.release()
        raise


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _keeping(make_handler: Callable[[], Handler]) -> Callable[[], Handler]:
    """The route's handler factory, its handler storing the answer once it is built: still before the
    session dependency commits (FastAPI closes the function-scoped dependencies after the handler)."""

    def get_route_handler() -> Handler:
        handler = make_handler()

        async def keeping(request: Request) -> Response:
            response = await handler(request)
            claim: Claim | None = getattr(request.state, "idempotency", None)
            if claim is not None:
                await claim.keep(response)
            return response

        return keeping

    return get_route_handler


def _signed_in(dependant: Dependant) -> bool:
    return any(d.call is current_user or _signed_in(d) for d in dependant.dependencies)


def covers(route: APIRoute) -> bool:
    """Every POST a signed-in user makes: creates, actions, uploads, tokens (not the agents' routes,
    which have their own sequence numbers and acknowledgements, nor the public login)."""
    return "POST" in (route.methods or ()) and route.include_in_schema and _signed_in(route.dependant)


async def _replay(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Replay)
    response = Response(content=exc.body, status_code=exc.status_code)
    for name, value in exc.headers:
        response.headers[name] = value
    response.headers[REPLAYED_HEADER] = "true"
    return response


def install_idempotency(app: FastAPI) -> None:
    """Give every covered route the key's dependency, its answer kept, and the OpenAPI document the
    header and the refusals. Call it once the API's routers are included. The routes are the routers'
    own (module-level) objects, shared by every app built in this process: each is changed once."""
    app.add_exception_handler(Replay, _replay)
    for route in api_routes(app.routes):
        if getattr(route, _MARK, False) or not covers(route):
            continue
        route.dependencies.append(Depends(claim_key, scope="function"))
        route.get_route_handler = _keeping(route.get_route_handler)  # type: ignore[method-assign]
        route.responses = {**error_responses(409, 422), **route.responses}
        setattr(route, _MARK, True)


async def forget_expired_keys(session: AsyncSession, now: datetime) -> None:
    """The sweeper's part: keys past their 24 hours (a retry with one of them runs anew)."""
    await session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now))
