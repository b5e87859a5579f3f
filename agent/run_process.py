"""A run's processes on this machine: its environment, the launch of its runner (or the adoption of a
runner launched just before the agent died), signals, and the wait for its end under the maximum
duration.

The runner runs in a session of its own, as `TRAINYARD_RUN_AS`, through `sandbox.Launcher`: neither
the agent's signals nor its death reach it. A stop is SIGTERM to the runner, which forwards it to
every process of the run and SIGKILLs what is left after the grace; `KILL_MARGIN_SECONDS` later the
agent SIGKILLs whatever is still there itself. A runner is known by its pid and that pid's start
time, so a pid reused by another process after a restart is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from agent.gpus import visible_devices
from agent.run_state import RunState
from agent.runtime.runner import descendants
from agent.sandbox import Launcher
from agent.workdir import RunFolder, open_run_file
from shared.enums import PipelineType, ReasonCode
from shared.protocol import StartRunPayload

logger = logging.getLogger(__name__)
MAX_DURATION = ReasonCode.MAX_DURATION.value

# After the runner's own grace, how long the agent waits before it SIGKILLs what is left itself.
KILL_MARGIN_SECONDS = 10.0
STDERR_TAIL_BYTES = 8 * 1024
MAX_OUTCOME_BYTES = 64 * 1024 * 1024  # a larger outcome.json is not the runner's: no outcome
# A launch that fails with one of these fails the same way every time: the run ends at once.
PERMANENT_LAUNCH_ERRORS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.ENOEXEC, errno.ELOOP, errno.EISDIR}
)


class LaunchImpossible(Exception):
    """The runner cannot be launched, and no retry can change that (the machine is misconfigured)."""


def run_environment(
    payload: StartRunPayload, folder: RunFolder, gpus: list[int], python: str, stop_grace: float
) -> dict[str, str]:
    """The run's environment exactly as DESIGN.md lists it, built from nothing: the agent's own
    variables (its token among them) never reach the package."""
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
            **visible_devices(gpus),
            "TRAINYARD_PARAMETERS_FILE": str(folder.root / "parameters.json"),
            "TRAINYARD_PIPELINE": payload.pipeline_type.value,
            "TRAINYARD_OUTCOME": str(folder.outcome),
            "TRAINYARD_SPOOL": str(folder.spool),
            "TRAINYARD_STDOUT_LOG": str(folder.stdout),
            "TRAINYARD_STDERR_LOG": str(folder.stderr),
            "TRAINYARD_STOP_GRACE": str(stop_grace),
            "TRAINYARD_PROCESSES": str(payload.processes),
            "TRAINYARD_STOP_REASON_FILE": str(stop_reason_file(folder)),
        }
    )
    if payload.pipeline_type is PipelineType.FULL:
        env.update(split_environment(folder, bool(payload.test_dataset)))
    elif not payload.test_dataset:
        del env["test_data_directory"]
    return env


def split_environment(folder: RunFolder, test_dataset: bool) -> dict[str, str]:
    """A full pipeline's split (UiPath): `process_data` writes the training part into
    `training_data_directory` and, without a test dataset, the test part into `test_data_directory`
    (also named `evaluation_data_directory`, as UiPath's package guide calls it). Both are folders of
    the run, outside its package, so the split never ships in the trained version."""
    split = folder.root / "split"
    test = str(folder.test_data) if test_dataset and folder.test_data else str(split / "test")
    return {
        "training_data_directory": str(split / "training"),
        "test_data_directory": test,
        "evaluation_data_directory": test,
    }


def stop_reason_file(folder: RunFolder) -> Path:
    """Where the agent writes why it stops the run, before the SIGTERM: the runner reads it to tell a
    stop at the maximum duration (finish and save) from any other (end now)."""
    return folder.root / "stop-reason"


def write_stop_reason(folder: RunFolder, reason: str, owner: tuple[int, int] | None) -> None:
    """The stop's reason for the runner, written atomically (the package's own files are beside it)."""
    path = stop_reason_file(folder)
    temporary = path.with_name(f".stop-reason.{os.getpid()}")
    with contextlib.suppress(OSError):
        temporary.unlink()
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            if owner is not None:
                os.fchown(file.fileno(), *owner)
            file.write(reason + "\n")
        os.replace(temporary, path)
    except OSError as error:  # the stop goes on as a plain stop: nothing is kept
        logger.warning("the stop's reason could not be written to %s: %s", path, error)


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)


class RunProcess:
    """The runner of one run: launched or adopted, signalled, waited for. It reads the pid from the
    run's state, which `Execution` owns and saves."""

    def __init__(
        self,
        run_id: uuid.UUID,
        folder: RunFolder,
        state: RunState,
        launcher: Launcher,
        owner: tuple[int, int] | None,
    ) -> None:
        self.run_id, self.folder, self.state, self.launcher = run_id, folder, state, launcher
        self.owner = owner  # (uid, gid) of the run's files, None when they stay the agent's
        self._child: asyncio.subprocess.Process | None = None

    # -- launch ----------------------------------------------------------------------------------

    async def launch(self, python: str, runner: Path, env: dict[str, str], parameters: dict[str, Any]) -> int:
        """The pid of the run's runner: one found already running (launched just before the agent
        died, before it could note the pid), else one launched now."""
        orphan = find_runner(self.run_id)
        if orphan is not None:
            logger.info("run %s: adopting its runner (pid %d)", self.run_id, orphan)
            return orphan
        folder, launcher = self.folder, self.launcher
        # The supervisor's own words; the package's go to stdout.log and stderr.log.
        log = await asyncio.to_thread(
            self._write_run_files, Path(env["TRAINYARD_PARAMETERS_FILE"]), parameters
        )
        command = launcher.command(
            [python, str(runner), "--run", str(self.run_id)],
            cwd=folder.package,
            writable=[folder.root],
            readonly=[runner.parent, Path(python).parent.parent],
        )
        uid, gid = launcher.spawn_user()
        try:
            self._child = await asyncio.create_subprocess_exec(
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
            raise LaunchImpossible(
                f"the run could not be launched: {command[0]}: {error.strerror or error}. This machine's "
                "agent is misconfigured (TRAINYARD_RUN_AS, TRAINYARD_RUN_PYTHON, TRAINYARD_SANDBOX); "
                "no retry can succeed"
            ) from error
        finally:
            log.close()
        return self._child.pid

    def _write_run_files(self, parameters_file: Path, parameters: dict[str, Any]) -> IO[bytes]:
        parameters_file.write_text(json.dumps(parameters, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        log_path = self.folder.root / "runner.log"
        log = open(log_path, "ab")  # noqa: SIM115 (handed to the process, closed by the caller)
        if self.owner is not None:
            for path in (log_path, parameters_file):
                os.chown(path, *self.owner)
        return log

    # -- signals ---------------------------------------------------------------------------------

    def alive(self) -> bool:
        pid = self.state.pid
        return pid is not None and process_start_time(pid) == self.state.pid_start

    def signal(self, signum: int) -> None:
        """`signum` to the runner, when it was launched and is still the same process."""
        pid = self.state.pid
        if self.state.phase != "launched" or pid is None or not self.alive():
            return
        target = self._runner_pid(pid)
        logger.info("run %s: %s to its runner (pid %d)", self.run_id, signal.Signals(signum).name, target)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signum)

    def _runner_pid(self, pid: int) -> int:
        """The runner itself: `pid` unless it is the sandbox that holds it (bubblewrap forwards no
        signal), then the runner found below it."""
        if not self.launcher.sandbox:
            return pid
        for below in descendants(pid):
            with contextlib.suppress(OSError), open(f"/proc/{below}/cmdline", "rb") as file:
                if is_runner(file.read(), self.run_id):
                    return below
        return pid

    def kill_everything(self) -> None:
        """The runner did not finish within its grace: SIGKILL it and every process below it."""
        pid = self.state.pid
        if pid is None or not self.alive():
            return
        logger.warning("run %s: still alive after the grace; SIGKILL to its processes", self.run_id)
        for victim in [pid, *descendants(pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGKILL)

    # -- the wait --------------------------------------------------------------------------------

    async def wait(
        self,
        *,
        max_duration: float,
        grace: float,
        stop_requested: asyncio.Event,
        on_max_duration: Callable[[], None],
    ) -> tuple[int | None, int | None]:
        """Until the runner ends: (exit code, signal), both None for a re-adopted runner (its outcome
        file says what happened). Past `max_duration` from its launch, `on_max_duration()` asks for
        the stop; once a stop is asked, SIGTERM, then SIGKILL `grace` + the margin later."""
        deadline = (self.state.launched_at or time.time()) + max_duration
        ended = asyncio.ensure_future(self._exit_status())
        stopper = asyncio.ensure_future(stop_requested.wait())
        kill_at: float | None = None
        waits: set[asyncio.Future[Any]]
        try:
            while not ended.done():
                if time.time() >= deadline and not stop_requested.is_set():
                    logger.info("run %s: maximum duration reached", self.run_id)
                    on_max_duration()
                if stop_requested.is_set():
                    if kill_at is None:
                        kill_at = time.monotonic() + grace + KILL_MARGIN_SECONDS
                        if self.state.stop_reason == MAX_DURATION:
                            # Again, for a runner re-adopted after the agent died between the stop
                            # and its signal: the runner must still know to save.
                            write_stop_reason(self.folder, MAX_DURATION, self.owner)
                        self.signal(signal.SIGTERM)
                    elif time.monotonic() >= kill_at:
                        self.kill_everything()
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
        return ended.result()

    async def _exit_status(self) -> tuple[int | None, int | None]:
        if self._child is not None:
            returncode = await self._child.wait()
            return (None, -returncode) if returncode < 0 else (returncode, None)
        await wait_for_pid(self.state.pid, self.state.pid_start)
        return None, None  # not our child (re-adopted): its outcome file says what happened

    # -- what it left ----------------------------------------------------------------------------

    def read_outcome(self) -> dict[str, Any] | None:
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

    def stderr_tail(self) -> str:
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
