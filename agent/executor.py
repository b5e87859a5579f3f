"""One training run on this machine, from its start command to `finished`.

A run moves through phases, each persisted (atomically) in `state/<run_id>.json` under the work dir
before the agent acts on the next one, so an agent killed at any moment resumes where it was:

    preparing  -> the working folder and the interpreter are made; nothing runs yet
    launched   -> the runner process exists (pid + its start time, against pid reuse)
    exited     -> the runner ended; its outcome is read and kept in the state
    done       -> `exited` (and, after a success, every output and `finished`) reached the API

The state lives outside the run's folder: the run's folder belongs to the package's user, and a
package must not be able to rewrite which pid the agent signals.

The agent reports facts; the API decides. A stop asked before launch is reported as an exit without
a code (the API ends the run `stopped`); a stop after launch is SIGTERM to the runner, which forwards
it to every process of the run and SIGKILLs what is left after the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import pwd
import shutil
import signal
import sys
import time
import uuid
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from agent.client import ApiClient, ApiError, ApiRejected
from agent.config import AgentSettings
from agent.environments import EnvironmentBuildFailed, python_for
from agent.gpus import GpuPool, visible_devices
from agent.runtime.runner import descendants
from agent.sandbox import Launcher
from agent.workdir import BlobCache, RunFolder, disk_full, open_run_file, prepare_run, run_folder
from shared.enums import PipelineType, ReasonCode
from shared.protocol import (
    ERROR_TAIL_MAX_CHARS,
    ExitedEvent,
    FinishedEvent,
    LaunchedEvent,
    RunEventReply,
    SnapshotUpload,
    StageEvent,
    StartRunPayload,
)

logger = logging.getLogger(__name__)

PHASES = ("preparing", "launched", "exited", "done")
# After the runner's own grace, how long the agent waits before it SIGKILLs what is left itself.
KILL_MARGIN_SECONDS = 10.0
STDERR_TAIL_BYTES = 8 * 1024
MAX_OUTCOME_BYTES = 64 * 1024 * 1024  # a larger outcome.json is not the runner's: no outcome
_NO_UPLOAD = frozenset({"__pycache__", ".ipynb_checkpoints"})
# A launch that fails with one of these fails the same way every time: the run ends at once.
PERMANENT_LAUNCH_ERRORS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.ENOEXEC, errno.ELOOP, errno.EISDIR}
)


class RunTelemetryLike(Protocol):
    async def ship_forever(self) -> None: ...

    async def flush(self) -> None: ...


TelemetryFactory = Callable[[ApiClient, uuid.UUID, RunFolder, float], RunTelemetryLike]


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


def process_start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] == b"Z":
        return None
    return int(fields[19])


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


def install_runtime(work_dir: Path) -> Path:
    """Copy the run-side files (runner.py, trainyard/) into the work dir, readable by every user, so a
    package running as TRAINYARD_RUN_AS needs no access to wherever the agent is installed."""
    source = Path(__file__).resolve().parent / "runtime"
    files = ["runner.py", "trainyard/__init__.py"]
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
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


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


class RunRefused(Exception):
    """The run cannot be carried out here (not enough GPUs, a bad package...): ends it with a reason."""

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class Execution:
    """One run in hand. `drive()` carries it from its current phase to `done`; `stop()` may come at
    any time, from any task, any number of times."""

    def __init__(self, machine: Machine, state: RunState) -> None:
        self.machine = machine
        self.state = state
        self.payload = StartRunPayload.model_validate(state.payload)
        self.folder = run_folder(machine.settings, self.payload)
        self.stop_requested = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        if state.stop_reason is not None:
            self.stop_requested.set()

    @property
    def run_id(self) -> uuid.UUID:
        return self.payload.run_id

    # -- stop ------------------------------------------------------------------------------------

    def stop(self, reason: ReasonCode = ReasonCode.USER_STOP) -> None:
        """SIGTERM to the run (its runner forwards it and enforces the grace); before launch, the run
        is not launched at all."""
        first = not self.stop_requested.is_set()
        self.stop_requested.set()
        if first:
            self.state.stop_reason = reason.value
            self._save()
        self._signal(signal.SIGTERM)

    def _alive(self) -> bool:
        pid = self.state.pid
        return pid is not None and process_start_time(pid) == self.state.pid_start

    def _signal(self, signum: int) -> None:
        pid = self.state.pid
        if self.state.phase != "launched" or pid is None or not self._alive():
            return
        target = self._runner_pid(pid)
        logger.info("run %s: %s to its runner (pid %d)", self.run_id, signal.Signals(signum).name, target)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signum)

    def _runner_pid(self, pid: int) -> int:
        """The runner itself: `pid` unless it is the sandbox that holds it (bubblewrap forwards no
        signal), then the runner found below it."""
        if not self.machine.launcher.sandbox:
            return pid
        for below in descendants(pid):
            with contextlib.suppress(OSError), open(f"/proc/{below}/cmdline", "rb") as file:
                if is_runner(file.read(), self.run_id):
                    return below
        return pid

    def _kill_everything(self) -> None:
        """The runner did not finish within its grace: SIGKILL it and every process below it."""
        pid = self.state.pid
        if pid is None or not self._alive():
            return
        logger.warning("run %s: still alive after the grace; SIGKILL to its processes", self.run_id)
        for victim in [pid, *descendants(pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGKILL)

    # -- the life ----------------------------------------------------------------------------------

    async def drive(self) -> None:
        try:
            if self.state.phase == "preparing":
                await self._prepare_and_launch()
            if self.state.phase == "launched":
                await self._supervise()
            if self.state.phase == "exited":
                await self._conclude()
        except RunRefused as refused:
            await self._end_unlaunched(refused.reason, refused.detail)
        except ApiRejected as error:
            if error.status != 404:
                raise
            # The API no longer knows the run (its process was deleted): nothing of it may go on.
            logger.warning("run %s: the API does not know it (%s); stopping it", self.run_id, error)
            self.stop(ReasonCode.USER_STOP)
            self._done()
        finally:
            if self.state.phase == "done":
                self.machine.gpus.release(self.run_id)

    async def _report(self, event: LaunchedEvent | StageEvent | ExitedEvent | FinishedEvent) -> RunEventReply:
        reply = await self.machine.client.report(self.run_id, event)
        if reply.stop and not self.stop_requested.is_set() and self.state.phase in ("preparing", "launched"):
            logger.info("run %s: the API says %s; stopping it", self.run_id, reply.status.value)
            self.stop(ReasonCode.USER_STOP)
        return reply

    async def _until_stopped(self, work: Awaitable[Any]) -> tuple[bool, Any]:
        """Run `work` unless a stop comes first: (True, result) or (False, None)."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return False, None

    async def _prepare_and_launch(self) -> None:
        machine, payload = self.machine, self.payload
        if payload.gpus:
            taken = machine.gpus.take(self.run_id, payload.gpus)
            if taken is None:
                raise RunRefused(
                    ReasonCode.MACHINE_REFUSED,
                    f"the run asks for {payload.gpus} GPU(s) and this machine has not that many free",
                )
            self.state.gpus = taken
            self._save()
        if self.stop_requested.is_set():
            await self._end_unlaunched(None, "stopped before it was launched")
            return
        await self._report(StageEvent(type="stage", stage="preparing"))
        try:
            finished, prepared = await self._until_stopped(self._prepare())
        except EnvironmentBuildFailed as error:
            detail = f"its requirements.txt could not be installed:\n{error}"
            raise RunRefused(ReasonCode.INVALID_PACKAGE, detail) from error
        except ApiRejected as error:
            detail = f"the run's inputs could not be fetched: {error}"
            raise RunRefused(ReasonCode.EXCEPTION, detail) from error
        except (ApiError, OSError, ValueError) as error:
            raise RunRefused(ReasonCode.EXCEPTION, f"the run could not be prepared: {error}") from error
        if not finished:
            await self._end_unlaunched(None, "stopped before it was launched")
            return
        await self._launch(prepared)
        if not self.state.launch_reported:
            await self._report(LaunchedEvent(type="launched", pid=self.state.pid))
            self.state.launch_reported = True
            self._save()

    async def _prepare(self) -> str:
        machine = self.machine
        folder = await prepare_run(machine.client, machine.settings, self.payload, cache=machine.cache)
        if machine.run_user is not None:
            await asyncio.to_thread(self._hand_over, folder)
        if not self.payload.package_has_requirements:
            return machine.python
        python = await python_for(
            folder.package,
            Path(machine.settings.agent_work_dir),
            venvs=machine.settings.package_venvs,
            base=machine.python,
            outer=machine.interpreter.get("outer_site_packages") or [],
            launcher=machine.launcher,
        )
        return str(python)

    def _hand_over(self, folder: RunFolder) -> None:
        """The run's folder, package and artifacts belong to the run's user; the data stays read-only."""
        user = self.machine.run_user
        assert user is not None
        os.chown(folder.root, user.uid, user.gid)
        os.chmod(folder.root, 0o750)
        for top in (folder.package, folder.artifacts):
            for path in [top, *top.rglob("*")]:
                os.lchown(path, user.uid, user.gid)
        for readable in (folder.root.parent, folder.data, folder.test_data):
            if readable is not None and readable.exists():
                os.chmod(readable, os.stat(readable).st_mode | 0o055)

    def environment(self, python: str) -> dict[str, str]:
        """The run's environment exactly as DESIGN.md lists it, built from nothing: the agent's own
        variables (its token among them) never reach the package."""
        payload, folder, settings = self.payload, self.folder, self.machine.settings
        parameters_file = folder.root / "parameters.json"
        env = {
            "PATH": os.pathsep.join([str(Path(python).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(folder.root),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        for name, value in payload.parameters.items():
            env[name] = _env_value(value)
        env.update(
            {
                "data_directory": str(folder.data),
                "test_data_directory": str(folder.test_data or ""),
                "artifacts_directory": str(folder.artifacts),
                "save_training_data": "true" if payload.save_training_data else "false",
                "augmentation": payload.augmentation,
                **visible_devices(self.state.gpus),
                "TRAINYARD_PARAMETERS_FILE": str(parameters_file),
                "TRAINYARD_PIPELINE": payload.pipeline_type.value,
                "TRAINYARD_OUTCOME": str(folder.outcome),
                "TRAINYARD_SPOOL": str(folder.spool),
                "TRAINYARD_STDOUT_LOG": str(folder.stdout),
                "TRAINYARD_STDERR_LOG": str(folder.stderr),
                "TRAINYARD_STOP_GRACE": str(settings.stop_grace),
                "TRAINYARD_PROCESSES": str(payload.processes),
            }
        )
        if not payload.test_dataset and payload.pipeline_type is not PipelineType.FULL:
            del env["test_data_directory"]
        return env

    async def _launch(self, python: str) -> None:
        folder = self.folder
        orphan = find_runner(self.run_id)
        if orphan is not None:  # launched just before the agent died, before it could note the pid
            logger.info("run %s: adopting its runner (pid %d)", self.run_id, orphan)
            self._launched(orphan, time.time())
            return
        env = self.environment(python)
        # The supervisor's own words; the package's go to stdout.log and stderr.log.
        log = await asyncio.to_thread(self._write_run_files, Path(env["TRAINYARD_PARAMETERS_FILE"]))
        launcher = self.machine.launcher
        runner = self.machine.runner
        command = launcher.command(
            [python, str(runner), "--run", str(self.run_id)],
            cwd=folder.package,
            writable=[folder.root],
            readonly=[runner.parent, Path(python).parent.parent],
        )
        uid, gid = launcher.spawn_user()
        try:
            self._process = await asyncio.create_subprocess_exec(
                *command,
                cwd=folder.package,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own session: the agent's signals and death do not reach it
                user=uid,
                group=gid,
                extra_groups=[] if uid is not None else None,
                preexec_fn=launcher.preexec(),
            )
        except OSError as error:
            if error.errno not in PERMANENT_LAUNCH_ERRORS:
                raise  # out of processes, of memory...: the daemon tries again
            raise RunRefused(
                ReasonCode.MACHINE_REFUSED,
                f"the run could not be launched: {command[0]}: {error.strerror or error}. This machine's "
                "agent is misconfigured (TRAINYARD_RUN_AS, TRAINYARD_RUN_PYTHON, TRAINYARD_SANDBOX); "
                "no retry can succeed",
            ) from error
        finally:
            log.close()
        self._launched(self._process.pid, time.time())

    def _launched(self, pid: int, at: float) -> None:
        self.state.pid, self.state.pid_start = pid, process_start_time(pid)
        self.state.launched_at = at
        self.state.phase = "launched"
        self._save()
        logger.info("run %s: launched (runner pid %d)", self.run_id, pid)
        if self.stop_requested.is_set():  # asked while launching
            self._signal(signal.SIGTERM)

    def _write_run_files(self, parameters_file: Path) -> IO[bytes]:
        parameters = json.dumps(self.payload.parameters, indent=2, sort_keys=True)
        parameters_file.write_text(parameters + "\n", encoding="utf-8")
        log_path = self.folder.root / "runner.log"
        log = open(log_path, "ab")  # noqa: SIM115 (handed to the process, closed by the caller)
        user = self.machine.run_user
        if user is not None:
            for path in (log_path, parameters_file):
                os.chown(path, user.uid, user.gid)
        return log

    async def _supervise(self) -> None:
        """Wait for the runner to end, enforcing the maximum duration, shipping telemetry meanwhile."""
        machine = self.machine
        telemetry = None
        shipper: asyncio.Task[None] | None = None
        if machine.telemetry is not None:
            telemetry = machine.telemetry(
                machine.client, self.run_id, self.folder, self.state.launched_at or time.time()
            )
            shipper = asyncio.create_task(telemetry.ship_forever(), name=f"telemetry {self.run_id}")
        try:
            if not self.state.launch_reported:
                await self._report(LaunchedEvent(type="launched", pid=self.state.pid))
                self.state.launch_reported = True
                self._save()
            await self._wait_for_exit()
            if telemetry is not None:
                await telemetry.flush()
        finally:
            if shipper is not None:
                shipper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await shipper
        self.state.phase = "exited"
        self._save()

    async def _wait_for_exit(self) -> None:
        launched = self.state.launched_at or time.time()
        deadline = launched + self.payload.max_duration_seconds
        ended = asyncio.ensure_future(self._exit_status())
        stopper = asyncio.ensure_future(self.stop_requested.wait())
        kill_at: float | None = None
        waits: set[asyncio.Future[Any]]
        try:
            while not ended.done():
                if time.time() >= deadline and not self.stop_requested.is_set():
                    logger.info("run %s: maximum duration reached", self.run_id)
                    self.stop(ReasonCode.MAX_DURATION)
                if self.stop_requested.is_set():
                    if kill_at is None:
                        kill_at = time.monotonic() + self.machine.settings.stop_grace + KILL_MARGIN_SECONDS
                        self._signal(signal.SIGTERM)
                    elif time.monotonic() >= kill_at:
                        self._kill_everything()
                        kill_at = time.monotonic() + KILL_MARGIN_SECONDS
                    waits, timeout = {ended}, kill_at - time.monotonic()
                else:
                    waits, timeout = {ended, stopper}, deadline - time.time()
                timeout = min(max(timeout, 0.01), 3600.0)
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not ended.done():
                ended.cancel()
        code, signum = ended.result()
        self.state.exit_code, self.state.exit_signal = code, signum
        self.state.outcome = self._read_outcome()

    async def _exit_status(self) -> tuple[int | None, int | None]:
        if self._process is not None:
            returncode = await self._process.wait()
            return (None, -returncode) if returncode < 0 else (returncode, None)
        await wait_for_pid(self.state.pid, self.state.pid_start)
        return None, None  # not our child (re-adopted): its outcome file says what happened

    def _read_outcome(self) -> dict[str, Any] | None:
        # The run's folder is the package's: its outcome is read as a regular file, never through a
        # symlink or from a FIFO, and within a bound.
        file = open_run_file(self.folder.outcome)
        if file is None:
            return None
        try:
            with file:
                raw = file.read(MAX_OUTCOME_BYTES + 1)
            data = json.loads(raw) if len(raw) <= MAX_OUTCOME_BYTES else None
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _stderr_tail(self) -> str:
        for path in (self.folder.stderr, self.folder.root / "runner.log"):
            file = open_run_file(path)
            if file is None:
                continue
            try:
                with file:
                    file.seek(0, os.SEEK_END)
                    file.seek(max(0, file.tell() - STDERR_TAIL_BYTES))
                    tail = file.read().decode("utf-8", "replace").strip()
            except OSError:
                continue
            if tail:
                return tail
        return ""

    def exited_event(self) -> tuple[ExitedEvent, bool]:
        """The `exited` fact, and whether the run succeeded (its outputs are to be uploaded)."""
        state, outcome = self.state, self.state.outcome or {}
        succeeded = outcome.get("status") == "succeeded" and state.exit_signal is None
        code = state.exit_code
        if code is None and state.exit_signal is None:  # re-adopted: the outcome is all we know
            code = 0 if succeeded else 1
        succeeded = succeeded and code == 0
        reason: ReasonCode | None = None
        if state.stop_reason == ReasonCode.MAX_DURATION.value:
            reason = ReasonCode.MAX_DURATION
        elif not succeeded:
            with contextlib.suppress(ValueError):
                reason = ReasonCode(str(outcome.get("reason_code")))
            if reason in (None, ReasonCode.COMPLETED):
                reason = ReasonCode.EXIT_NONZERO
        detail = str(outcome.get("detail") or "") if isinstance(outcome.get("detail"), str) else ""
        if not succeeded and not detail:
            detail = self._stderr_tail() or "the run ended without an outcome or any output on stderr"
        if not succeeded and (full := disk_full(self.folder.root)) is not None:
            detail = f"{detail}\n{full}"
        event = ExitedEvent(
            type="exited",
            exit_code=code,
            signal=state.exit_signal,
            error_tail=detail[-ERROR_TAIL_MAX_CHARS:],
            reason_code=reason,
        )
        return event, succeeded and not self.stop_requested.is_set()

    async def _conclude(self) -> None:
        event, upload = self.exited_event()
        if upload:
            refused = await self._upload_outputs()
            if refused is not None:
                event = ExitedEvent(
                    type="exited",
                    exit_code=None,
                    reason_code=ReasonCode.MISSING_OUTPUTS,
                    error_tail=refused[-ERROR_TAIL_MAX_CHARS:],
                )
                upload = False
        await self._report(event)
        if upload:
            await self._report(FinishedEvent(type="finished"))
        self._done()

    async def _upload_outputs(self) -> str | None:
        """Every output of a successful run; the reason when the API refused one, else None."""
        client, payload, folder = self.machine.client, self.payload, self.folder
        try:
            if payload.pipeline_type is not PipelineType.EVALUATION and payload.package_sha256:
                archive = folder.root / "output-package.zip"
                await asyncio.to_thread(zip_folder, folder.package, archive)
                await client.upload_package(self.run_id, archive)
                archive.unlink(missing_ok=True)
            for relative, path in await asyncio.to_thread(_artifact_files, folder.artifacts):
                await client.upload_artifact(self.run_id, relative, path)
            if payload.save_training_data and payload.dataset:
                manifest = await client.dataset_manifest(self.run_id)
                await client.upload_snapshot(self.run_id, SnapshotUpload(files=manifest.files))
            outcome = self.state.outcome or {}
            evaluation = outcome.get("evaluation")
            if isinstance(evaluation, dict):
                stage_times = outcome.get("stage_times")
                if isinstance(stage_times, dict) and "evaluation" in stage_times:
                    evaluation.setdefault("duration_seconds", stage_times["evaluation"])
                await client.upload_evaluation(self.run_id, evaluation)
        except ApiRejected as error:
            return f"an output of the run was refused by the API: {error}"
        except OSError as error:
            return f"the run's outputs could not be read: {error}"
        return None

    async def _end_unlaunched(self, reason: ReasonCode | None, detail: str) -> None:
        """The run never launched: report an exit without a code (the API decides stopped or failed)."""
        await self._report(ExitedEvent(type="exited", exit_code=None, reason_code=reason, error_tail=detail))
        self._done()

    def _done(self) -> None:
        self.state.phase = "done"
        self._save()
        for part in (self.folder.package, self.folder.data, self.folder.test_data, self.folder.artifacts):
            if part is not None:
                shutil.rmtree(part, ignore_errors=True)
        logger.info("run %s: done", self.run_id)

    def _save(self) -> None:
        self.machine.states.save(self.state)


def command_lines() -> Iterator[tuple[int, bytes]]:
    """(pid, command line with NUL separators) of every process this user may see, from /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                yield int(entry), file.read()
        except OSError:
            continue


def is_runner(cmdline: bytes, run_id: uuid.UUID) -> bool:
    """Whether `cmdline` is the runner of `run_id`: not its `--child`, nor the sandbox around it
    (bubblewrap's processes carry the whole command line they run)."""
    program = cmdline.split(b"\0", 1)[0]
    return (
        f"\0--run\0{run_id}".encode() in cmdline
        and b"runner.py" in cmdline
        and b"--child" not in cmdline
        and not program.endswith((b"bwrap", b"setpriv"))
    )


def find_runner(run_id: uuid.UUID) -> int | None:
    """The pid of a live runner started for `run_id` (its command line names the run), if any."""
    for pid, cmdline in command_lines():
        if is_runner(cmdline, run_id) and process_start_time(pid) is not None:
            return pid
    return None


async def wait_for_pid(pid: int | None, start: int | None) -> None:
    """Until the process `pid` (started at `start`) is gone; it need not be our child."""
    if pid is None or process_start_time(pid) != start:
        return
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        while process_start_time(pid) == start:  # noqa: ASYNC110 (no event exists for another's process)
            await asyncio.sleep(0.1)
        return
    loop = asyncio.get_running_loop()
    gone = loop.create_future()

    def ended() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, ended)
    try:
        if process_start_time(pid) == start:
            await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def zip_folder(folder: Path, archive: Path) -> None:
    """The package folder as a zip (regular files only; caches left out), written atomically."""
    temporary = archive.with_name(f".{archive.name}.tmp")
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if _NO_UPLOAD & set(relative.parts) or path.is_symlink() or not path.is_file():
                continue
            zf.write(path, relative.as_posix())
    os.replace(temporary, archive)


def _artifact_files(folder: Path) -> list[tuple[str, Path]]:
    if not folder.is_dir():
        return []
    return [
        (path.relative_to(folder).as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    ]
