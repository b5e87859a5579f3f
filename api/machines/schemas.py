import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field

from api.core.schemas import Description, Name, ReadModel, RequestModel
from shared.protocol import GpuInfo

Capacity = Annotated[int, Field(ge=1, le=1024, description="Processes the machine may hold (Primo: 1).")]
Address = Annotated[str, Field(min_length=1, max_length=256, examples=["10.0.3.17"])]


class MachineCreate(RequestModel):
    name: Name
    address: Address
    description: Description = ""
    capacity: Capacity = 1

    model_config = {"json_schema_extra": {"examples": [{"name": "gpu-01", "address": "10.0.3.17"}]}}


class MachineUpdate(RequestModel):
    address: Address | None = None
    description: Description | None = None
    capacity: Capacity | None = None


class MachineRead(ReadModel):
    id: uuid.UUID
    name: str
    address: str
    description: str
    enabled: bool
    capacity: int
    process_count: int
    online: bool = Field(description="The agent polled within TRAINYARD_OFFLINE_AFTER seconds.")
    last_seen_at: datetime | None
    agent_version: str | None
    gpus: list[GpuInfo]
    created_at: datetime


class MachineWithToken(MachineRead):
    agent_token: str = Field(description="The agent token: shown this once, stored only as its HMAC.")
