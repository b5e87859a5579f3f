"""Services on this machine (docs/serving.md, "On the machine"): a package version published here,
answering `predict` over HTTP in `instances` processes, from a `start_service` command to its stop.

`Service` supervises one service: it unpacks the package (`services/<id>/package`, fetched with
GET agent/services/{id}/package and checked against its sha256), gets its interpreter as a training
run does (`agent/environments.py`), and keeps each instance going (`_keep`): a free port of
`TRAINYARD_AGENT_SERVE_PORTS`, the launch (agent/service_process.py), `/health` until it answers, the
`serving` fact with its address, then the wait for its end. An instance that dies is reported
`exited` with its stderr's tail and launched again after 1 s, 2 s, 4 s... (at most
`RESTART_MAX_SECONDS`), until it has died `RESTART_BUDGET` times within `RESTART_WINDOW_SECONDS`: then
`exited` with restarting=false and the agent gives up on it. A stop (a `stop_service` command, the
API's `stop` in an answer, hello's `stop_services`, or the maximum run time) stops every instance
(SIGTERM, the grace, SIGKILL) and reports `stopped` with its reason for each.

Everything is in `state/services/<id>.json` before the agent acts on it, so a restarted agent
re-adopts the instances still running (pid and start time), reports the dead ones, and `hello` lists
them. Reports retry until the API answers (the client's policy), so an API restart loses no fact.
The agent reports facts; the API decides the service's status.
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
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from agent.client import ApiError, ApiRejected
from agent.environments import EnvironmentBuildFailed, python_for, requirements_hash
from agent.machine import Machine, RunUser
from agent.runtime.server import EXIT_PORT_TAKEN
from agent.service_process import ServingProcess, local_host, pick_port, serving_environment, url_host
from agent.service_state import (
    PACKAGE_MARKER,
    ServiceFolder,
    ServiceState,
    ServiceStore,
    read_tail,
    service_folder,
)
from shared.archive import extract_zip
from shared.enums import CommandKind, CommandState, ReasonCode, ServiceEventType
from shared.protocol import (
    ERROR_TAIL_MAX_CHARS,
    Command,
    ServiceEvent,
    StartServicePayload,
    StopServicePayload,
)

logger = logging.getLogger(__name__)

RESTART_FIRST_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0
RESTART_BUDGET = 5  # deaths of one instance within the window: the agent gives up on it
RESTART_WINDOW_SECONDS = 600.0
HEALTH_POLL_SECONDS = (0.05, 1.0)  # first and largest pause between two looks at /health
LOAD_TIMEOUT_SECONDS = 900.0  # an instance not healthy by then is killed and counts as a death
LIVENESS_FAILURES = 3  # /health checks failed in a row: a serving instance is killed and restarted
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 1.0, 60.0  # a supervisor that failed unexpectedly


class ServiceRefused(Exception):
    """The service cannot be served here (its package, its environment, too few GPUs)."""

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class Service:
    """One service in hand. `drive()` keeps its instances until a stop or until every instance was
    given up; `stop()` may come at any time, from any task, any number of times."""

    def __init__(
        self, machine: Machine, store: ServiceStore, state: ServiceState, ports: Callable[[], set[int]]
    ) -> None:
        self.machine, self.store, self.state, self.ports = machine, store, state, ports
        self.payload = StartServicePayload.model_validate(state.payload)
        self.folder: ServiceFolder = service_folder(Path(machine.settings.agent_work_dir), self.service_id)
        self.stop_requested = asyncio.Event()
        if state.stop_reason is not None:
            self.stop_requested.set()
        self.forgotten = False  # the API does not know it (deleted): nothing more is reported
        self.processes = {
            index: ServingProcess(
                self.service_id, index, self.folder, state.instance(index), machine.launcher
            )
            for index in range(self.payload.instances)
        }
        self._python: str | None = None
        self.unresponsive: set[int] = set()  # instances killed for not answering /health
        self._preparing = asyncio.Lock()

    @property
    def service_id(self) -> uuid.UUID:
        return self.payload.service_id

    def stop(self, reason: ReasonCode = ReasonCode.USER_STOP) -> None:
        if not self.stop_requested.is_set():
            logger.info("service %s: stopping (%s)", self.service_id, reason.value)
            self.state.stop_reason = reason.value
            self._save()
            self.stop_requested.set()

    def environment_key(self) -> str | None:
        return requirements_hash(self.folder.package) if self.payload.package_has_requirements else None

    # -- the life ----------------------------------------------------------------------------------

    async def drive(self) -> None:
        deadline = asyncio.create_task(self._deadline(), name=f"service {self.service_id} deadline")
        try:
            keepers = [
                asyncio.create_task(self._keep(index), name=f"service {self.service_id} instance {index}")
                for index in self.processes
            ]
            try:
                await asyncio.gather(*keepers)
            finally:
                for keeper in keepers:
                    keeper.cancel()
            await self._stop_instances()
        finally:
            deadline.cancel()
        self._end()

    async def _deadline(self) -> None:
        left = self.state.started_at + self.payload.max_run_seconds - time.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_requested.wait(), timeout=max(left, 0.0))
            return
        logger.info("service %s: its maximum run time passed", self.service_id)
        self.stop(ReasonCode.MAX_DURATION)

    async def _keep(self, index: int) -> None:
        """One instance, from launched (or adopted) to a stop, or to its restart budget spent."""
        process, state = self.processes[index], self.state.instance(index)
        if process.adopt_lost():
            self._save()
        while not self.stop_requested.is_set() and not state.given_up:
            if state.pid is None:
                launched = await self._launch(index)
                if not launched:
                    continue  # the port was taken meanwhile, or a stop came: look again
            healthy = await self._until_healthy(index)
            if self.stop_requested.is_set():
                return
            if healthy:
                state.served = True
                self._save()
                address = f"http://{url_host(self.machine.settings.serve_advertise)}:{state.port}"
                logger.info("service %s instance %d: serving at %s", self.service_id, index, address)
                await self._report(
                    ServiceEvent(
                        type=ServiceEventType.SERVING, instance=index, address=address, pid=state.pid
                    )
                )
            code, signum = await self._until_ended(process, watch=healthy)
            if self.stop_requested.is_set():
                return
            if code == EXIT_PORT_TAKEN and not healthy:
                logger.info(
                    "service %s instance %d: port %s taken; another", self.service_id, index, state.port
                )
                state.pid = state.pid_start = state.port = None
                self._save()
                continue
            await self._died(index, code, signum)

    async def _launch(self, index: int) -> bool:
        """Launch instance `index` on a free port; False when it was not (a stop came first)."""
        process, state = self.processes[index], self.state.instance(index)
        try:
            python = await self._until_stopped(self._prepared())
        except ServiceRefused as refused:
            await self._give_up(list(self.processes), refused.reason, refused.detail)
            return False
        if python is None:
            return False
        settings = self.machine.settings
        port = pick_port(settings.agent_serve_host, settings.serve_ports, self.ports())
        if port is None:
            free = f"no free port in TRAINYARD_AGENT_SERVE_PORTS={settings.agent_serve_ports} on this machine"
            await self._give_up([index], ReasonCode.MACHINE_REFUSED, free)
            return False
        state.port = port
        env = serving_environment(
            python, self.folder, self.state.gpus, settings.agent_serve_host, port, self.payload.secret
        )
        server = self.machine.runner.with_name("server.py")
        pid = await process.launch(python, server, env)
        self._save()
        logger.info("service %s instance %d: launched (pid %d, port %d)", self.service_id, index, pid, port)
        await self._report(ServiceEvent(type=ServiceEventType.STARTING, instance=index, pid=pid))
        return True

    async def _until_healthy(self, index: int) -> bool:
        """Until /health answers 200 (True), or the process ends, or a stop comes. A new process has
        `LOAD_TIMEOUT_SECONDS` to load its model; one that answered before (re-adopted after an agent
        restart) only `LIVENESS_FAILURES` checks: either is killed when it runs out."""
        process, state = self.processes[index], self.state.instance(index)
        host = local_host(self.machine.settings.agent_serve_host)
        pause, deadline = HEALTH_POLL_SECONDS[0], time.monotonic() + LOAD_TIMEOUT_SECONDS
        failures = 0
        while process.alive() and not self.stop_requested.is_set():
            if await process.healthy(host):
                return True
            failures += 1
            if state.served and failures >= LIVENESS_FAILURES:
                self._kill_unresponsive(process)
                return False
            if time.monotonic() > deadline:
                logger.warning("service %s instance %d: not healthy in time; killed", self.service_id, index)
                await process.stop(self.machine.settings.stop_grace)
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), timeout=pause)
            pause = min(pause * 2, HEALTH_POLL_SECONDS[1])
        return False

    def _kill_unresponsive(self, process: ServingProcess) -> None:
        logger.warning(
            "service %s instance %d: no answer to /health %d times; killed",
            self.service_id,
            process.index,
            LIVENESS_FAILURES,
        )
        self.unresponsive.add(process.index)
        process.signal(signal.SIGKILL)

    async def _until_ended(self, process: ServingProcess, *, watch: bool) -> tuple[int | None, int | None]:
        """Until the process ends (its exit code, signal) or a stop comes (None, None). With `watch`,
        its /health is asked every `TRAINYARD_AGENT_SERVE_LIVENESS_SECONDS`: after `LIVENESS_FAILURES`
        failures in a row (alive but answering nothing: hung, or stopped) it is killed, and its death
        goes the usual way, restarted with backoff."""
        ended = asyncio.ensure_future(process.wait())
        stopper = asyncio.ensure_future(self.stop_requested.wait())
        every = self.machine.settings.agent_serve_liveness_seconds
        host = local_host(self.machine.settings.agent_serve_host)
        failures = 0
        try:
            while not ended.done() and not stopper.done():
                await asyncio.wait(
                    {ended, stopper},
                    timeout=every if watch else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if ended.done() or stopper.done() or failures >= LIVENESS_FAILURES:
                    continue
                await asyncio.to_thread(process.bound_logs)
                failures = 0 if await process.healthy(host) else failures + 1
                if failures >= LIVENESS_FAILURES:
                    self._kill_unresponsive(process)
        finally:
            stopper.cancel()
        if not ended.done():
            ended.cancel()
            return None, None
        return ended.result()

    async def _died(self, index: int, code: int | None, signum: int | None) -> None:
        """Report the death of instance `index`; back off before its next launch, or give up on it."""
        state = self.state.instance(index)
        now = time.time()
        state.failures = [t for t in state.failures if now - t < RESTART_WINDOW_SECONDS] + [now]
        restarting = len(state.failures) < RESTART_BUDGET
        tail = read_tail(self.folder.stderr(index), state.stderr_offset, ERROR_TAIL_MAX_CHARS)
        if index in self.unresponsive:
            self.unresponsive.discard(index)
            killed = (
                f"it stopped answering /health ({LIVENESS_FAILURES} checks in a row): the agent killed it"
            )
            tail = f"{tail}\n{killed}"[-ERROR_TAIL_MAX_CHARS:].strip()
        pid = state.pid
        state.pid = state.pid_start = state.port = None
        state.given_up = not restarting
        self._save()
        how = f"exit code {code}" if code is not None else f"signal {signum}" if signum else "ended"
        logger.warning(
            "service %s instance %d: %s (%d death(s) lately); %s",
            self.service_id,
            index,
            how,
            len(state.failures),
            "restarting" if restarting else "giving up",
        )
        await self._report(
            ServiceEvent(
                type=ServiceEventType.EXITED,
                instance=index,
                pid=pid,
                exit_code=code,
                signal=signum,
                error_tail=tail or f"the serving process ended ({how}) and wrote nothing on stderr",
                restarting=restarting,
                reason_code=None if restarting else ReasonCode.EXIT_NONZERO,
            )
        )
        if restarting:
            delay = min(RESTART_FIRST_SECONDS * 2 ** (len(state.failures) - 1), RESTART_MAX_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), timeout=delay)

    async def _give_up(self, indices: list[int], reason: ReasonCode, detail: str) -> None:
        """These instances cannot run here (the whole service, when its package cannot): given up,
        reported once."""
        logger.error("service %s: %s", self.service_id, detail)
        for index in indices:
            self.state.instance(index).given_up = True
        self._save()
        await self._report(
            ServiceEvent(
                type=ServiceEventType.EXITED,
                instance=min(indices),
                error_tail=detail[-ERROR_TAIL_MAX_CHARS:],
                restarting=False,
                reason_code=reason,
            )
        )

    async def _stop_instances(self) -> None:
        """At a stop: every instance stopped and reported `stopped` with the stop's reason."""
        if not self.stop_requested.is_set():
            return  # every instance was given up: nothing runs, the API heard each exit
        await asyncio.gather(*(p.stop(self.machine.settings.stop_grace) for p in self.processes.values()))
        reason = ReasonCode(self.state.stop_reason or ReasonCode.USER_STOP.value)
        for index, process in self.processes.items():
            process.state.pid = process.state.pid_start = None
            self._save()
            await self._report(
                ServiceEvent(type=ServiceEventType.STOPPED, instance=index, reason_code=reason)
            )

    async def _report(self, event: ServiceEvent) -> None:
        if self.forgotten:
            return
        try:
            reply = await self.machine.client.report_service(self.service_id, event)
        except ApiRejected as error:
            if error.status == 404:
                logger.warning(
                    "service %s: the API does not know it (%s); stopping it", self.service_id, error
                )
                self.forgotten = True
                self.stop(ReasonCode.USER_STOP)
            else:
                logger.error("service %s: %s refused: %s", self.service_id, event.type.value, error)
            return
        if reply.stop and event.type is not ServiceEventType.STOPPED:
            self.stop(ReasonCode.USER_STOP)

    # -- preparing ---------------------------------------------------------------------------------

    async def _prepared(self) -> str:
        """The interpreter of the service, its package unpacked first (once, whatever asks at once)."""
        async with self._preparing:
            if self._python is None:
                self._python = await self._prepare()
            return self._python

    async def _prepare(self) -> str:
        machine, payload = self.machine, self.payload
        if payload.gpus and not self.state.gpus:
            taken = machine.gpus.take(self.service_id, payload.gpus)
            if taken is None:
                raise ServiceRefused(
                    ReasonCode.MACHINE_REFUSED,
                    f"the service asks for {payload.gpus} GPU(s) and this machine has not that many free",
                )
            self.state.gpus = taken
            self._save()
        try:
            await self._unpack()
            if not payload.package_has_requirements:
                return machine.python
            python = await python_for(
                self.folder.package,
                Path(machine.settings.agent_work_dir),
                venvs=machine.settings.package_venvs,
                base=machine.python,
                outer=machine.interpreter.get("outer_site_packages") or [],
                launcher=machine.launcher,
            )
        except EnvironmentBuildFailed as error:
            raise ServiceRefused(
                ReasonCode.INVALID_PACKAGE, f"its requirements.txt could not be installed:\n{error.detail}"
            ) from error
        except ApiRejected as error:
            raise ServiceRefused(
                ReasonCode.EXCEPTION, f"its package could not be fetched: {error}"
            ) from error
        except (ApiError, OSError, ValueError) as error:
            raise ServiceRefused(
                ReasonCode.EXCEPTION, f"the service could not be prepared: {error}"
            ) from error
        return str(python)

    async def _unpack(self) -> None:
        folder, sha256 = self.folder, self.payload.package_sha256
        marker = folder.package / PACKAGE_MARKER
        if await asyncio.to_thread(_reads, marker) == sha256:
            return
        await asyncio.to_thread(folder.root.mkdir, parents=True, exist_ok=True)
        archive = folder.root / f".package-{uuid.uuid4().hex}.zip"
        staging = folder.root / f".package-{uuid.uuid4().hex}.tmp"
        try:
            await self.machine.client.download_service_package(self.service_id, archive, sha256)
            prefix = self.payload.package_root or ""
            if prefix and not prefix.endswith("/"):
                prefix += "/"
            await asyncio.to_thread(extract_zip, archive, staging, strip_prefix=prefix)
            await asyncio.to_thread(_install_package, staging, folder, sha256, self.machine.run_user)
        finally:
            archive.unlink(missing_ok=True)
            await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)

    async def _until_stopped(self, work: Awaitable[str]) -> str | None:
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None

    # -- the end -----------------------------------------------------------------------------------

    def _end(self) -> None:
        self.machine.gpus.release(self.service_id)
        self.store.remove(self.service_id)
        shutil.rmtree(self.folder.root, ignore_errors=True)
        logger.info("service %s: done", self.service_id)

    def _save(self) -> None:
        self.store.save(self.state)


def _reads(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _install_package(staging: Path, folder: ServiceFolder, sha256: str, user: RunUser | None) -> None:
    """The unpacked package into place (the old one, of another version, removed), the marker last;
    owned by the run user as a training run's folder is."""
    if folder.package.exists():
        shutil.rmtree(folder.package)
    os.rename(staging, folder.package)
    if user is not None:
        for path in [folder.root, folder.package, *folder.package.rglob("*")]:
            os.lchown(path, user.uid, user.gid)
        os.chmod(folder.root, 0o750)
    (folder.package / PACKAGE_MARKER).write_text(sha256 + "\n", encoding="utf-8")


class ServiceManager:
    """The services in hand: adopted at start-up, started and stopped by commands, listed in `hello`.
    `close()` lets go of them: their processes go on, and the next start re-adopts them."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.store = ServiceStore(Path(machine.settings.agent_work_dir))
        self.services: dict[uuid.UUID, Service] = {}
        self.tasks: dict[uuid.UUID, asyncio.Task[None]] = {}

    def adopt(self) -> None:
        self.store.ensure()
        (Path(self.machine.settings.agent_work_dir) / "services").mkdir(mode=0o711, exist_ok=True)
        for state in self.store.all():
            logger.info("service %s: re-adopting it", state.service_id)
            self._take(state)

    def ids(self) -> list[uuid.UUID]:
        return list(self.services)

    def environment_keys(self) -> set[str]:
        return {key for service in self.services.values() if (key := service.environment_key()) is not None}

    def stop_unwanted(self, service_ids: Iterable[uuid.UUID]) -> None:
        """hello's `stop_services`: the API no longer wants these served."""
        for service_id in service_ids:
            service = self.services.get(service_id)
            if service is not None:
                logger.info("service %s: the API no longer wants it; stopping it", service_id)
                service.stop(ReasonCode.USER_STOP)

    async def handle(
        self, command: Command, ack: Callable[[Command], Awaitable[CommandState | None]], *, draining: bool
    ) -> bool:
        """A `start_service` or `stop_service` command (a repeat is a no-op); False when it was left
        for the next agent (a start while draining)."""
        if command.kind is CommandKind.STOP_SERVICE:
            stop = StopServicePayload.model_validate(command.payload.get("stop", command.payload))
            await self._stop(stop)  # first, then the ack, as for runs
            await ack(command)
            return True
        start = StartServicePayload.model_validate(command.payload.get("start", command.payload))
        if draining and start.service_id not in self.services:
            return False
        if await ack(command) is CommandState.CANCELLED:
            logger.info("service %s: its start was withdrawn", start.service_id)
            return True
        held = self.services.get(start.service_id)
        if held is not None and not held.stop_requested.is_set():
            return True  # delivered again: already in hand
        if held is not None:  # a start right after a stop: the old instances go first
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.tasks[start.service_id]
        state = ServiceState(payload=start.model_dump(mode="json"), started_at=time.time())
        self.store.save(state)
        self._take(state)
        return True

    async def _stop(self, payload: StopServicePayload) -> None:
        service = self.services.get(payload.service_id)
        if service is not None:
            service.stop(payload.reason_code)
            return
        # Not in hand (never started here, or already ended): say so, so the API can end it.
        event = ServiceEvent(type=ServiceEventType.STOPPED, instance=0, reason_code=payload.reason_code)
        with contextlib.suppress(ApiRejected):
            await self.machine.client.report_service(payload.service_id, event)

    def ports(self) -> set[int]:
        """The ports every instance in hand holds."""
        return {
            port
            for service in self.services.values()
            for instance in service.state.instances.values()
            if (port := instance.port) is not None
        }

    def _take(self, state: ServiceState) -> None:
        service = Service(self.machine, self.store, state, self.ports)
        if state.gpus:
            self.machine.gpus.restore(service.service_id, state.gpus)
        self.services[service.service_id] = service
        self.tasks[service.service_id] = asyncio.create_task(
            self._drive(service), name=f"service {service.service_id}"
        )

    async def _drive(self, service: Service) -> None:
        delay = RETRY_FIRST_SECONDS
        try:
            while True:
                try:
                    await service.drive()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Its state is on disk: supervising it again from there is always safe.
                    logger.exception(
                        "service %s: supervising it failed; again in %.0f s", service.service_id, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
        finally:
            if self.services.get(service.service_id) is service:
                del self.services[service.service_id]
                self.tasks.pop(service.service_id, None)

    async def close(self) -> None:
        """Let go of every service (its processes go on; the next start re-adopts them)."""
        for task in self.tasks.values():
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
