import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import Field

from api.core.schemas import ReadModel, RequestModel


class MissedFiring(StrEnum):
    """What a firing missed while no API process was running does when the API comes back."""

    SKIP = "skip"  # recorded (`schedule_missed`) and not run
    ONCE = "once"  # run once, however many firings were missed


class ScheduleSet(RequestModel):
    cron: str = Field(
        min_length=1,
        max_length=128,
        description="A 5-field cron expression: minute, hour, day of month, month, day of week "
        "(`*`, lists, ranges, steps, `JAN`-`DEC`, `SUN`-`SAT`, `L`, `#`).",
        examples=["0 3 * * MON-FRI"],
    )
    timezone: str = Field(
        default="UTC",
        min_length=1,
        max_length=64,
        description="The IANA time zone the expression is read in (`Europe/Berlin`): `0 3 * * *` "
        "fires at 03:00 there, across daylight-saving changes.",
        examples=["Europe/Berlin"],
    )
    missed: MissedFiring = Field(
        default=MissedFiring.SKIP,
        description="A firing missed while the API was down: `skip` records it and waits for the next "
        "one; `once` starts the process once on return.",
    )

    model_config = {
        "json_schema_extra": {"examples": [{"cron": "0 3 * * MON-FRI", "timezone": "Europe/Berlin"}]}
    }


class ScheduleRead(ReadModel):
    process_id: uuid.UUID
    cron: str
    timezone: str
    missed: MissedFiring
    next_fire_at: datetime = Field(description="When it fires next, in UTC.")
    last_fired_at: datetime | None = Field(description="When it last came due and was handled.")
    last_outcome: str | None = Field(
        description="What that firing did: `started`, `missed`, or why it was skipped "
        "(`run_active`, `process_disabled`, `machine_disabled`, ...).",
        examples=["started", "run_active"],
    )
    created_at: datetime
    updated_at: datetime
