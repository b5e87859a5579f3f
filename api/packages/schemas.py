import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.core.schemas import ReadModel


class DeclaredParameterRead(BaseModel):
    name: str
    type: Literal["int", "float", "str", "bool"]
    default: Any = None
    description: str = ""


class PackageVersionRead(ReadModel):
    id: uuid.UUID
    project: str
    package: str
    version: str = Field(examples=["1.1"])
    major: int
    minor: int
    origin: Literal["upload", "trained", "builtin"] = Field(
        description="upload, trained by a run, or builtin: a version of a built-in base package."
    )
    sha256: str = Field(description="Of the zip: the download's ETag.")
    size: int
    has_evaluate: bool
    has_process_data: bool
    has_predict: bool = Field(description="main.py with `class Main` and `predict` (for serving).")
    has_requirements: bool
    declared_parameters: list[DeclaredParameterRead] | None = Field(
        description="From parameters.json; null when the package declares none (any parameter goes)."
    )
    parent_version: str | None = Field(description="The version it was trained from.")
    run_id: uuid.UUID | None = Field(description="The run that made it.")
    lineage: dict[str, Any] = Field(description="Template, parameters, dataset and final metrics.")
    created_at: datetime


class PackageRead(ReadModel):
    id: uuid.UUID
    project: str
    name: str
    description: str
    latest_version: str | None
    version_count: int
    builtin: bool = Field(
        default=False, description="A built-in base package (docs/base-packages.md): it takes no upload."
    )
    model_types: list[str] = Field(default_factory=list, description="What a built-in base package is for.")
    created_at: datetime


class LineageNode(BaseModel):
    version: str
    origin: Literal["upload", "trained", "builtin"]
    run_id: uuid.UUID | None
    created_at: datetime
    children: list["LineageNode"] = Field(default_factory=list)


class LineageRead(BaseModel):
    package: str
    version: str
    ancestors: list[LineageNode] = Field(description="From the parent back to the uploaded version.")
    descendants: list[LineageNode] = Field(description="The tree of versions trained from this one.")
    record: dict[str, Any] = Field(description="This version's lineage record.")
