"""What every run on this machine shares (`Machine`), and the start-up steps that complete it: who
runs are launched as (`RunUser`), the run-side files installed in the work dir (`install_runtime`),
and how runs are launched, checked by a probe (`prepare_launches`).

`agent/cli.py` builds a `Machine` from the settings and hands it to the daemon; the daemon completes
it at start-up, under its lock on the work dir, and every `Execution` reads it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.client import ApiClient
from agent.config import AgentSettings
from agent.gpus import GpuPool
from agent.run_state import StateStore
from agent.sandbox import Launcher, LaunchRefused, Limits, describe_python, interpreter_folders, preflight
from agent.workdir import BlobCache, RunFolder

logger = logging.getLogger(__name__)


class RunTelemetryLike(Protocol):
    async def ship_forever(self) -> None: ...

    async def flush(self) -> None: ...


TelemetryFactory = Callable[[ApiClient, uuid.UUID, RunFolder, float], RunTelemetryLike]


@dataclass(frozen=True)
class RunUser:
    """Who the run's processes run as: None = the agent's own user."""

    uid: int
    gid: int
    name: str
    home: str

    @classmethod
    def resolve(cls, name: str | None) -> RunUser | None:
        if name is None:
            return None
        try:
            entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
        except KeyError:
            raise ValueError(f"TRAINYARD_RUN_AS names no user on this machine: {name!r}") from None
        if entry.pw_uid == os.geteuid():
            return None
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


@dataclass
class Machine:
    """What every run on this machine shares."""

    settings: AgentSettings
    client: ApiClient
    cache: BlobCache
    states: StateStore
    gpus: GpuPool
    runner: Path
    run_user: RunUser | None
    python: str = sys.executable
    telemetry: TelemetryFactory | None = None
    launcher: Launcher = field(default_factory=lambda: Launcher(uid=None, gid=None))
    # What TRAINYARD_RUN_PYTHON is (agent/sandbox.py's probe): package environments are built from it.
    interpreter: dict[str, Any] = field(default_factory=dict)


def install_runtime(work_dir: Path) -> Path:
    """Copy the run-side files (runner.py, server.py, trainyard/) into the work dir, readable by every
    user, so a package running as TRAINYARD_RUN_AS needs no access to wherever the agent is installed.
    The runner's path is returned; the serving process (agent/services.py) is `server.py` beside it."""
    source = Path(__file__).resolve().parent / "runtime"
    files = ["runner.py", "server.py", "trainyard/__init__.py"]
    digest = _digest_of([source / name for name in files])
    target = Path(work_dir) / "runtime" / digest
    if not (target / "runner.py").is_file():
        staging = target.with_name(f".{digest}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        for name in files:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, staging / name)
        for path in [staging, *staging.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        try:
            os.replace(staging, target)
        except OSError:  # another agent process installed it first
            shutil.rmtree(staging, ignore_errors=True)
    for path in (Path(work_dir), Path(work_dir) / "runtime"):
        os.chmod(path, os.stat(path).st_mode | 0o011)  # traversable, not listable, by the run's user
    return target / "runner.py"


def _digest_of(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


async def prepare_launches(machine: Machine) -> None:
    """Learn what the run interpreter is, set up how runs are launched, and launch the probe the
    same way: an agent whose packages could never start refuses to start (LaunchRefused)."""
    settings = machine.settings
    sandbox = settings.sandbox == "bwrap"
    if sandbox:
        for program in ("bwrap", *(("setpriv",) if os.geteuid() == 0 else ())):
            if shutil.which(program) is None:
                raise LaunchRefused(
                    f"TRAINYARD_SANDBOX=bwrap needs {program}, which is not installed "
                    "(Debian: apt-get install bubblewrap util-linux)"
                )
    machine.interpreter = await describe_python(settings.run_python)
    user = machine.run_user
    machine.launcher = Launcher(
        uid=user.uid if user else None,
        gid=user.gid if user else None,
        sandbox=sandbox,
        network=settings.sandbox_network,
        limits=Limits(settings.run_memory_bytes, settings.run_cpu_seconds, settings.run_max_processes),
        readable=interpreter_folders(machine.interpreter),
        hidden=tuple(str(p) for p in (settings.agent_token_file,) if p is not None),
        bwrap=shutil.which("bwrap") or "bwrap",
    )
    name = user.name if user else "(the agent's own user)"
    work_dir = Path(settings.agent_work_dir)
    await preflight(machine.launcher, settings.run_python, machine.runner, work_dir, name)
    if user is None and os.geteuid() == 0:
        logger.warning("packages run as root (TRAINYARD_ALLOW_UNSAFE_RUN_USER): for throwaway machines")
    elif user is None and not sandbox:
        logger.warning(
            "packages run as the agent's own user without a sandbox (TRAINYARD_ALLOW_UNSAFE_RUN_USER): "
            "a package can read the agent's token"
        )
    logger.info(
        "runs: as %s, %s, Python %s (%s)",
        name,
        "in a bubblewrap sandbox" if sandbox else "without a sandbox",
        machine.interpreter.get("version"),
        settings.run_python,
    )
