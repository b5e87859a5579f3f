"""The agent's long-poll, the API's hottest path: 10,000 machines' agents each re-poll every 30 s.

So it is built for the cost of one poll, in CPU as it arrives and in memory while it is held: no
session, no ORM object, no connection across the wait, and a write only when something changed. Its
database work (the token's lookup, the machine seen, its runs' offline flag cleared, the pending
commands read and marked delivered, the commit) is one unit, the engine's `PollStore`
(`api/agent_routes/poll_store.py`: the same Core statements on PostgreSQL and, compiled for sqlite3,
as one call on SQLite). What it decides for a machine's liveness is what `service.mark_seen` decides
for `hello`.

The machine is known only once that unit has run, so its waiter cannot be registered before the look
for commands. Instead the poll reads the notifier's wake counter before it (`Notifier.mark`) and
registers its waiter with it (`Notifier.listen(..., since=mark)`): a wake of the machine after that
value, a command committed after the look, wakes the waiter at once (api/core/notify.py).
"""

import uuid
from dataclasses import dataclass
from typing import Annotated, NoReturn

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.agent_routes.poll_store import poll_store
from api.core.notify import Notifier
from api.core.security import bearer_digest, bearer_scheme, refuse_as_agent
from shared.protocol import MAX_POLL_WAIT_SECONDS, Command


@dataclass(frozen=True, slots=True)
class Poll:
    """A poll's pass: the machine whose agent polled and the commands it takes, and the notifier's wake
    counter as it was before the look (`Notifier.mark`)."""

    machine_id: uuid.UUID
    commands: list[Command]
    mark: int


def _wait_is_valid(request: Request) -> bool:
    """Whether the endpoint will take the query's `wait` (`Query(ge=0, le=MAX_POLL_WAIT_SECONDS)`). The
    poll authenticates before FastAPI validates the query, as any dependency: a poll it will refuse
    with 422 (after a valid token) takes nothing."""
    raw = request.query_params.get("wait")
    if raw is None:
        return True
    try:
        return 0 <= float(raw) <= MAX_POLL_WAIT_SECONDS
    except ValueError:
        return False


async def polling_agent(
    request: Request,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Poll:
    """The poll's database work, in one unit, with `CurrentAgent`'s answers (401, 403
    `agent_token_required`): the token's HMAC looked up at every poll (a revoked or rotated token is
    refused at once) and compared in constant time; then the machine seen, its runs' offline flag
    cleared, every command not yet acknowledged delivered (at least once; the agent dedups by id),
    committed; nothing written, nothing to commit."""
    digest = bearer_digest(request)
    app = request.app
    notifier: Notifier = app.state.notifier
    take = _wait_is_valid(request)
    mark = notifier.mark()  # before the look: see `Notifier.listen`
    taken = await poll_store(app.state.engine).poll(digest, take)
    if taken is None:
        await _refuse(app.state.sessionmaker, digest)
    return Poll(taken.machine_id, taken.commands, mark)


PollingAgentDep = Annotated[Poll, Depends(polling_agent)]


async def _refuse(sessionmaker: async_sessionmaker[AsyncSession], digest: str) -> NoReturn:
    async with sessionmaker() as session:
        await refuse_as_agent(session, digest)
