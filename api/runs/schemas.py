"""What a run looks like to people."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field

from api.core.schemas import ReadModel
from shared.enums import RunStatus


class RunRead(ReadModel):
    id: uuid.UUID
    process_id: uuid.UUID
    number: int = Field(description="1 for the process's first run, 2 for the next, ...")
    project: str
    machine: str
    status: RunStatus
    reason_code: str | None = Field(description="Why the run ended, or is ending while `stopping`.")
    detail: str = Field(description="The traceback or the last lines of stderr, when there are any.")
    agent_offline: bool = Field(description="The machine stopped polling; the run may be lost.")
    created_at: datetime
    launched_at: datetime | None
    stop_requested_at: datetime | None
    ended_at: datetime | None
    elapsed_seconds: float | None = Field(description="Since launch, until the end.")
    progress: float | None = Field(description="0..1, as the package reports it.")
    stage: str | None
    eta_seconds: float | None = Field(description="Estimated seconds until the end (Primo's ~Until end).")
    exit_code: int | None
    exit_signal: int | None
    config: dict[str, Any] = Field(description="The template's settings, frozen when the run started.")
