"""The API's clock for services, run by the sweeper (api/runs/sweeper.py) in the one process that
holds its claim: a start no agent took within `TRAINYARD_START_TIMEOUT` fails (`start_timeout`);
a live service of a machine silent past `TRAINYARD_LOST_AFTER` ends (`lost`), as a run does. The
maximum run time is the agent's to keep (it counts from its own start of the instances)."""

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Select, exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.core.config import Settings
from api.models import AgentCommand, Machine, Service
from api.runs.lifecycle import SYSTEM, UNTAKEN_COMMAND_STATES
from api.services import lifecycle
from api.services.lifecycle import LIVE, S
from shared.enums import CommandKind, ReasonCode

_START_UNTAKEN = exists().where(
    AgentCommand.service_id == Service.id,
    AgentCommand.kind == CommandKind.START_SERVICE.value,
    AgentCommand.state.in_([state.value for state in UNTAKEN_COMMAND_STATES]),
)


async def sweep_services(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, now: datetime
) -> None:
    timed_out = await _ids(
        sessionmaker,
        select(Service.id).where(
            Service.status == S.STARTING.value,
            Service.started_at < now - timedelta(seconds=settings.start_timeout),
            _START_UNTAKEN,
        ),
    )
    for service_id in timed_out:
        await _time_out_start(sessionmaker, service_id, settings.start_timeout)
    lost_since = now - timedelta(seconds=settings.lost_after)
    lost = await _ids(
        sessionmaker,
        select(Service.id)
        .join(Machine, Machine.id == Service.machine_id)
        .where(
            Service.status.in_([status.value for status in LIVE]),
            Machine.last_seen_at.is_not(None),
            Machine.last_seen_at < lost_since,
            ~_START_UNTAKEN,
        ),
    )
    for service_id in lost:
        await _lose(sessionmaker, service_id, lost_since)


async def _ids(
    sessionmaker: async_sessionmaker[AsyncSession], statement: Select[uuid.UUID]
) -> Sequence[uuid.UUID]:
    async with sessionmaker() as session:
        return list((await session.scalars(statement)).all())


async def _time_out_start(
    sessionmaker: async_sessionmaker[AsyncSession], service_id: uuid.UUID, start_timeout: float
) -> None:
    """Fail a start no agent took; an agent taking it since it was picked wins (the withdrawal and
    the acknowledgement are conditional updates of the same command row)."""
    async with sessionmaker() as session:
        service = await session.get(Service, service_id)
        if (
            service is not None
            and await lifecycle.withdraw_start(session, service_id)
            and await lifecycle.end(
                session,
                service,
                SYSTEM,
                S.FAILED,
                ReasonCode.START_TIMEOUT,
                only_from=frozenset({S.STARTING}),
                detail=f"no agent took the start within {start_timeout:g} s",
            )
        ):
            await session.commit()
        else:
            await session.rollback()


async def _lose(
    sessionmaker: async_sessionmaker[AsyncSession], service_id: uuid.UUID, lost_since: datetime
) -> None:
    """End a live service of a silent machine, unless its agent polled since it was picked: the
    machine row is locked (a poll updates it), so a poll and this decision never interleave."""
    async with sessionmaker() as session:
        service = await session.get(Service, service_id)
        if service is None:
            return
        last_seen = await session.scalar(
            select(Machine.last_seen_at).where(Machine.id == service.machine_id).with_for_update()
        )
        if last_seen is None or last_seen >= lost_since:
            await session.rollback()
            return
        detail = "the machine's agent stopped polling"
        if service.status == S.STOPPING:
            reason = ReasonCode(service.reason_code or ReasonCode.USER_STOP)
            await lifecycle.end(session, service, SYSTEM, S.STOPPED, reason, detail=detail)
        else:
            await lifecycle.end(session, service, SYSTEM, S.FAILED, ReasonCode.LOST, detail=detail)
        await session.commit()
