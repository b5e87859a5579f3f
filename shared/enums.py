"""Statuses, reasons and kinds fixed across the project (DESIGN.md, "The run's life")."""

from enum import StrEnum


class RunStatus(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_RUN_STATUSES


ACTIVE_RUN_STATUSES = frozenset({RunStatus.STARTING, RunStatus.RUNNING, RunStatus.STOPPING})
ENDED_RUN_STATUSES = frozenset(RunStatus) - ACTIVE_RUN_STATUSES


class ProcessStatus(StrEnum):
    """A process shows its latest run's status, or `created` before its first start."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


class ReasonCode(StrEnum):
    """Why a run ended (or is ending)."""

    COMPLETED = "completed"
    USER_STOP = "user_stop"
    MAX_DURATION = "max_duration"
    START_TIMEOUT = "start_timeout"
    LOST = "lost"
    EXIT_NONZERO = "exit_nonzero"
    EXCEPTION = "exception"
    INVALID_PACKAGE = "invalid_package"
    MISSING_OUTPUTS = "missing_outputs"
    MACHINE_REFUSED = "machine_refused"
    # A cluster engine ended the job on its own (agent/slurm.py, docs/executors.md).
    TIME_LIMIT = "time_limit"
    NODE_FAILURE = "node_failure"
    PREEMPTED = "preempted"
    OUT_OF_MEMORY = "out_of_memory"
    CANCELLED = "cancelled"


class PipelineType(StrEnum):
    TRAINING = "training"
    EVALUATION = "evaluation"
    FULL = "full"


class CommandKind(StrEnum):
    START_RUN = "start_run"
    STOP_RUN = "stop_run"
    START_SERVICE = "start_service"
    STOP_SERVICE = "stop_service"


class CommandState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    CANCELLED = "cancelled"


class RunEventType(StrEnum):
    """Facts an agent reports about a run."""

    LAUNCHED = "launched"
    STAGE = "stage"
    EXITED = "exited"
    FINISHED = "finished"


class ActorKind(StrEnum):
    USER = "user"
    AGENT = "agent"
    SYSTEM = "system"


class ServiceStatus(StrEnum):
    """A published package version's life (docs/serving.md): `serving` while at least one instance
    answers; `stopped` and `failed` are final until the next start."""

    CREATED = "created"
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class ServiceEventType(StrEnum):
    """What an agent reports about one instance of a service (POST agent/services/{id}/events)."""

    STARTING = "starting"
    SERVING = "serving"
    EXITED = "exited"
    STOPPED = "stopped"
