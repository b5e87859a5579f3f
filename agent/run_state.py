"""What the agent remembers of a run across its own restarts: `RunState`, one file a run in `state/`.

A run moves through phases, each persisted (atomically, durably) in `state/<run_id>.json` under the
work dir before the agent acts on the next one, so an agent killed at any moment resumes where it was:

    preparing  -> the working folder and the interpreter are made; nothing runs yet
    launched   -> the runner process exists (pid + its start time, against pid reuse)
    exited     -> the runner ended; its outcome is read and kept in the state
    done       -> `exited` (and, after a success, every output and `finished`) reached the API

The state lives outside the run's folder: the run's folder belongs to the package's user, and a
package must not be able to rewrite which pid the agent signals.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PHASES = ("preparing", "launched", "exited", "done")


@dataclass
class RunState:
    """What the agent must remember about a run across its own restarts."""

    payload: dict[str, Any]
    phase: str = "preparing"
    pid: int | None = None
    pid_start: int | None = None  # /proc/<pid>/stat field 22: the same pid is the same process
    launched_at: float | None = None  # wall clock, for the maximum duration across restarts
    launch_reported: bool = False
    stop_reason: str | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    outcome: dict[str, Any] | None = None
    gpus: list[int] = field(default_factory=list)
    slurm_job_id: int | None = None  # the Slurm executor's job (agent/slurm.py), re-adopted by its id
    slurm_end: str | None = None  # the job's final state as Slurm gave it (TIMEOUT, NODE_FAIL...)

    @property
    def run_id(self) -> uuid.UUID:
        return uuid.UUID(str(self.payload["run_id"]))


class StateStore:
    """`state/<run_id>.json` under the work dir, each write atomic and durable."""

    def __init__(self, work_dir: Path) -> None:
        self.folder = Path(work_dir) / "state"

    def ensure(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)

    def path(self, run_id: uuid.UUID) -> Path:
        return self.folder / f"{run_id}.json"

    def save(self, state: RunState) -> None:
        path = self.path(state.run_id)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(asdict(state), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def load(self, run_id: uuid.UUID) -> RunState | None:
        try:
            data = json.loads(self.path(run_id).read_text(encoding="utf-8"))
            return RunState(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as error:
            logger.error("run %s: unreadable state (%s); treating it as unknown", run_id, error)
            return None

    def unfinished(self) -> list[RunState]:
        """Every run not yet `done`, oldest first."""
        if not self.folder.is_dir():
            return []
        states = []
        for path in sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            with contextlib.suppress(ValueError):
                state = self.load(uuid.UUID(path.stem))
                if state is not None and state.phase != "done":
                    states.append(state)
        return states
