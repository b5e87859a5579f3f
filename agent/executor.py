"""One training run on this machine, from its start command to `finished`: `Execution` sequences the
run's parts through the phases `agent/run_state.py` persists (`preparing`, `launched`, `exited`,
`done`), so an agent killed at any moment resumes where it was:

- preparing: the working folder (`agent/workdir.py`) and the interpreter (`agent/environments.py`);
- launched: the runner and the wait for its end under the maximum duration (`agent/run_process.py`);
- exited: the `exited` fact from the outcome, then, after a success, the outputs
  (`agent/run_outputs.py`) and `finished`.

The agent reports facts; the API decides. A stop asked before launch is reported as an exit without
a code (the API ends the run `stopped`); a stop after launch is SIGTERM to the runner, which forwards
it to every process of the run and SIGKILLs what is left after the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from agent.checkpoints import CHECKPOINT_ENV, checkpoint_folder, restore_checkpoint, upload_checkpoint
from agent.client import ApiError, ApiRejected
from agent.environments import EnvironmentBuildFailed, python_for
from agent.machine import Machine
from agent.run_outputs import upload_artifacts, upload_outputs
from agent.run_process import (
    LaunchImpossible,
    RunProcess,
    process_start_time,
    run_environment,
    write_stop_reason,
)
from agent.run_state import RunState
from agent.workdir import RunFolder, disk_full, prepare_run, run_folder
from shared.enums import PipelineType, ReasonCode
from shared.protocol import (
    ERROR_TAIL_MAX_CHARS,
    ExitedEvent,
    FinishedEvent,
    LaunchedEvent,
    RunEventReply,
    StageEvent,
    StartRunPayload,
)

logger = logging.getLogger(__name__)


class RunRefused(Exception):
    """The run cannot be carried out here (not enough GPUs, a bad package...): ends it with a reason."""

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def execution_for(machine: Machine, state: RunState, payload: StartRunPayload | None = None) -> Execution:
    """The run's execution: a Slurm job (`TRAINYARD_AGENT_EXECUTOR=slurm`, or a run submitted as one
    before a change of the setting), else processes of this machine."""
    if machine.settings.agent_executor == "slurm" or state.slurm_job_id is not None:
        from agent.slurm import SlurmExecution  # imports this module

        return SlurmExecution(machine, state, payload)
    return Execution(machine, state, payload)


class Execution:
    """One run in hand. `drive()` carries it from its current phase to `done`; `stop()` may come at
    any time, from any task, any number of times."""

    def __init__(self, machine: Machine, state: RunState, payload: StartRunPayload | None = None) -> None:
        """`payload` is the start command's, validated once by the daemon; a run re-read from its
        state file after a restart has none and is validated from the file."""
        self.machine = machine
        self.state = state
        self.payload = payload if payload is not None else StartRunPayload.model_validate(state.payload)
        self.folder = run_folder(machine.settings, self.payload)
        user = machine.run_user
        self.process = RunProcess(
            self.run_id, self.folder, state, machine.launcher, (user.uid, user.gid) if user else None
        )
        self.stop_requested = asyncio.Event()
        if state.stop_reason is not None:
            self.stop_requested.set()

    @property
    def run_id(self) -> uuid.UUID:
        return self.payload.run_id

    def stop(self, reason: ReasonCode = ReasonCode.USER_STOP) -> None:
        """SIGTERM to the run (its runner forwards it and enforces the grace); before launch, the run
        is not launched at all."""
        first = not self.stop_requested.is_set()
        self.stop_requested.set()
        if first:
            self.state.stop_reason = reason.value
            self._save()
            if reason is ReasonCode.MAX_DURATION and self.folder.root.is_dir():
                # Before the SIGTERM: the runner reads it to finish and save instead of ending now.
                write_stop_reason(self.folder, reason.value, self.process.owner)
        self.process.signal(signal.SIGTERM)

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

    # -- preparing -> launched ---------------------------------------------------------------------

    async def _prepare_and_launch(self) -> None:
        self._reserve_gpus()
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

    def _reserve_gpus(self) -> None:
        """This machine's GPUs for the run, from the pool (RunRefused when too few are free)."""
        payload = self.payload
        if payload.gpus:
            taken = self.machine.gpus.take(self.run_id, payload.gpus)
            if taken is None:
                raise RunRefused(
                    ReasonCode.MACHINE_REFUSED,
                    f"the run asks for {payload.gpus} GPU(s) and this machine has not that many free",
                )
            self.state.gpus = taken
            self._save()

    async def _prepare(self) -> str:
        machine = self.machine
        folder = await prepare_run(machine.client, machine.settings, self.payload, cache=machine.cache)
        if machine.run_user is not None:
            await asyncio.to_thread(self._hand_over, folder)
        await restore_checkpoint(machine.client, self.payload, folder, self.process.owner)
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

    async def _launch(self, python: str) -> None:
        settings = self.machine.settings
        env = run_environment(self.payload, self.folder, self.state.gpus, python, settings.stop_grace)
        env[CHECKPOINT_ENV] = str(checkpoint_folder(self.folder))
        try:
            pid = await self.process.launch(python, self.machine.runner, env, self.payload.parameters)
        except LaunchImpossible as error:
            raise RunRefused(ReasonCode.MACHINE_REFUSED, str(error)) from error
        self.state.pid, self.state.pid_start = pid, process_start_time(pid)
        self.state.launched_at = time.time()
        self.state.phase = "launched"
        self._save()
        logger.info("run %s: launched (runner pid %d)", self.run_id, pid)
        if self.stop_requested.is_set():  # asked while launching
            self.process.signal(signal.SIGTERM)

    # -- launched -> exited ------------------------------------------------------------------------

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
            code, signum = await self.process.wait(
                max_duration=self.payload.max_duration_seconds,
                grace=machine.settings.stop_grace,
                stop_requested=self.stop_requested,
                on_max_duration=lambda: self.stop(ReasonCode.MAX_DURATION),
            )
            self.state.exit_code, self.state.exit_signal = code, signum
            self.state.outcome = self.process.read_outcome()
            if telemetry is not None:
                await telemetry.flush()
        finally:
            if shipper is not None:
                shipper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await shipper
        self.state.phase = "exited"
        self._save()

    # -- exited -> done ----------------------------------------------------------------------------

    def cut_short_and_saved(self) -> bool:
        """Whether the run was stopped at its maximum duration and its package saved what it had
        trained (the runner's outcome says `cut_short`): its outputs are kept as for a success."""
        outcome = self.state.outcome or {}
        return (
            self.state.stop_reason == ReasonCode.MAX_DURATION.value
            and outcome.get("cut_short") == ReasonCode.MAX_DURATION.value
            and self.payload.pipeline_type is not PipelineType.EVALUATION
        )

    def exited_event(self) -> tuple[ExitedEvent, bool]:
        """The `exited` fact, and whether its outputs are to be uploaded: the run succeeded, or was
        cut short by its maximum duration and saved."""
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
            detail = self.process.stderr_tail() or "the run ended without an outcome or any output on stderr"
        if not succeeded and (full := disk_full(self.folder.root)) is not None:
            detail = f"{detail}\n{full}"
        kept = succeeded and self.cut_short_and_saved()
        event = ExitedEvent(
            type="exited",
            exit_code=code,
            signal=state.exit_signal,
            error_tail=detail[-ERROR_TAIL_MAX_CHARS:],
            reason_code=reason,
            saved=kept,
        )
        return event, succeeded and (kept or not self.stop_requested.is_set())

    async def _conclude(self) -> None:
        event, upload = self.exited_event()
        if upload:
            refused = await upload_outputs(
                self.machine.client, self.run_id, self.payload, self.folder, self.state.outcome or {}
            )
            if refused is not None:
                event = ExitedEvent(
                    type="exited",
                    exit_code=None,
                    reason_code=ReasonCode.MISSING_OUTPUTS,
                    error_tail=refused[-ERROR_TAIL_MAX_CHARS:],
                )
                upload = False
        else:
            await self._keep_artifacts()
        if not upload or self.stop_requested.is_set():  # what a restart resumes from (agent/checkpoints.py)
            await upload_checkpoint(self.machine.client, self.run_id, self.folder)
        await self._report(event)
        if upload:
            await self._report(FinishedEvent(type="finished"))
        self._done()

    async def _keep_artifacts(self) -> None:
        """A failed or stopped run's artifacts, uploaded before its `exited` so that people debug it
        from them; a refusal or an unreadable file loses only that, never the run's end."""
        refused = await upload_artifacts(self.machine.client, self.run_id, self.folder)
        if refused is not None:
            logger.warning("run %s: its artifacts were not all kept: %s", self.run_id, refused)

    async def _end_unlaunched(self, reason: ReasonCode | None, detail: str) -> None:
        """The run never launched: report an exit without a code (the API decides stopped or failed)."""
        await self._report(ExitedEvent(type="exited", exit_code=None, reason_code=reason, error_tail=detail))
        self._done()

    def _done(self) -> None:
        self.state.phase = "done"
        self._save()
        split = self.folder.root / "split"  # a full pipeline's (agent/run_process.py's split_environment)
        for part in (
            self.folder.package,
            self.folder.data,
            self.folder.test_data,
            self.folder.artifacts,
            split,
            checkpoint_folder(self.folder),
        ):
            if part is not None:
                shutil.rmtree(part, ignore_errors=True)
        logger.info("run %s: done", self.run_id)

    def _save(self) -> None:
        self.machine.states.save(self.state)
