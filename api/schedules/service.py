"""Process schedules (UiPath's recurring pipelines): a cron expression read in a time zone.

The expression is checked and the next firing computed here (`next_fire_after`), in the schedule's own
zone so that `0 3 * * *` stays 03:00 across daylight-saving changes, and stored in UTC. The firing
itself is `firing.py`'s.
"""

import functools
import zoneinfo
from datetime import UTC, datetime

from cronsim import CronSim, CronSimError
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import InvalidInput, NotFound
from api.core.repository import dialect_insert
from api.models import Process, ProcessSchedule
from api.models.base import utcnow
from api.runs.lifecycle import Actor, record_event
from api.schedules.schemas import ScheduleSet

CRON_FIELDS = 5


@functools.cache
def _zone_names() -> frozenset[str]:
    # The names the system's database holds, exactly: no path a caller spells (`../x`) reaches a file.
    return frozenset(zoneinfo.available_timezones())


def parse_timezone(name: str) -> zoneinfo.ZoneInfo:
    if name not in _zone_names():
        raise InvalidInput(
            f"{name!r} is not an IANA time zone name (such as UTC or Europe/Berlin)",
            code="invalid_timezone",
            field="timezone",
        )
    return zoneinfo.ZoneInfo(name)


def next_fire_after(cron: str, zone: zoneinfo.ZoneInfo, after: datetime) -> datetime:
    """The first time strictly after `after` that `cron` names, read in `zone`; in UTC.

    cronsim steps through local time the way Debian's cron does: a time that a spring-forward skips
    fires at the first minute that exists after it, and a time that a fall-back repeats fires once.
    """
    try:
        return next(CronSim(cron, after.astimezone(zone))).astimezone(UTC)
    except CronSimError as error:
        raise InvalidInput(f"invalid cron expression: {error}", code="invalid_cron", field="cron") from None
    except StopIteration:
        raise InvalidInput(
            "invalid cron expression: it names no time in the next 50 years",
            code="invalid_cron",
            field="cron",
        ) from None


def parse_cron(cron: str) -> str:
    """The expression with its fields separated by single spaces; 422 `invalid_cron` unless 5 fields."""
    fields = cron.split()
    if len(fields) != CRON_FIELDS:
        raise InvalidInput(
            f"invalid cron expression: {len(fields)} fields where 5 are expected "
            "(minute, hour, day of month, month, day of week)",
            code="invalid_cron",
            field="cron",
        )
    return " ".join(fields)


async def get_schedule(session: AsyncSession, process: Process) -> ProcessSchedule:
    schedule = await session.get(ProcessSchedule, process.id, populate_existing=True)
    if schedule is None:
        raise NotFound(f"process {process.id} has no schedule", code="schedule_not_found")
    return schedule


async def set_schedule(
    session: AsyncSession, process: Process, data: ScheduleSet, actor: Actor
) -> ProcessSchedule:
    """Create or replace the schedule: one upsert, so two PUTs racing leave one of them whole. A
    replacement keeps the record of the last firing; its next firing is computed afresh from now."""
    cron = parse_cron(data.cron)
    zone = parse_timezone(data.timezone)
    now = utcnow()
    next_fire_at = next_fire_after(cron, zone, now)
    # Hold the process against a delete until this commits: the schedule's row needs it.
    if (
        await session.scalar(
            select(Process.id).where(Process.id == process.id).with_for_update(key_share=True)
        )
        is None
    ):
        raise NotFound(f"no process {process.id}: it was deleted", code="process_not_found")
    values = {
        "cron": cron,
        "timezone": data.timezone,
        "missed": data.missed.value,
        "next_fire_at": next_fire_at,
        "updated_at": now,
    }
    statement = dialect_insert(session)(ProcessSchedule).values(
        process_id=process.id, created_at=now, **values
    )
    statement = statement.on_conflict_do_update(index_elements=["process_id"], set_=values).returning(
        ProcessSchedule
    )
    schedule: ProcessSchedule = (
        await session.scalars(statement, execution_options={"populate_existing": True})
    ).one()
    record_event(
        session,
        process.id,
        process.project_id,
        actor,
        "schedule_set",
        detail=f"{cron} ({data.timezone}), missed: {data.missed.value}; next at {next_fire_at.isoformat()}",
    )
    return schedule


async def remove_schedule(session: AsyncSession, process: Process, actor: Actor) -> None:
    removed = await session.execute(
        delete(ProcessSchedule)
        .where(ProcessSchedule.process_id == process.id)
        .returning(ProcessSchedule.cron),
        execution_options={"synchronize_session": False},
    )
    cron = removed.scalar_one_or_none()
    if cron is None:
        raise NotFound(f"process {process.id} has no schedule", code="schedule_not_found")
    record_event(session, process.id, process.project_id, actor, "schedule_removed", detail=cron)
