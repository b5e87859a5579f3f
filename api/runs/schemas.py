"""What a run looks like to people."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.core.schemas import ReadModel
from shared.enums import RunStatus


class RunRead(ReadModel):
    id: uuid.UUID
    process_id: uuid.UUID
    number: int = Field(description="1 for the process's first run, 2 for the next, ...")
    project: str
    machine: str
    status: RunStatus
    reason_code: str | None = Field(description="Why the run ended, or is ending while `stopping`.")
    detail: str = Field(description="The traceback or the last lines of stderr, when there are any.")
    agent_offline: bool = Field(description="The machine stopped polling; the run may be lost.")
    created_at: datetime
    launched_at: datetime | None
    stop_requested_at: datetime | None
    ended_at: datetime | None
    elapsed_seconds: float | None = Field(description="Since launch, until the end.")
    progress: float | None = Field(description="0..1, as the package reports it.")
    stage: str | None
    eta_seconds: float | None = Field(description="Estimated seconds until the end (Primo's ~Until end).")
    exit_code: int | None
    exit_signal: int | None
    config: dict[str, Any] = Field(description="The template's settings, frozen when the run started.")


class _ResultsPart(BaseModel):
    # `_results.json` is UiPath AI Center's format: whatever it holds beyond these fields is kept.
    model_config = ConfigDict(extra="allow")


class ResultsInputs(_ResultsPart):
    package: str | None = Field(default=None, description="The base package trained.")
    version: str | None = Field(default=None, description="Its version, `MAJOR.MINOR`.")
    train_data: str | None = Field(default=None, description="The dataset (or its sub-folder) trained on.")
    gpu: str | None = Field(default=None, description='`"True"` when the run had GPUs, else `"False"`.')


class ResultsParameters(_ResultsPart):
    pipeline: str | None = Field(default=None, description="The template the run was started from.")
    inputs: ResultsInputs = Field(default_factory=ResultsInputs)
    env: dict[str, str] = Field(default_factory=dict, description="The template's parameters, as text.")


class ResultsOutputs(_ResultsPart):
    train_data: str | None = Field(default=None, description="The data snapshot, when one was kept.")
    artifacts_data: str | None = Field(default=None, description='`"artifacts"` when the run wrote any.')
    package: str | None = Field(default=None, description="The package of the trained version.")
    version: str | None = Field(default=None, description="The trained version, `MAJOR.MINOR`.")


class ResultsSummary(_ResultsPart):
    execution_time: float | None = Field(default=None, description="Seconds from launch to the end.")
    start_at: int | None = Field(default=None, description="Unix time of the launch.")
    end_at: int | None = Field(default=None, description="Unix time of the end.")
    outputs: ResultsOutputs = Field(default_factory=ResultsOutputs)
    cut_short: str | None = Field(
        default=None,
        description="`max_duration` when the run's maximum duration stopped it and the model was kept "
        "as it was then (the run ended `stopped`); absent otherwise.",
    )


class RunResults(_ResultsPart):
    """`_results.json` in UiPath AI Center's shape, written when the run succeeded."""

    parameters: ResultsParameters = Field(default_factory=ResultsParameters)
    run_summary: ResultsSummary = Field(default_factory=ResultsSummary)
