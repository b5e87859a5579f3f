"""The Slurm executor (`TRAINYARD_AGENT_EXECUTOR=slurm`): each run becomes one Slurm batch job.

The agent runs where `sbatch` works (a login node) and stands for the cluster, or the partitions
`TRAINYARD_SLURM_PARTITIONS` allows, as one target machine. Everything else is the local executor's:
the run's folder (`agent/workdir.py`) and interpreter (`agent/environments.py`) are prepared in the
agent's work dir, which must be a folder the compute nodes share at the same path; the job runs the
same runner (`agent/runtime/runner.py`) with the same environment; the spool and logs it writes there
are shipped by the same telemetry (`agent/telemetry.py`); the same phases are persisted
(`agent/run_state.py`), the job's id among them, so a restarted agent re-adopts its jobs by id.

What changes, phase by phase (docs/executors.md has the whole mapping):
- launch: `sbatch --parsable` of a two-line script that `exec`s the runner, every option an argv
  item (`sbatch_arguments`); the run's environment is sbatch's own (`--export=ALL`), built from
  nothing as for a local run, so the agent's variables (its token) never reach the job.
- queued: while Slurm holds the job pending, the stage `queued: <Slurm's reason>`; `launched` is
  reported once the job runs, so the maximum duration counts from then (the API's deadline too).
- observe: `scontrol show job` every `TRAINYARD_SLURM_POLL_INTERVAL` seconds (then `sacct`, for a
  job slurmctld has forgotten); a Slurm that does not answer is waited for, never taken for an end.
- signal: `scancel --signal=TERM --full` (the runner forwards it and SIGKILLs after the grace), then
  `scancel --signal=KILL --full` and `scancel` past the grace; a pending job is simply cancelled.
- end: the runner's outcome as ever; a job Slurm itself ended (its time limit, a node failure, a
  preemption, out of memory, a `scancel` from outside) ends the run with a reason that says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shlex
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.checkpoints import CHECKPOINT_ENV, checkpoint_folder
from agent.config import AgentSettings
from agent.executor import Execution, RunRefused
from agent.machine import Machine
from agent.run_process import KILL_MARGIN_SECONDS, LaunchImpossible, RunProcess, run_environment
from agent.run_state import RunState
from agent.sandbox import Launcher
from agent.workdir import RunFolder
from shared.enums import ReasonCode
from shared.protocol import ERROR_TAIL_MAX_CHARS, ExitedEvent, StageEvent, StartRunPayload

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT_SECONDS = 60.0
# Variables Slurm's own commands read as options (sbatch's SBATCH_*, srun's SLURM_*...): never taken
# from a run's parameters, which become the job's (and sbatch's) environment.
SLURM_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "PMI_", "PMIX_")
# The template's technical parameters an administrator may allow, and the setting that allows them.
OPTIONS = {
    "slurm_partition": ("--partition", "slurm_partitions"),
    "slurm_account": ("--account", "slurm_accounts"),
    "slurm_qos": ("--qos", "slurm_qos"),
}
# Job states (squeue(1) "JOB STATE CODES"): still to run, and ended.
WAITING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD"})
ENDED = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "DEADLINE",
        "NODE_FAIL",
        "BOOT_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
# A job Slurm ended on its own: the run's reason, and the words of its detail.
SLURM_ENDS: dict[str, tuple[ReasonCode, str]] = {
    "TIMEOUT": (ReasonCode.TIME_LIMIT, "it reached its Slurm time limit"),
    "DEADLINE": (ReasonCode.TIME_LIMIT, "it reached its Slurm deadline"),
    "NODE_FAIL": (ReasonCode.NODE_FAILURE, "a node it ran on failed"),
    "BOOT_FAIL": (ReasonCode.NODE_FAILURE, "a node it was given failed to boot"),
    "PREEMPTED": (ReasonCode.PREEMPTED, "a job of higher priority preempted it"),
    "OUT_OF_MEMORY": (ReasonCode.OUT_OF_MEMORY, "it ran out of the memory Slurm gave it"),
    "CANCELLED": (ReasonCode.CANCELLED, "it was cancelled outside Trainyard (scancel)"),
}


class SlurmUnavailable(Exception):
    """Slurm did not answer (slurmctld down, a timeout): try again later, conclude nothing."""


@dataclass(frozen=True)
class JobInfo:
    state: str
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None

    @property
    def waiting(self) -> bool:
        return self.state in WAITING

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def job_name(run_id: uuid.UUID) -> str:
    return f"trainyard-{run_id}"


def _field(text: str, name: str) -> str:
    found = re.search(rf"(?:^|\s){name}=(\S*)", text)
    return found.group(1) if found else ""


def _exit(value: str) -> tuple[int | None, int | None]:
    """Slurm's `ExitCode=code:signal`: (code, None), or (None, signal) when a signal ended it."""
    code, _, signum = value.partition(":")
    if signum.isdigit() and 0 < int(signum) <= 128:
        return None, int(signum)
    return (int(code), None) if code.isdigit() else (None, None)


def parse_scontrol(text: str) -> JobInfo | None:
    """`scontrol show job --oneliner`'s line: the job's state, reason and exit status."""
    state = _field(text, "JobState")
    if not state:
        return None
    code, signum = _exit(_field(text, "ExitCode"))
    return JobInfo(state, _field(text, "Reason"), code, signum)


def parse_sacct(text: str) -> JobInfo | None:
    """`sacct -n -X -P -o State,ExitCode,Reason`'s line (its state may read `CANCELLED by 0`)."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    parts = line.split("|")
    if len(parts) < 2 or not parts[0].strip():
        return None
    code, signum = _exit(parts[1].strip())
    return JobInfo(parts[0].split()[0], parts[2].strip() if len(parts) > 2 else "", code, signum)


def time_limit_minutes(max_duration: float, grace: float) -> int:
    """Slurm's `--time`: the maximum duration, the runner's grace and the agent's margin, in whole
    minutes rounded up (the agent stops the run first; the limit is the backstop)."""
    return max(1, math.ceil((max_duration + grace + KILL_MARGIN_SECONDS + 60) / 60))


def allowed(setting: str) -> list[str]:
    return [item.strip() for item in setting.split(",") if item.strip()]


def sbatch_arguments(
    payload: StartRunPayload, folder: RunFolder, settings: AgentSettings, script: Path
) -> list[str]:
    """sbatch's argv after the program: each option one item, nothing of the template's as free text
    (partition, account and QoS only when the administrator's list has them). RunRefused otherwise."""
    arguments = [
        "--parsable",
        f"--job-name={job_name(payload.run_id)}",
        f"--chdir={folder.package}",
        f"--output={folder.root / 'runner.log'}",
        "--open-mode=append",
        "--export=ALL",  # sbatch's own environment, which is the run's (SlurmJob.submit)
        "--no-requeue",  # a preempted or failed job ends the run; it never starts again in its folder
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={max(1, payload.processes)}",
        f"--time={time_limit_minutes(payload.max_duration_seconds, settings.stop_grace)}",
    ]
    if payload.gpus:
        arguments.append(f"--gres=gpu:{payload.gpus}")
    for parameter, (option, setting) in OPTIONS.items():
        permitted = allowed(getattr(settings, setting))
        value = payload.parameters.get(parameter)
        if value is None:
            if permitted and option == "--partition":  # the machine's partition: the first allowed
                arguments.append(f"{option}={permitted[0]}")
            continue
        if not isinstance(value, str) or value not in permitted:
            variable = f"TRAINYARD_{setting.upper()}"
            raise RunRefused(
                ReasonCode.MACHINE_REFUSED,
                f"the template's {parameter} {value!r} is not allowed on this machine "
                f"({variable}: {', '.join(permitted) or 'none'})",
            )
        arguments.append(f"{option}={value}")
    return [*arguments, str(script)]


class SlurmCommands:
    """Slurm's client commands, run with an environment of their own (PATH and SLURM_CONF)."""

    def __init__(self, settings: AgentSettings) -> None:
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        if settings.slurm_conf is not None:
            self.env["SLURM_CONF"] = str(settings.slurm_conf)

    @staticmethod
    def program(name: str) -> str:
        found = shutil.which(name)
        if found is None:
            raise LaunchImpossible(
                f"{name} is not installed on the agent's machine (TRAINYARD_AGENT_EXECUTOR=slurm)"
            )
        return found

    async def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        user: int | None = None,
        group: int | None = None,
    ) -> tuple[int, str, str]:
        try:
            child = await asyncio.create_subprocess_exec(
                *argv,
                env=env if env is not None else self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
            )
        except OSError as error:
            raise LaunchImpossible(f"{argv[0]} could not be started: {error.strerror or error}") from error
        try:
            out, err = await asyncio.wait_for(child.communicate(), COMMAND_TIMEOUT_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
            raise SlurmUnavailable(
                f"{Path(argv[0]).name} did not answer within {COMMAND_TIMEOUT_SECONDS:g} s"
            ) from None
        assert child.returncode is not None
        return child.returncode, out.decode(errors="replace").strip(), err.decode(errors="replace").strip()

    async def submit(
        self, arguments: list[str], env: dict[str, str], user: int | None, group: int | None
    ) -> int:
        code, out, err = await self.run([self.program("sbatch"), *arguments], env=env, user=user, group=group)
        first = out.split(";", 1)[0]
        if code == 0 and first.isdigit():
            return int(first)
        if _unreachable(err):
            raise SlurmUnavailable(err)
        raise LaunchImpossible(f"sbatch refused the job: {err or out or f'exit {code}'}")

    async def find(self, name: str) -> int | None:
        """The newest job of this name, in any state slurmctld still knows."""
        code, out, err = await self.run([self.program("squeue"), "-h", "-t", "all", "-n", name, "-o", "%i"])
        if code != 0:
            raise SlurmUnavailable(err or f"squeue: exit {code}")
        ids = [int(item) for item in out.split() if item.isdigit()]
        return max(ids) if ids else None

    async def query(self, job_id: int) -> JobInfo | None:
        """The job's state; None when Slurm no longer knows it (nor its accounting, when there is one)."""
        code, out, err = await self.run([self.program("scontrol"), "show", "job", "--oneliner", str(job_id)])
        if code == 0:
            info = parse_scontrol(out)
            if info is not None:
                return info
        elif "Invalid job id" not in err:
            raise SlurmUnavailable(err or f"scontrol: exit {code}")
        sacct = shutil.which("sacct")
        if sacct is None:
            return None
        code, out, err = await self.run(
            [sacct, "-n", "-X", "-P", "-j", str(job_id), "-o", "State,ExitCode,Reason"]
        )
        return parse_sacct(out) if code == 0 else None

    async def cancel(self, job_id: int, *options: str) -> bool:
        code, _, err = await self.run([self.program("scancel"), *options, str(job_id)])
        if code != 0:
            logger.info("scancel %s %s: %s", " ".join(options), job_id, err)
        return code == 0


def _unreachable(err: str) -> bool:
    return any(
        words in err
        for words in ("Unable to contact", "Socket timed out", "Connection refused", "Zero Bytes")
    )


class SlurmJob(RunProcess):
    """The run's job, in place of a local runner process: submitted or found again by its name,
    signalled through scancel, waited for through scontrol."""

    def __init__(
        self,
        run_id: uuid.UUID,
        folder: RunFolder,
        state: RunState,
        launcher: Launcher,
        owner: tuple[int, int] | None,
        commands: SlurmCommands,
        poll_interval: float,
    ) -> None:
        super().__init__(run_id, folder, state, launcher, owner)
        self.commands, self.poll_interval = commands, poll_interval
        self.info: JobInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def job_id(self) -> int | None:
        return self.state.slurm_job_id

    async def submit(
        self, python: str, runner: Path, env: dict[str, str], parameters: dict[str, Any], arguments: list[str]
    ) -> int:
        """The run's job id: one submitted before the agent died (found by its name), else a new one."""
        found = await self.commands.find(job_name(self.run_id))
        if found is not None:
            logger.info("run %s: adopting its Slurm job %d", self.run_id, found)
            return found
        log = await asyncio.to_thread(
            self._write_run_files, Path(env["TRAINYARD_PARAMETERS_FILE"]), parameters
        )
        log.close()
        await asyncio.to_thread(
            self._write_script, Path(arguments[-1]), [python, str(runner), "--run", str(self.run_id)]
        )
        environment = {name: value for name, value in env.items() if not name.startswith(SLURM_PREFIXES)}
        if "SLURM_CONF" in self.commands.env:  # sbatch's own setting, which the job inherits too
            environment["SLURM_CONF"] = self.commands.env["SLURM_CONF"]
        uid, gid = self.launcher.spawn_user()
        return await self.commands.submit(arguments, environment, uid, gid)

    def _write_script(self, path: Path, argv: list[str]) -> None:
        """The batch script: the runner, exec'd, so the job's processes are the runner's."""
        lines = [
            "#!/bin/sh",
            f"# Trainyard run {self.run_id} (agent/slurm.py)",
            "exec " + shlex.join(argv),
            "",
        ]
        path.write_text("\n".join(lines), encoding="utf-8")
        os.chmod(path, 0o755)
        if self.owner is not None:
            os.chown(path, *self.owner)

    # -- observe ---------------------------------------------------------------------------------

    async def poll(self) -> JobInfo | None:
        """The job's state now, waiting out a Slurm that does not answer; None once Slurm forgot it."""
        job_id = self.job_id
        if job_id is None:
            return None
        while True:
            try:
                self.info = await self.commands.query(job_id)
                return self.info
            except SlurmUnavailable as error:
                logger.warning(
                    "run %s: Slurm did not answer about job %d (%s); again", self.run_id, job_id, error
                )
                await asyncio.sleep(self.poll_interval)

    async def _exit_status(self) -> tuple[int | None, int | None]:
        while True:
            info = await self.poll()
            if info is None:  # forgotten by Slurm (no accounting): the outcome file says what happened
                return None, None
            if info.ended:
                self.state.slurm_end = info.state
                return info.exit_code, info.signal
            await asyncio.sleep(self.poll_interval)

    # -- signals ---------------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.job_id is not None and (self.info is None or not self.info.ended)

    def signal(self, signum: int) -> None:
        if self.state.phase != "launched" or self.job_id is None or not self.alive():
            return
        self._spawn(self._signal(self.job_id, signum))

    def kill_everything(self) -> None:
        if self.job_id is None or not self.alive():
            return
        logger.warning("run %s: job %d still there after the grace; cancelling it", self.run_id, self.job_id)
        self._spawn(self._cancel(self.job_id))

    async def _signal(self, job_id: int, signum: int) -> None:
        name = signal.Signals(signum).name.removeprefix("SIG")
        if self.info is not None and self.info.waiting:
            await self.commands.cancel(job_id)  # nothing of it runs yet: it never will
            return
        logger.info("run %s: SIG%s to its Slurm job %d", self.run_id, name, job_id)
        if not await self.commands.cancel(job_id, f"--signal={name}", "--full"):
            info = await self.poll()
            if info is not None and info.waiting:
                await self.commands.cancel(job_id)

    async def _cancel(self, job_id: int) -> None:
        await self.commands.cancel(job_id, "--signal=KILL", "--full")
        await self.commands.cancel(job_id)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class SlurmExecution(Execution):
    """One run as a Slurm job: `Execution`'s phases, with the launch, the wait and the signals Slurm's."""

    def __init__(self, machine: Machine, state: RunState, payload: StartRunPayload | None = None) -> None:
        super().__init__(machine, state, payload)
        settings = machine.settings
        self.job = SlurmJob(
            self.run_id,
            self.folder,
            state,
            machine.launcher,
            self.process.owner,
            SlurmCommands(settings),
            settings.slurm_poll_interval,
        )
        self.process = self.job

    def _reserve_gpus(self) -> None:
        """Slurm gives the job its GPUs (`--gres`): none of the agent's own machine are taken."""

    async def _launch(self, python: str) -> None:
        settings, payload = self.machine.settings, self.payload
        refused = sorted(name for name in payload.parameters if name.startswith(SLURM_PREFIXES))
        if refused:
            raise RunRefused(
                ReasonCode.MACHINE_REFUSED,
                f"parameters named like Slurm's own variables cannot reach a Slurm job: {', '.join(refused)}",
            )
        arguments = sbatch_arguments(payload, self.folder, settings, self.folder.root / "job.sh")
        env = run_environment(payload, self.folder, [], python, settings.stop_grace)
        env[CHECKPOINT_ENV] = str(checkpoint_folder(self.folder))
        if payload.gpus:
            env.pop("CUDA_VISIBLE_DEVICES", None)  # Slurm sets it to the GPUs it gives the job
        try:
            job_id = await self.job.submit(python, self.machine.runner, env, payload.parameters, arguments)
        except LaunchImpossible as error:
            raise RunRefused(ReasonCode.MACHINE_REFUSED, str(error)) from error
        self.state.slurm_job_id = job_id
        self.state.phase = "launched"
        self._save()
        logger.info("run %s: submitted as Slurm job %d", self.run_id, job_id)
        if self.stop_requested.is_set():  # asked while submitting
            self.job.signal(signal.SIGTERM)
        await self._until_running()

    async def _supervise(self) -> None:
        if not self.state.launch_reported:  # re-adopted while queued
            await self._until_running()
        await super()._supervise()

    async def _until_running(self) -> None:
        """While Slurm holds the job pending: the stage `queued: <Slurm's reason>` (Resources,
        Priority...). Back once it runs, or ended without running; the maximum duration starts then."""
        queued = None
        stopper = asyncio.ensure_future(self.stop_requested.wait())
        try:
            while True:
                info = await self.job.poll()
                if info is None or not info.waiting:
                    break
                known = info.reason not in ("", "None")  # None: the scheduler has not looked at it yet
                stage = f"queued: {info.reason}"[:128] if known else "queued"
                if stage != queued:
                    await self._report(StageEvent(type="stage", stage=stage))
                    queued = stage
                await asyncio.wait({stopper}, timeout=self.job.poll_interval)
        finally:
            stopper.cancel()
        if self.state.launched_at is None:
            self.state.launched_at = time.time()
            self._save()
        if queued is not None:
            await self._report(StageEvent(type="stage", stage="running"))

    def exited_event(self) -> tuple[ExitedEvent, bool]:
        """As a local run's, except that a job Slurm ended by itself says so in its reason."""
        event, upload = super().exited_event()
        end = SLURM_ENDS.get(self.state.slurm_end or "")
        if end is None or upload or self.stop_requested.is_set():
            return event, upload
        reason, words = end
        detail = f"Slurm ended job {self.state.slurm_job_id} {self.state.slurm_end}: {words}"
        tail = f"{detail}\n{event.error_tail}".strip()[-ERROR_TAIL_MAX_CHARS:]
        return event.model_copy(update={"reason_code": reason, "error_tail": tail}), False
