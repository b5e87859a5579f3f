"""What a prediction service looks like to people, and what they send to publish one."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field, RootModel

from api.core.schemas import Name, ReadModel, RequestModel
from shared.enums import ServiceStatus
from shared.protocol import MAX_SERVICE_INSTANCES

DEFAULT_MAX_RUN_SECONDS = 24 * 3600
# A year: a bound only so that a deadline stays a number every database and agent holds.
MAX_RUN_SECONDS = 366 * 24 * 3600


class ServiceCreate(RequestModel):
    name: Name
    package: Name = Field(description="A package of the project.")
    version: str = Field(max_length=32, description="`MAJOR.MINOR`: the version to serve.", examples=["1.2"])
    machine: Name = Field(description="The target machine that serves it.")
    max_run_seconds: int = Field(
        default=DEFAULT_MAX_RUN_SECONDS,
        ge=1,
        le=MAX_RUN_SECONDS,
        description="The agent stops every instance this long after each start.",
    )
    instances: int = Field(default=1, ge=1, le=MAX_SERVICE_INSTANCES, description="Serving processes.")

    model_config = {
        "json_schema_extra": {
            "examples": [{"name": "digits", "package": "digits", "version": "1.1", "machine": "gpu-01"}]
        }
    }


class ServiceRead(ReadModel):
    id: uuid.UUID
    project: str
    name: str
    package: str
    version: str
    machine: str
    max_run_seconds: int
    instances: int
    status: ServiceStatus = Field(description="`serving` while at least one instance answers.")
    serving_instances: list[int] = Field(description="The instances that answer now.")
    reason_code: str | None = Field(description="Why it stopped or failed (or is stopping).")
    error_tail: str = Field(description="The last lines of an instance's stderr when it exited.")
    delete_requested: bool = Field(description="Deleted once it has stopped.")
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class ServiceEndpointRead(ReadModel):
    """For callers that need the lowest latency: call an instance directly (docs/serving.md)."""

    addresses: list[str] = Field(description="`POST <address>/predict`, each a serving instance.")
    secret: str = Field(
        description="Send `Authorization: Bearer <secret>`. A new one is drawn at each start of the service."
    )


class ServiceEventRead(ReadModel):
    id: uuid.UUID
    service_id: uuid.UUID
    at: datetime
    actor_kind: str
    actor_name: str
    kind: str = Field(examples=["service_status", "instance_serving"])
    instance: int | None
    from_status: str | None
    to_status: str | None
    reason_code: str | None
    detail: str


class Prediction(RootModel[Any]):
    """What the package's `predict` returned, as JSON: any JSON value (a string comes as text/plain)."""
