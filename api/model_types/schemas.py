import uuid
from datetime import datetime

from api.core.schemas import Description, Name, ReadModel, RequestModel


class ModelTypeCreate(RequestModel):
    name: Name
    description: Description = ""

    model_config = {
        "json_schema_extra": {"examples": [{"name": "classifier", "description": "Image classes"}]}
    }


class ModelTypeUpdate(RequestModel):
    description: Description | None = None


class ModelTypeRead(ReadModel):
    id: uuid.UUID
    name: str
    description: str
    created_at: datetime
