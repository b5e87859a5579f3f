"""The API's clock: start timeouts, maximum durations, offline and lost machines, and the end of
login-failure windows.

Every API process runs one; each change is the same conditional transition the routes use, so several
replicas sweeping at once change each run once.
"""

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Select, and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.access.service import forget_ended_login_failures
from api.core.config import Settings
from api.core.idempotency import forget_expired_keys
from api.core.notify import Notifier
from api.models import AgentCommand, Machine, Run
from api.models.base import utcnow
from api.runs.lifecycle import SYSTEM, end_run, request_stop, withdraw_start
from shared.enums import ACTIVE_RUN_STATUSES, CommandKind, CommandState, ReasonCode, RunStatus

logger = logging.getLogger(__name__)
_ACTIVE = [s.value for s in ACTIVE_RUN_STATUSES]


class Sweeper:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], notifier: Notifier, settings: Settings
    ) -> None:
        self._sessionmaker = sessionmaker
        self._notifier = notifier
        self._settings = settings

    async def run_forever(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:  # a sweep that fails is tried again at the next tick
                logger.exception("sweep failed")
            await asyncio.sleep(self._settings.sweep_interval)

    async def sweep_once(self) -> None:
        now = utcnow()
        start_taken = exists().where(
            AgentCommand.run_id == Run.id,
            AgentCommand.kind == CommandKind.START_RUN.value,
            AgentCommand.state == CommandState.ACKNOWLEDGED.value,
        )
        timed_out = await self._ids(
            select(Run.id).where(
                Run.status == RunStatus.STARTING.value,
                Run.created_at < now - timedelta(seconds=self._settings.start_timeout),
                ~start_taken,
            )
        )
        for run_id in timed_out:
            await self._time_out_start(run_id)

        overdue = await self._ids(
            select(Run.id).where(Run.status == RunStatus.RUNNING.value, Run.deadline_at < now)
        )
        for run_id in overdue:
            async with self._sessionmaker() as session:
                run = await session.get(Run, run_id)
                if run is not None:
                    await request_stop(session, self._notifier, run, SYSTEM, ReasonCode.MAX_DURATION)
                await session.commit()

        offline_since = now - timedelta(seconds=self._settings.offline_after)
        lost_since = now - timedelta(seconds=self._settings.lost_after)
        on_silent_machine = and_(
            Machine.id == Run.machine_id,
            Machine.last_seen_at.is_not(None),
        )
        lost = await self._ids(
            select(Run.id)
            .join(Machine, on_silent_machine)
            .where(
                Run.status.in_(_ACTIVE),
                Machine.last_seen_at < lost_since,
                (Run.status != RunStatus.STARTING.value) | start_taken,
            )
        )
        for run_id in lost:
            await self._lose(run_id, lost_since)

        async with self._sessionmaker() as session:
            silent_machines = select(Machine.id).where(
                (Machine.last_seen_at < offline_since) | Machine.last_seen_at.is_(None)
            )
            await session.execute(
                update(Run)
                .where(
                    Run.status.in_(_ACTIVE), Run.agent_offline.is_(False), Run.machine_id.in_(silent_machines)
                )
                .values(agent_offline=True),
                execution_options={"synchronize_session": False},
            )
            await forget_ended_login_failures(session, now)
            await forget_expired_keys(session, now)
            await session.commit()

    async def _ids(self, statement: Select[uuid.UUID]) -> Sequence[uuid.UUID]:
        async with self._sessionmaker() as session:
            return list((await session.scalars(statement)).all())

    async def _time_out_start(self, run_id: uuid.UUID) -> None:
        """Fail a start no agent took; an agent taking it since the run was picked wins (the withdrawal
        and the acknowledgement are conditional updates of the same command row)."""
        async with self._sessionmaker() as session:
            run = await session.get(Run, run_id)
            if (
                run is not None
                and await withdraw_start(session, run_id)
                and await end_run(
                    session,
                    self._notifier,
                    run,
                    RunStatus.FAILED,
                    SYSTEM,
                    ReasonCode.START_TIMEOUT,
                    f"no agent took the start within {self._settings.start_timeout:g} s",
                    only_from=frozenset({RunStatus.STARTING}),
                )
            ):
                await session.commit()
            else:
                await session.rollback()

    async def _lose(self, run_id: uuid.UUID, lost_since: datetime) -> None:
        """End a run of a silent machine, unless its agent polled since the run was picked: the
        machine row is locked (a poll updates it), so a poll and this decision never interleave."""
        async with self._sessionmaker() as session:
            run = await session.get(Run, run_id)
            if run is not None:
                last_seen = await session.scalar(
                    select(Machine.last_seen_at).where(Machine.id == run.machine_id).with_for_update()
                )
                if last_seen is not None and last_seen < lost_since:
                    await end_run(
                        session,
                        self._notifier,
                        run,
                        RunStatus.FAILED,
                        SYSTEM,
                        ReasonCode.LOST,
                        f"the machine's agent has not polled for {self._settings.lost_after:g} s",
                    )
            await session.commit()
