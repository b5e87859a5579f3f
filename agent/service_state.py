"""What the agent remembers of a service across its own restarts: `ServiceState`, one file a service in
`state/services/<service_id>.json` under the work dir (beside the runs' states, outside the service's
folder, so a package cannot rewrite which pid the agent signals), and the service's folder:

    services/<service_id>/package/                 the package version unpacked (the current directory)
    services/<service_id>/package/.trainyard-sha256   written last: which zip it was unpacked from
    services/<service_id>/instance-<n>.stderr.log  each instance's stderr (the error tail comes from it)
    services/<service_id>/instance-<n>.stdout.log

Each instance is known by its pid and that pid's start time (against pid reuse), its port, and the
times it died lately (its restart budget, agent/services.py).
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

PACKAGE_MARKER = ".trainyard-sha256"


@dataclass
class InstanceState:
    pid: int | None = None
    pid_start: int | None = None  # /proc/<pid>/stat field 22: the same pid is the same process
    port: int | None = None
    stderr_offset: int = 0  # where this launch's stderr starts in the log
    served: bool = False  # this launch answered /health once (a re-adopted one is watched, not loaded)
    failures: list[float] = field(default_factory=list)  # wall clock of each recent death
    given_up: bool = False


@dataclass
class ServiceState:
    payload: dict[str, Any]
    started_at: float  # wall clock, for the maximum run time across restarts
    stop_reason: str | None = None
    gpus: list[int] = field(default_factory=list)
    instances: dict[str, InstanceState] = field(default_factory=dict)

    @property
    def service_id(self) -> uuid.UUID:
        return uuid.UUID(str(self.payload["service_id"]))

    def instance(self, index: int) -> InstanceState:
        return self.instances.setdefault(str(index), InstanceState())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServiceState:
        instances = {key: InstanceState(**value) for key, value in dict(data.pop("instances", {})).items()}
        return cls(**data, instances=instances)


@dataclass(frozen=True)
class ServiceFolder:
    root: Path
    package: Path

    def stderr(self, index: int) -> Path:
        return self.root / f"instance-{index}.stderr.log"

    def stdout(self, index: int) -> Path:
        return self.root / f"instance-{index}.stdout.log"


def service_folder(work_dir: Path, service_id: uuid.UUID) -> ServiceFolder:
    root = Path(work_dir) / "services" / str(service_id)
    return ServiceFolder(root=root, package=root / "package")


class ServiceStore:
    """`state/services/<service_id>.json` under the work dir, each write atomic and durable."""

    def __init__(self, work_dir: Path) -> None:
        self.folder = Path(work_dir) / "state" / "services"

    def ensure(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)

    def path(self, service_id: uuid.UUID) -> Path:
        return self.folder / f"{service_id}.json"

    def save(self, state: ServiceState) -> None:
        path = self.path(state.service_id)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(asdict(state), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def remove(self, service_id: uuid.UUID) -> None:
        self.path(service_id).unlink(missing_ok=True)

    def all(self) -> list[ServiceState]:
        """Every service the agent had, oldest first; an unreadable file is logged and skipped."""
        if not self.folder.is_dir():
            return []
        states = []
        for path in sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                states.append(ServiceState.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError) as error:
                logger.error("service state %s is unreadable (%s); ignored", path.name, error)
        return states


def read_tail(path: Path, start: int, limit: int) -> str:
    """The last `limit` bytes of `path` from `start` on, as text (the log is the agent's own file)."""
    with contextlib.suppress(OSError), open(path, "rb") as file:
        end = file.seek(0, os.SEEK_END)
        file.seek(max(start if start <= end else 0, end - limit))
        return file.read().decode("utf-8", "replace").strip()
    return ""
