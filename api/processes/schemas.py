import uuid
from datetime import datetime

from pydantic import Field

from api.core.schemas import Name, ReadModel, RequestModel
from api.runs.schemas import RunRead
from shared.enums import ProcessStatus


class ProcessCreate(RequestModel):
    machine: Name = Field(description="The target machine that will run it.")
    enabled: bool = True

    model_config = {"json_schema_extra": {"examples": [{"machine": "gpu-01"}]}}


class ProcessRead(ReadModel):
    id: uuid.UUID
    project: str
    template: str
    machine: str
    enabled: bool
    status: ProcessStatus = Field(description="The latest run's status; `created` before the first start.")
    restart_pending: bool = Field(description="A restart waits for the active run to stop.")
    run_count: int
    latest_run: RunRead | None
    created_at: datetime


class ProcessEventRead(ReadModel):
    id: uuid.UUID
    process_id: uuid.UUID
    run_id: uuid.UUID | None
    at: datetime
    actor_kind: str
    actor_name: str
    kind: str = Field(examples=["run_status", "process_disabled"])
    from_status: str | None
    to_status: str | None
    reason_code: str | None
    detail: str
