"""The agent <-> API wire protocol (DESIGN.md, "The agent protocol").

Models the agent sends forbid unknown fields (the API must not silently drop a fact); models the API
sends ignore unknown fields (a newer API keeps an older agent working).
"""

import sys
import uuid
from array import array
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.enums import (
    CommandKind,
    CommandState,
    PipelineType,
    ReasonCode,
    RunStatus,
    ServiceEventType,
    ServiceStatus,
)

MAX_POLL_WAIT_SECONDS = 30
# The widths of the database's integer columns, on both databases (INTEGER and BIGINT on PostgreSQL;
# SQLite stores 64 bits at most). Every integer that reaches a column is bounded by one of these at
# the schema, so a number no column holds is a 422, never a driver's overflow (docs/errors.md).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ERROR_TAIL_MAX_CHARS = 16_384
# A template's maximum run time when it names none (the API's schema and model), and what the API
# assumes for a run whose frozen start payload lacks one.
DEFAULT_MAX_DURATION_SECONDS = 3600


class AgentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiReply(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GpuInfo(ApiReply):
    index: int = Field(ge=0, le=INT32_MAX)
    name: str = Field(max_length=256)
    memory_total_mb: int | None = Field(default=None, ge=0, le=INT64_MAX)
    uuid: str | None = Field(default=None, max_length=128)


class Hello(AgentRequest):
    agent_version: str = Field(max_length=64)
    hostname: str | None = Field(default=None, max_length=256)
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64)
    runs: list[uuid.UUID] = Field(default_factory=list, max_length=1024, description="Runs the agent has.")
    capabilities: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=32, description="What this agent can do beyond the base protocol."
    )
    services: list[uuid.UUID] = Field(
        default_factory=list, max_length=1024, description="Services the agent has instances of."
    )


class HelloReply(ApiReply):
    machine: str
    stop_runs: list[uuid.UUID] = Field(description="Runs the agent has that the API already ended.")
    stop_services: list[uuid.UUID] = Field(
        default_factory=list, description="Services the agent has that the API no longer wants served."
    )


class StartRunPayload(ApiReply):
    """Everything the agent needs to run one training run, frozen at the start."""

    run_id: uuid.UUID
    process_id: uuid.UUID
    project: str
    template: str
    pipeline_type: PipelineType
    base_package: str | None = None
    base_version: str | None = None
    package_sha256: str | None = Field(default=None, description="Fetch it with GET runs/{run_id}/package.")
    package_root: str | None = Field(default=None, description="The zip's folder holding train.py, or ''.")
    package_has_requirements: bool = False
    dataset: str | None = None
    dataset_version: int | None = None
    dataset_path: str | None = None
    test_dataset: str | None = None
    test_dataset_version: int | None = None
    test_dataset_path: str | None = None
    augmentation: str = "none"
    parameters: dict[str, Any] = Field(default_factory=dict)
    max_duration_seconds: int
    save_training_data: bool = False
    gpus: int = 0
    processes: int = 1
    # A restart of a failed or stopped run resumes (docs/pipelines.md): the checkpoint to unpack into
    # `TRAINYARD_CHECKPOINT_DIRECTORY` before the package starts. None: the run starts over.
    checkpoint_sha256: str | None = Field(
        default=None, description="Fetch it with GET runs/{run_id}/checkpoint (a zip) before launching."
    )
    checkpoint_size: int | None = Field(default=None, ge=0, le=INT64_MAX)
    resumed_from: uuid.UUID | None = Field(default=None, description="The run whose checkpoint this is.")


class StopRunPayload(ApiReply):
    run_id: uuid.UUID
    reason_code: ReasonCode


# Serving (docs/serving.md): a package version published on a machine answers `predict` over HTTP.

MAX_SERVICE_INSTANCES = 16


class StartServicePayload(ApiReply):
    """Everything the agent needs to serve one package version, frozen at the start."""

    service_id: uuid.UUID
    project: str
    name: str
    package: str
    version: str
    package_sha256: str = Field(description="Fetch it with GET services/{service_id}/package.")
    package_root: str | None = Field(default=None, description="The zip's folder holding main.py, or ''.")
    package_has_requirements: bool = False
    max_run_seconds: int = Field(description="The agent stops every instance this long after the start.")
    instances: int = Field(default=1, ge=1, le=MAX_SERVICE_INSTANCES)
    gpus: int = 0
    secret: str = Field(
        description="Each instance answers only requests bearing `Authorization: Bearer <secret>`."
    )


class StopServicePayload(ApiReply):
    service_id: uuid.UUID
    reason_code: ReasonCode


class Command(ApiReply):
    id: uuid.UUID
    kind: CommandKind
    run_id: uuid.UUID | None = Field(default=None, description="Set on `start_run` and `stop_run`.")
    service_id: uuid.UUID | None = Field(
        default=None, description="Set on `start_service` and `stop_service`."
    )
    created_at: datetime
    payload: dict[str, Any]


class CommandAckReply(ApiReply):
    id: uuid.UUID
    state: CommandState = Field(description="`cancelled`: the command was withdrawn; do not carry it out.")


class LaunchedEvent(AgentRequest):
    type: Literal["launched"]
    pid: int | None = Field(default=None, ge=1, le=INT32_MAX)


class StageEvent(AgentRequest):
    type: Literal["stage"]
    stage: str = Field(min_length=1, max_length=128)
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    eta_seconds: float | None = Field(default=None, ge=0.0)


class ExitedEvent(AgentRequest):
    type: Literal["exited"]
    exit_code: int | None = Field(
        default=None, ge=INT32_MIN, le=INT32_MAX, description="The process's exit status (runs.exit_code)."
    )
    signal: int | None = Field(default=None, ge=1, le=128)
    error_tail: str = Field(default="", max_length=ERROR_TAIL_MAX_CHARS)
    reason_code: ReasonCode | None = Field(
        default=None, description="Set when the agent ended the run itself (e.g. `max_duration`)."
    )
    saved: bool = Field(
        default=False,
        description="The run was stopped at its maximum duration and its package saved what it had "
        "trained: its outputs are uploaded and `finished` follows, which keeps them as its version.",
    )


class FinishedEvent(AgentRequest):
    type: Literal["finished"]


RunEvent = Annotated[
    LaunchedEvent | StageEvent | ExitedEvent | FinishedEvent,
    Field(discriminator="type"),
]


class ServiceEvent(AgentRequest):
    """One fact about one instance of a service. `serving`: it answers at `address`; `exited`: its
    process ended (`restarting` when the agent starts it again after a backoff); `stopped`: the agent
    stopped it (a stop command, or `max_duration` when its maximum run time passed)."""

    type: ServiceEventType
    instance: int = Field(default=0, ge=0, lt=MAX_SERVICE_INSTANCES)
    address: str | None = Field(
        default=None,
        max_length=512,
        description="`serving`: the base URL it answers on, e.g. http://host:port.",
    )
    pid: int | None = Field(default=None, ge=1, le=INT32_MAX)
    exit_code: int | None = Field(default=None, ge=INT32_MIN, le=INT32_MAX)
    signal: int | None = Field(default=None, ge=1, le=128)
    error_tail: str = Field(default="", max_length=ERROR_TAIL_MAX_CHARS)
    restarting: bool = False
    reason_code: ReasonCode | None = None


class ServiceEventReply(ApiReply):
    service_id: uuid.UUID
    status: ServiceStatus
    stop: bool = Field(description="True when the agent should stop (or not start) this service.")


class ManifestFile(ApiReply):
    path: str = Field(max_length=1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, le=INT64_MAX)


class DatasetManifest(ApiReply):
    """What a run reads: fetch each file by hash with GET runs/{run_id}/blobs/{sha256}."""

    dataset: str
    version: int
    path: str | None = Field(description="The template's sub-folder; file paths are relative to it.")
    content_hash: str
    files: list[ManifestFile]


class SnapshotUpload(AgentRequest):
    """The manifest of the data the run read (save_training_data): blobs the API already holds."""

    files: list[ManifestFile] = Field(max_length=1_000_000)


class OutputReply(ApiReply):
    kind: str
    path: str = ""
    sha256: str | None = None
    size: int = 0


class RunEventReply(ApiReply):
    run_id: uuid.UUID
    status: RunStatus
    stop: bool = Field(description="True when the agent should stop (or not start) this run.")


# Telemetry (docs/telemetry.md): columnar batches of metric points and log lines, one sequence per run.

MAX_TELEMETRY_POINTS = 100_000  # the agent cuts at 50,000 (estimated from the spool: headroom)
MAX_TELEMETRY_LOG_LINES = 20_000
MAX_SERIES_NAME = 128
MAX_LOG_LINE_CHARS = 65_536
MAX_SERIES_INDEX = 65_535  # packed as uint16; `names` holds far fewer anyway


class TelemetryPoints(AgentRequest):
    """Metric points as columns: point i is (names[series[i]], step[i], value[i], time[i])."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    series: list[Annotated[int, Field(ge=0, le=MAX_SERIES_INDEX)]] = Field(
        default_factory=list, max_length=MAX_TELEMETRY_POINTS
    )
    step: list[float] = Field(default_factory=list, max_length=MAX_TELEMETRY_POINTS)
    value: list[float] = Field(default_factory=list, max_length=MAX_TELEMETRY_POINTS)
    time: list[float] = Field(
        default_factory=list, max_length=MAX_TELEMETRY_POINTS, description="Unix seconds."
    )


def _packed(code: str, values: Sequence[float]) -> str:
    column = array(code, values)
    if sys.byteorder == "big":
        column.byteswap()
    return column.tobytes().hex()


class PackedPoints(AgentRequest):
    """The point columns packed: each the hex of a little-endian array, `series` of uint16, `step`,
    `value` and `time` of float64. The API decodes them in microseconds, where parsing and validating
    JSON numbers took about 0.2 us a number (docs/telemetry.md)."""

    series: str = Field(default="", max_length=4 * MAX_TELEMETRY_POINTS)
    step: str = Field(default="", max_length=16 * MAX_TELEMETRY_POINTS)
    value: str = Field(default="", max_length=16 * MAX_TELEMETRY_POINTS)
    time: str = Field(default="", max_length=16 * MAX_TELEMETRY_POINTS, description="Unix seconds.")

    @classmethod
    def pack(
        cls, series: Sequence[int], step: Sequence[float], value: Sequence[float], time: Sequence[float]
    ) -> "PackedPoints":
        return cls(
            series=_packed("H", series),
            step=_packed("d", step),
            value=_packed("d", value),
            time=_packed("d", time),
        )


class TelemetryLogs(AgentRequest):
    """Log lines as columns: line i is (stream[i], time[i], text[i])."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    stream: list[Literal["stdout", "stderr"]] = Field(
        default_factory=list, max_length=MAX_TELEMETRY_LOG_LINES
    )
    time: list[float] = Field(
        default_factory=list, max_length=MAX_TELEMETRY_LOG_LINES, description="Unix seconds."
    )
    text: list[Annotated[str, Field(max_length=MAX_LOG_LINE_CHARS)]] = Field(
        default_factory=list, max_length=MAX_TELEMETRY_LOG_LINES
    )


class TelemetryBatch(AgentRequest):
    """One batch of a run's telemetry. `seq` counts 1, 2, 3... per run; a batch is stored once, in order."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seq: int = Field(ge=1, le=INT32_MAX)
    names: list[Annotated[str, Field(min_length=1, max_length=MAX_SERIES_NAME)]] = Field(
        default_factory=list, max_length=1024, description="The series names `points.series` indexes."
    )
    points: TelemetryPoints = Field(default_factory=TelemetryPoints)
    packed: PackedPoints | None = Field(default=None, description="The points packed, instead of `points`.")
    logs: TelemetryLogs = Field(default_factory=TelemetryLogs)
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    stage: str | None = Field(default=None, min_length=1, max_length=128)
    eta_seconds: float | None = Field(default=None, ge=0.0)


class TelemetryReply(ApiReply):
    acked_through: int = Field(description="Every batch up to this seq is stored.")
    missing: list[int] = Field(
        default_factory=list, description="Batches the API has not seen before the one sent: send them again."
    )
    stop: bool = Field(default=False, description="The run has ended; the reports were stored all the same.")
