"""The agent daemon: say hello, long-poll for commands, carry them out, re-adopt runs after a restart.

    trainyard-agent run     this loop, until SIGTERM/SIGINT (detach: runs go on, the next start
                            re-adopts them) or a drain (SIGUSR1: finish the runs in hand, take no
                            new one, exit)

One daemon per work dir, held by an exclusive lock on `agent.pid`, which also tells
`trainyard-agent drain` whom to signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import uuid
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from agent import __version__
from agent.client import ApiRejected
from agent.environments import prune, requirements_hash
from agent.executor import Execution, execution_for
from agent.machine import Machine, install_runtime, prepare_launches
from agent.run_state import RunState
from agent.services import ServiceManager
from shared.enums import CommandKind, CommandState, ReasonCode
from shared.protocol import Command, ExitedEvent, GpuInfo, Hello, StartRunPayload, StopRunPayload

logger = logging.getLogger(__name__)

PID_FILE = "agent.pid"
DRAIN_SIGNAL = signal.SIGUSR1
# While draining, pending start commands are left for the next agent; poll again after this long.
DRAIN_POLL_SECONDS = 1.0
# A run whose carrying failed unexpectedly is carried on from its saved phase after this long, doubling.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
# Package environments and cached input files no run used for this long are removed, hourly.
ENVIRONMENT_MAX_IDLE_SECONDS = 7 * 24 * 3600.0
HOUSEKEEPING_SECONDS = 3600.0


class AlreadyRunning(Exception):
    """Another agent holds this work dir."""


class PidFile:
    """`agent.pid` in the work dir, locked for the daemon's life."""

    def __init__(self, work_dir: Path) -> None:
        self.path = Path(work_dir) / PID_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the lock)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "?"
            file.close()
            raise AlreadyRunning(f"another agent (pid {holder}) runs in {self.path.parent}") from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._file.close()
            self._file = None


def read_pid(work_dir: Path) -> int | None:
    try:
        text = (Path(work_dir) / PID_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class Agent:
    """The daemon, built from its parts (`agent/cli.py` makes them): `machine` holds the API client,
    the state store, the input cache, the GPU pool and how runs are launched; `gpus` is what `hello`
    reports. `run()` is the daemon's life; `start()` then `run_once()` is one turn of it, for tests."""

    def __init__(self, machine: Machine, gpus: list[GpuInfo]) -> None:
        self.machine = machine
        self.settings = machine.settings
        self.client = machine.client
        self.states = machine.states
        self.gpus = gpus
        self.runs: dict[uuid.UUID, Execution] = {}
        self.tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.draining = asyncio.Event()
        self.detaching = asyncio.Event()
        self.drained = asyncio.Event()  # draining, and the last run in hand is done
        # Services never end by themselves: a drain does not wait for them; they outlive the agent.
        self.services = ServiceManager(machine)

    # -- life ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until SIGTERM/SIGINT (detach) or the end of a drain, holding the work dir's lock."""
        pid_file = PidFile(Path(self.settings.agent_work_dir))
        await asyncio.to_thread(pid_file.acquire)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.detach)
        loop.add_signal_handler(DRAIN_SIGNAL, self.drain)
        loop.add_signal_handler(signal.SIGUSR2, _log_tasks)
        try:
            await self.start()
            housekeeping = asyncio.create_task(self._housekeeping(), name="housekeeping")
            try:
                await self._serve()
            finally:
                housekeeping.cancel()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, DRAIN_SIGNAL, signal.SIGUSR2):
                loop.remove_signal_handler(signum)
            await self.close()
            pid_file.release()

    async def start(self) -> None:
        """Start-up: the run-side files installed in the work dir, how runs are launched (checked by a
        probe: `LaunchRefused` when no run could ever start), the runs of a previous life re-adopted,
        and `hello`."""
        self.states.ensure()
        self.machine.runner = await asyncio.to_thread(install_runtime, Path(self.settings.agent_work_dir))
        await prepare_launches(self.machine)
        for state in self.states.unfinished():
            logger.info("run %s: re-adopting it (%s)", state.run_id, state.phase)
            self._take(state)
        self.services.adopt()
        await self.hello()

    async def run_once(self, wait: float = 0.0) -> list[Command]:
        """One turn: one poll (held by the API up to `wait` seconds) and each command it brought
        handled. A run it starts goes on in its own task, in `tasks` until it is done."""
        commands = await self.client.poll(wait)
        await self._handle_all(commands)
        return commands

    async def close(self) -> None:
        """Let go of the runs and services in hand (they go on; the next start re-adopts them)."""
        for task in self.tasks.values():
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.services.close()

    def detach(self) -> None:
        """SIGTERM: leave; runs go on, and the next start re-adopts them."""
        logger.info("detaching: runs in hand go on (%d)", len(self.tasks))
        self.detaching.set()

    def drain(self) -> None:
        """SIGUSR1: finish the runs in hand, take no new one, then exit."""
        logger.info("draining: %d run(s) in hand, no new run will be taken", len(self.tasks))
        self.draining.set()
        if not self.tasks:
            self.drained.set()

    async def hello(self) -> None:
        reply = await self.client.hello(
            Hello(
                agent_version=__version__,
                hostname=socket.gethostname()[:256],
                gpus=self.gpus,
                runs=list(self.runs),
                services=self.services.ids(),
            )
        )
        logger.info("hello: machine %s, %d run(s) in hand", reply.machine, len(self.runs))
        for run_id in reply.stop_runs:
            execution = self.runs.get(run_id)
            if execution is not None:
                logger.info("run %s: the API ended it while the agent was away; stopping it", run_id)
                execution.stop(ReasonCode.USER_STOP)
        self.services.stop_unwanted(reply.stop_services)

    async def _serve(self) -> None:
        detached = asyncio.ensure_future(self.detaching.wait())
        drained = asyncio.ensure_future(self.drained.wait())
        try:
            while not self.detaching.is_set():
                if self.draining.is_set() and not self.tasks:
                    logger.info("drained: no run in hand; exiting")
                    return
                poll = asyncio.ensure_future(self.client.poll(self.settings.poll_wait))
                await asyncio.wait({poll, detached, drained}, return_when=asyncio.FIRST_COMPLETED)
                if not poll.done():
                    poll.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await poll
                    if self.detaching.is_set():
                        return
                    continue  # drained: the loop's head says goodbye
                commands = poll.result()
                left = await self._handle_all(commands)
                if left and left == len(commands):  # only starts left for the next agent: no busy loop
                    await asyncio.wait({detached}, timeout=DRAIN_POLL_SECONDS)
        finally:
            detached.cancel()
            drained.cancel()

    async def _housekeeping(self) -> None:
        work_dir = Path(self.settings.agent_work_dir)
        while True:
            keep = {
                key
                for execution in self.runs.values()
                if (key := requirements_hash(execution.folder.package)) is not None
            } | self.services.environment_keys()
            try:
                removed = await asyncio.to_thread(
                    prune, work_dir, keep, older_than=ENVIRONMENT_MAX_IDLE_SECONDS
                )
            except OSError as error:
                logger.warning("pruning package environments failed: %s", error)
            else:
                if removed:
                    logger.info("removed %d unused package environment(s)", len(removed))
            try:
                files, freed = await self.machine.cache.prune(ENVIRONMENT_MAX_IDLE_SECONDS)
            except OSError as error:
                logger.warning("pruning the input cache failed: %s", error)
            else:
                if files:
                    logger.info("removed %d unused cached input file(s), %d bytes", files, freed)
            await asyncio.sleep(HOUSEKEEPING_SECONDS)

    # -- commands --------------------------------------------------------------------------------

    async def _handle_all(self, commands: list[Command]) -> int:
        """Each command in turn; how many were left for the next agent."""
        left = 0
        for command in commands:
            if not await self._handle_safely(command):
                left += 1
        return left

    async def _handle_safely(self, command: Command) -> bool:
        """`handle`, but a command the agent cannot read is acknowledged and logged, never fatal."""
        try:
            return await self.handle(command)
        except ValidationError as error:
            logger.error("command %s (%s) is malformed, ignored: %s", command.id, command.kind, error)
            await self._ack(command)
            return True

    async def handle(self, command: Command) -> bool:
        """Carry out one command (a repeat is a no-op); False when it was left for the next agent."""
        if command.kind is CommandKind.STOP_RUN:
            payload = StopRunPayload.model_validate(command.payload.get("stop", command.payload))
            await self._stop(payload)  # first, then the ack: stop latency is what a person waits on
            await self._ack(command)
            return True
        if command.kind is CommandKind.START_RUN:
            if self.draining.is_set() and command.run_id not in self.runs:
                return False
            start = StartRunPayload.model_validate(command.payload.get("start", command.payload))
            if await self._ack(command) is CommandState.CANCELLED:
                logger.info("run %s: its start was withdrawn", start.run_id)
                return True
            if start.run_id in self.runs or self.states.load(start.run_id) is not None:
                return True  # delivered again: already in hand (or already done)
            state = RunState(payload=start.model_dump(mode="json"))
            self.states.save(state)
            self._take(state, start)
            return True
        if command.kind in (CommandKind.START_SERVICE, CommandKind.STOP_SERVICE):
            return await self.services.handle(command, self._ack, draining=self.draining.is_set())
        logger.error("command %s: unknown kind %r, acknowledged and ignored", command.id, command.kind)
        await self._ack(command)
        return True

    async def _ack(self, command: Command) -> CommandState | None:
        try:
            return (await self.client.ack(command.id)).state
        except ApiRejected as error:
            logger.error("command %s: acknowledgement refused: %s", command.id, error)
            return None

    async def _stop(self, payload: StopRunPayload) -> None:
        execution = self.runs.get(payload.run_id)
        if execution is not None:
            execution.stop(payload.reason_code)
            return
        state = self.states.load(payload.run_id)
        if state is not None and state.phase == "done":
            return
        # Not in hand (its start never reached this agent): say so, so the API can end it.
        with contextlib.suppress(ApiRejected):
            await self.client.report(
                payload.run_id,
                ExitedEvent(type="exited", exit_code=None, error_tail="the agent never had this run"),
            )

    # -- runs ------------------------------------------------------------------------------------

    def _take(self, state: RunState, payload: StartRunPayload | None = None) -> None:
        execution = execution_for(self.machine, state, payload)
        if state.gpus:
            self.machine.gpus.restore(execution.run_id, state.gpus)
        self.runs[execution.run_id] = execution
        self.tasks[execution.run_id] = asyncio.create_task(self._drive(execution), name=f"run {state.run_id}")

    async def _drive(self, execution: Execution) -> None:
        delay = RETRY_FIRST_SECONDS
        try:
            while True:
                try:
                    await execution.drive()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Its state is on disk: carrying it on from there is always safe.
                    logger.exception("run %s: carrying it failed; again in %.0f s", execution.run_id, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
        finally:
            self.tasks.pop(execution.run_id, None)
            self.runs.pop(execution.run_id, None)
            if self.draining.is_set() and not self.tasks:
                self.drained.set()


def _log_tasks() -> None:
    """SIGUSR2: where every task of the daemon waits, for an operator wondering what it is doing."""
    for task in asyncio.all_tasks():
        frames = []
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None:
                frames.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        logger.warning("task %s waits in:\n%s", task.get_name(), "\n".join(frames))
