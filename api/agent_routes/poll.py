"""The agent's long-poll, the API's hottest path: 10,000 machines' agents each re-poll every 30 s.

So it is built for the cost of one poll, in CPU as it arrives and in memory while it is held: Core
statements built once (SQLAlchemy caches their compiled forms), a connection of its own for a
statement or two and never across the wait, no session, no ORM object, and a write only when something
changed. What it decides for a machine's liveness is what `service.mark_seen` decides for `hello`.
"""

import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from api.agent_routes.service import (
    CLEAR_OFFLINE,
    MARK_SEEN,
    MAX_COMMANDS_PER_POLL,
    SEEN_RESOLUTION,
    seen_parameters,
)
from api.models import AgentCommand, Machine, Run
from api.models.base import utcnow
from api.processes.lifecycle import UNTAKEN_COMMAND_STATES
from api.security import bearer_digest, bearer_scheme, refuse_as_agent
from shared.enums import CommandKind, CommandState
from shared.protocol import Command

_UNTAKEN = [s.value for s in UNTAKEN_COMMAND_STATES]
_MACHINE_SEEN = select(
    Machine.id,
    Machine.token_hmac,
    Machine.last_seen_at,
    exists().where(Run.machine_id == Machine.id, Run.agent_offline.is_(True)).label("runs_offline"),
)
_BY_TOKEN = _MACHINE_SEEN.where(Machine.token_hmac == bindparam("digest"))
_PENDING = (
    select(
        AgentCommand.id, AgentCommand.kind, AgentCommand.run_id, AgentCommand.created_at, AgentCommand.payload
    )
    .where(AgentCommand.machine_id == bindparam("machine"), AgentCommand.state.in_(_UNTAKEN))
    .order_by(AgentCommand.id)
    .limit(MAX_COMMANDS_PER_POLL)
)
_DELIVER = (
    update(AgentCommand)
    .where(AgentCommand.id.in_(bindparam("ids", expanding=True)), AgentCommand.state.in_(_UNTAKEN))
    .values(
        state=CommandState.DELIVERED.value,
        delivered_at=bindparam("now"),
        delivery_count=AgentCommand.delivery_count + 1,
    )
)


@dataclass(frozen=True, slots=True)
class PollingAgent:
    """The agent of a machine, as its token's lookup found it, with what its poll may have to write."""

    machine_id: uuid.UUID
    last_seen_at: datetime | None
    runs_offline: bool


async def polling_agent(
    request: Request,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> PollingAgent:
    """`CurrentAgent` for the poll, with the same answers (401, 403 `agent_token_required`): the token's
    HMAC looked up at every poll (a revoked or rotated token is refused at once) and compared in
    constant time, in one statement that also reads what `mark_seen` needs."""
    digest = bearer_digest(request)
    engine: AsyncEngine = request.app.state.engine
    async with engine.connect() as connection:
        row = (await connection.execute(_BY_TOKEN, {"digest": digest})).first()
    if row is None or not row.token_hmac or not hmac.compare_digest(row.token_hmac, digest):
        async with request.app.state.sessionmaker() as session:
            await refuse_as_agent(session, digest)
    return PollingAgent(row.id, row.last_seen_at, row.runs_offline)


PollingAgentDep = Annotated[PollingAgent, Depends(polling_agent)]


async def take_commands(engine: AsyncEngine, agent: PollingAgent) -> list[Command]:
    """The machine seen, its runs' offline flag cleared, every command not yet
    acknowledged delivered (at least once; the agent dedups by id). Committed here, the poll's one unit
    of work; nothing written, nothing to commit."""
    now = utcnow()
    machine = {"machine": agent.machine_id}
    async with engine.connect() as connection:
        wrote = False
        if agent.last_seen_at is None or now - agent.last_seen_at > SEEN_RESOLUTION:
            await connection.execute(MARK_SEEN, seen_parameters(agent.machine_id))
            wrote = True
        if agent.runs_offline:
            await connection.execute(CLEAR_OFFLINE, machine)
            wrote = True
        rows = (await connection.execute(_PENDING, machine)).all()
        if rows:
            await connection.execute(_DELIVER, {"ids": [row.id for row in rows], "now": now})
            wrote = True
        if wrote:
            await connection.commit()
    return [
        Command(
            id=row.id,
            kind=CommandKind(row.kind),
            run_id=row.run_id,
            created_at=row.created_at,
            payload=row.payload,
        )
        for row in rows
    ]
