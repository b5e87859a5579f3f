import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from api.core.schemas import Description, Name, ReadModel, RequestModel
from shared.enums import PipelineType
from shared.names import check_parameter_name, normalize_relative_path
from shared.protocol import DEFAULT_MAX_DURATION_SECONDS, INT32_MAX
from shared.versions import Version

MAX_PARAMETERS = 256
MAX_DURATION_LIMIT = 30 * 24 * 3600


def _check_version(value: str) -> str:
    return str(Version.parse(value))


PackageVersion = Annotated[str, AfterValidator(_check_version), Field(max_length=32, examples=["1.0"])]
DatasetVersion = Annotated[int, Field(ge=1, le=INT32_MAX)] | Literal["latest"]
SubPath = Annotated[str, AfterValidator(normalize_relative_path), Field(max_length=1024)]
Augmentation = Literal[
    "none",
    "rotations",
    "exposure",
    "noise",
    "rotations+exposure",
    "rotations+noise",
    "exposure+noise",
    "rotations+exposure+noise",
]
ParameterValue = Annotated[str, Field(max_length=4096)] | bool | int | float
Parameters = Annotated[
    dict[str, ParameterValue],
    Field(
        max_length=MAX_PARAMETERS,
        description="Technical parameters, handed to the run as environment variables of their own names.",
        examples=[{"epochs": 20, "batch_size": 64, "learning_rate": 0.001}],
    ),
]


def _check_parameters(parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    for name in parameters or {}:
        try:
            check_parameter_name(name)
        except ValueError as error:
            raise ValueError(f"parameter {name!r} {error}") from None
    return parameters


class _TemplateFields(RequestModel):
    description: Description | None = None
    pipeline_type: PipelineType | None = None
    base_package: Name | None = None
    base_version: PackageVersion | None = None
    dataset: Name | None = None
    dataset_version: DatasetVersion | None = None
    dataset_path: SubPath | None = None
    test_dataset: Name | None = None
    test_dataset_version: DatasetVersion | None = None
    test_dataset_path: SubPath | None = None
    augmentation: Augmentation | None = None
    parameters: Parameters | None = None
    max_duration_seconds: Annotated[int, Field(ge=1, le=MAX_DURATION_LIMIT)] | None = None
    save_training_data: bool | None = None
    gpus: Annotated[int, Field(ge=0, le=64, description="0 = CPU only.")] | None = None
    processes: Annotated[int, Field(ge=1, le=64, description="More than 1: torchrun workers.")] | None = None

    _parameters_named_well = field_validator("parameters")(_check_parameters)


class TemplateCreate(_TemplateFields):
    name: Name
    model_type: Name
    description: Description = ""
    pipeline_type: PipelineType = PipelineType.TRAINING
    augmentation: Augmentation = "none"
    parameters: Parameters = Field(default_factory=dict)
    max_duration_seconds: Annotated[int, Field(ge=1, le=MAX_DURATION_LIMIT)] = DEFAULT_MAX_DURATION_SECONDS
    save_training_data: bool = False
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    processes: Annotated[int, Field(ge=1, le=64)] = 1

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "name": "invoice-classifier",
                    "model_type": "classifier",
                    "base_package": "digits",
                    "base_version": "1.0",
                    "dataset": "digits",
                    "augmentation": "rotations+exposure+noise",
                    "parameters": {"epochs": 5, "learning_rate": 0.01},
                }
            ]
        }
    }


class TemplateUpdate(_TemplateFields):
    """Only the fields sent change; send `null` to clear an optional reference."""

    name: Name | None = None
    model_type: Name | None = None


class TemplateRead(ReadModel):
    id: uuid.UUID
    project: str
    name: str
    model_type: str
    description: str
    pipeline_type: PipelineType
    base_package: str | None
    base_version: str | None
    dataset: str | None
    dataset_version: int | Literal["latest"] | None
    dataset_path: str | None
    test_dataset: str | None
    test_dataset_version: int | Literal["latest"] | None
    test_dataset_path: str | None
    augmentation: str
    parameters: dict[str, Any]
    max_duration_seconds: int
    save_training_data: bool
    gpus: int
    processes: int
    created_at: datetime
    updated_at: datetime
