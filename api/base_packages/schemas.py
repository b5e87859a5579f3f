import uuid
from datetime import datetime

from pydantic import Field

from api.core.schemas import ReadModel
from api.packages.schemas import DeclaredParameterRead


class BasePackageRead(ReadModel):
    """A built-in base package of the catalogue: what a template names as `base_package`."""

    id: uuid.UUID
    name: str
    description: str
    model_types: list[str] = Field(description="The model types a template on it may have.")
    latest_version: str | None = Field(examples=["1.0"], description="What a template pins by default.")
    versions: list[str] = Field(description="Every catalogue version, oldest first.")
    has_evaluate: bool
    has_predict: bool = Field(description="main.py with `class Main` and `predict` (for serving).")
    declared_parameters: list[DeclaredParameterRead] | None = Field(
        description="The latest version's parameters.json."
    )
    created_at: datetime
