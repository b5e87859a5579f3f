"""The API's clock: start timeouts, maximum durations, offline and lost machines, and the end of
login-failure windows.

Every API process runs one loop, and one process sweeps at a time: on PostgreSQL the one that holds
the sweep's advisory lock (`SweepClaim`), on SQLite the only one. The claim saves the work of N
replicas sweeping the same rows; correctness never rests on it: each change is the same conditional
transition the routes use, so sweeps that overlap (a claim lost while its holder is mid-sweep) still
change each run once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Select, and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.access.service import forget_ended_login_failures
from api.core.config import Settings
from api.core.db import pg_conninfo
from api.core.idempotency import forget_expired_keys
from api.core.notify import Notifier
from api.models import AgentCommand, Machine, Run
from api.models.base import utcnow
from api.runs.lifecycle import SYSTEM, end_run, request_stop, withdraw_start
from api.services.sweep import sweep_services
from shared.enums import ACTIVE_RUN_STATUSES, CommandKind, CommandState, ReasonCode, RunStatus

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

logger = logging.getLogger(__name__)
_ACTIVE = [s.value for s in ACTIVE_RUN_STATUSES]


def lock_key(job: str) -> int:
    """The advisory lock's key for "this process runs `job`": a constant nothing else locks, derived
    from the job's name."""
    return int.from_bytes(hashlib.sha256(f"trainyard.{job}".encode()).digest()[:8], "big", signed=True)


SWEEP_LOCK_KEY = lock_key("sweeper")
# A bound on one check of the claim: a database that stopped answering costs a tick, not the loop.
CLAIM_TIMEOUT = 10.0


class SweepClaim:
    """Whether this process is the one that sweeps.

    On PostgreSQL: a session-level advisory lock taken with `pg_try_advisory_lock` on a connection of
    the claim's own, outside the pool (as the notifier's LISTEN one: a pooled connection would be
    handed back, and a transaction-level lock would let every replica sweep in turn). The lock lives
    as long as that connection: the holder keeps it by checking the connection at each tick; a
    replica that dies, or whose connection drops, loses it with the connection, and the next tick of
    another takes it. Behind a pooler in transaction mode (PgBouncer) session locks do not hold: the
    claim needs a direct connection, as LISTEN does.
    On SQLite there is one API process (`serve --workers N` is refused): it always sweeps.

    Another job that one process at a time should run takes a claim of its own `job` name (the blob
    collector's, api/core/blob_gc.py), so that it never waits on the sweeps nor they on it.
    """

    def __init__(self, settings: Settings, job: str = "sweeper", doing: str = "sweeps") -> None:
        self._conninfo = None if settings.is_sqlite else pg_conninfo(settings.resolved_database_url)
        self._connection: psycopg.AsyncConnection[TupleRow] | None = None
        self._held = False
        self._job = job
        self._doing = doing  # for the log: "this API process <doing> now"
        self._key = lock_key(job)

    async def held(self) -> bool:
        """Take the claim if it is free, keep it if this process has it; False when another has it or
        the database cannot be reached (the next tick tries again)."""
        if self._conninfo is None:
            return True
        import psycopg  # here, not at the top: an API on SQLite never loads it

        try:
            async with asyncio.timeout(CLAIM_TIMEOUT):
                return await self._take_or_keep()
        except (psycopg.Error, OSError) as error:  # OSError: TimeoutError too
            if self._held:
                logger.warning("the %s's claim is lost with its connection: %s", self._job, error)
            await self.release()
            return False

    async def _take_or_keep(self) -> bool:
        import psycopg

        assert self._conninfo is not None
        if self._connection is None:
            self._connection = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, application_name=f"trainyard-{self._job}"
            )
        if self._held:
            await self._connection.execute("SELECT 1")  # the lock lives as long as this connection
            return True
        taken = await self._connection.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
        row = await taken.fetchone()
        self._held = bool(row and row[0])
        if self._held:
            logger.info("this API process %s now (it holds the %s's advisory lock)", self._doing, self._job)
        return self._held

    async def release(self) -> None:
        """Give the claim up: at shutdown, or after an error. Unlocked in so many words first, so that
        another replica may take it at its next tick (the server sees a closed connection a moment
        after); closing the connection releases it anyway."""
        connection, held, self._connection, self._held = self._connection, self._held, None, False
        if connection is None:
            return
        import psycopg

        try:
            if held:
                async with asyncio.timeout(CLAIM_TIMEOUT):
                    await connection.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
        except (psycopg.Error, OSError):
            pass  # a broken connection: its lock ends with it
        finally:
            await connection.close()


class Sweeper:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], notifier: Notifier, settings: Settings
    ) -> None:
        self._sessionmaker = sessionmaker
        self._notifier = notifier
        self._settings = settings

    async def run_forever(self) -> None:
        """Sweep at each tick while this process holds the claim; give it up when cancelled."""
        claim = SweepClaim(self._settings)
        try:
            while True:
                try:
                    if await claim.held():
                        await self.sweep_once()
                except Exception:  # a sweep that fails is tried again at the next tick
                    logger.exception("sweep failed")
                await asyncio.sleep(self._settings.sweep_interval)
        finally:
            await claim.release()

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
        await sweep_services(self._sessionmaker, self._settings, now)  # the same clock for services

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
