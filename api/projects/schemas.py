import uuid
from datetime import datetime

from pydantic import Field

from api.core.schemas import Description, Name, ReadModel, RequestModel


class ProjectCreate(RequestModel):
    name: Name
    description: Description = ""

    model_config = {"json_schema_extra": {"examples": [{"name": "invoices", "description": "Invoice OCR"}]}}


class ProjectUpdate(RequestModel):
    description: Description | None = None


class ProjectRead(ReadModel):
    id: uuid.UUID
    name: str
    description: str
    created_at: datetime
    updated_at: datetime
    template_count: int = Field(default=0, description="Training templates in the project.")
