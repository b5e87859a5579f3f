"""What the chart and the log view read."""

import uuid
from datetime import datetime

from pydantic import Field

from api.core.schemas import ReadModel
from shared.enums import RunStatus


class SeriesPoint(ReadModel):
    step: float | int
    value: float
    time: float = Field(description="Unix seconds.")


class SeriesRead(ReadModel):
    name: str
    count: int = Field(description="Points stored in the series.")
    latest: SeriesPoint | None = Field(description="The series' last point.")
    downsampled: bool = Field(description="Fewer points than stored: each bucket's min and max are kept.")
    step: list[float | int]
    value: list[float]
    time: list[float] = Field(description="Unix seconds.")


class MetricsRead(ReadModel):
    run_id: uuid.UUID
    status: RunStatus
    progress: float | None
    stage: str | None
    elapsed_seconds: float | None
    eta_seconds: float | None
    next_since: int = Field(description="Pass as `since` to read only the points stored after these.")
    series: list[SeriesRead]


class LogLineRead(ReadModel):
    offset: int
    stream: str
    time: datetime
    text: str


class LogsRead(ReadModel):
    run_id: uuid.UUID
    status: RunStatus
    total: int = Field(description="Lines stored so far.")
    next_offset: int = Field(description="Pass as `offset` to read on (or to follow).")
    lines: list[LogLineRead]
