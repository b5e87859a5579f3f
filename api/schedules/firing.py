"""Firing due schedules: in every API process, exactly once across them and across restarts.

Each due schedule is handled in one transaction of its own: the process's row is locked (the order a
delete of the process takes too), the schedule's `next_fire_at` moves from the value read to the next
firing by one conditional UPDATE, and the run is started, or the skip recorded, in the same
transaction. Of several API processes that find it due, one moves it and the others match no row; a
crash before the commit leaves it due for the next look. Nothing fires twice.
"""

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.core.config import Settings
from api.core.errors import Conflict
from api.core.notify import Notifier
from api.models import Process, ProcessSchedule
from api.models.base import utcnow
from api.runs.lifecycle import Actor, record_event, start_run
from api.schedules.schemas import MissedFiring
from api.schedules.service import next_fire_after, parse_timezone
from shared.enums import ActorKind

logger = logging.getLogger(__name__)

SCHEDULE = Actor(ActorKind.SYSTEM, None, "schedule")
# A firing found due longer ago than this was missed (no API process was running): its schedule's
# `missed` decides. Shorter delays are a loop's ordinary lateness and fire as usual.
MISSED_AFTER = timedelta(seconds=60)
BATCH = 100  # due schedules handled per look; the rest at the next
STARTED = "started"
MISSED = "missed"


@dataclass(frozen=True, slots=True)
class Firing:
    """What one due firing did: `outcome` as `ProcessSchedule.last_outcome` records it."""

    process_id: uuid.UUID
    due_at: datetime
    outcome: str
    run_id: uuid.UUID | None = None


class ScheduleFiring:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], notifier: Notifier, settings: Settings
    ) -> None:
        self._sessionmaker = sessionmaker
        self._notifier = notifier
        self._settings = settings

    async def run_forever(self) -> None:
        while True:
            try:
                await self.fire_due()
            except Exception:  # a look that fails is tried again at the next tick
                logger.exception("firing due schedules failed")
            await asyncio.sleep(self._settings.schedule_interval)

    async def fire_due(self, now: datetime | None = None) -> list[Firing]:
        """Handle every schedule due at `now` (the clock's now unless given); what each firing this
        process won did (a firing another process handled first is not in the list)."""
        now = now or utcnow()
        async with self._sessionmaker() as session:
            rows = await session.execute(
                select(ProcessSchedule.process_id, ProcessSchedule.next_fire_at)
                .where(ProcessSchedule.next_fire_at <= now)
                .order_by(ProcessSchedule.next_fire_at)
                .limit(BATCH)
            )
            due = [(process_id, due_at) for process_id, due_at in rows]
        firings = []
        for process_id, due_at in due:
            try:
                firing = await self._fire(process_id, due_at, now)
            except Exception:  # one schedule that fails (its zone gone from the system) holds up no other
                logger.exception("firing the schedule of process %s failed", process_id)
                continue
            if firing is not None:
                firings.append(firing)
        return firings

    async def _fire(self, process_id: uuid.UUID, due_at: datetime, now: datetime) -> Firing | None:
        async with self._sessionmaker() as session:
            process = await session.scalar(
                select(Process)
                .where(Process.id == process_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            schedule = await session.scalar(
                select(ProcessSchedule)
                .where(ProcessSchedule.process_id == process_id, ProcessSchedule.next_fire_at == due_at)
                .execution_options(populate_existing=True)
            )
            if process is None or schedule is None:  # deleted, changed or fired meanwhile
                await session.rollback()
                return None
            following = next_fire_after(schedule.cron, parse_timezone(schedule.timezone), now)
            claimed = await session.execute(
                update(ProcessSchedule)
                .where(ProcessSchedule.process_id == process_id, ProcessSchedule.next_fire_at == due_at)
                .values(next_fire_at=following, last_fired_at=now),
                execution_options={"synchronize_session": False},
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]  # another process fired it
                await session.rollback()
                return None
            firing = await self._start(session, process, schedule, due_at, now)
            await session.execute(
                update(ProcessSchedule)
                .where(ProcessSchedule.process_id == process_id)
                .values(last_outcome=firing.outcome[:32]),
                execution_options={"synchronize_session": False},
            )
            await session.commit()
        logger.info("schedule of process %s due at %s: %s", process_id, due_at.isoformat(), firing.outcome)
        return firing

    async def _start(
        self,
        session: AsyncSession,
        process: Process,
        schedule: ProcessSchedule,
        due_at: datetime,
        now: datetime,
    ) -> Firing:
        """Start the process for the firing due at `due_at`, or record why not."""

        def skipped(reason: str, detail: str) -> Firing:
            record_event(
                session,
                process.id,
                process.project_id,
                SCHEDULE,
                "schedule_skipped",
                reason_code=reason,
                detail=f"due at {due_at.isoformat()}: {detail}",
            )
            return Firing(process.id, due_at, reason)

        if now - due_at > MISSED_AFTER:
            missed = MissedFiring(schedule.missed)
            record_event(
                session,
                process.id,
                process.project_id,
                SCHEDULE,
                "schedule_missed",
                reason_code=missed.value,
                detail=f"due at {due_at.isoformat()} while no API process was running; "
                + ("skipped" if missed is MissedFiring.SKIP else "started once now"),
            )
            if missed is MissedFiring.SKIP:
                return Firing(process.id, due_at, MISSED)
        if not process.enabled:
            return skipped("process_disabled", "the process is disabled")
        try:
            run = await start_run(session, self._notifier, process, SCHEDULE)
        except Conflict as refused:  # raised before start_run wrote anything
            return skipped(refused.code, refused.detail)
        return Firing(process.id, due_at, STARTED, run.id)
