"""One instance of a service on this machine as a process: its environment, its launch (as the run
user, in the sandbox when it is on, in a session of its own), its port, its health, its end.

The serving process is `runtime/server.py` (installed beside the runner), started by its file path by
the package environment's interpreter with the package folder as its current directory. The secret
travels in its environment, never on its command line; the agent's own variables never reach it. A
stop is SIGTERM to the process group and everything below the process (a package's helpers in a
session of their own too), then SIGKILL after the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from agent.gpus import visible_devices
from agent.run_process import command_lines, process_start_time, wait_for_pid
from agent.runtime.runner import descendants
from agent.sandbox import Launcher
from agent.service_state import InstanceState, ServiceFolder

logger = logging.getLogger(__name__)

LOG_MAX_BYTES = 16 * 1024 * 1024  # an instance's log past this is cut (its last LOG_KEPT_BYTES to <name>.1)
LOG_KEPT_BYTES = 1024 * 1024
HEALTH_TIMEOUT_SECONDS = 5.0


def server_command(service_id: uuid.UUID, index: int) -> list[str]:
    """The arguments that name an instance on its command line (how a lost pid is found again)."""
    return ["--service", str(service_id), "--instance", str(index)]


def find_server(service_id: uuid.UUID, index: int) -> int | None:
    """The pid of a live serving process of this instance (launched just before the agent died, before
    it could note the pid), if any."""
    needle = "\0".join(server_command(service_id, index)).encode()
    for pid, cmdline in command_lines():
        program = cmdline.split(b"\0", 1)[0]
        if (
            needle in cmdline
            and b"server.py" in cmdline
            and not program.endswith((b"bwrap", b"setpriv"))
            and process_start_time(pid) is not None
        ):
            return pid
    return None


async def get_health(host: str, port: int) -> tuple[int, dict[str, str]] | None:
    """GET /health on a connection of its own: (status, headers), or None when nothing answered in
    time. By hand on a socket: asked every few seconds per instance, it stays out of httpx's log."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                request = (
                    f"GET /health HTTP/1.1\r\nHost: {url_host(host)}:{port}\r\nConnection: close\r\n\r\n"
                )
                writer.write(request.encode("ascii"))
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    status_line, *lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        return None
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
    }
    return status, headers


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def local_host(bind: str) -> str:
    """Where the agent itself reaches an instance listening on `bind`."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(bind, bind)


def pick_port(host: str, ports: range, taken: Iterable[int]) -> int | None:
    """A port of `ports` that no instance of this agent holds and that binds on `host` now, starting at
    a random one (two agents sharing a range seldom race); None when none is free."""
    excluded = set(taken)
    start = random.randrange(len(ports))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for offset in range(len(ports)):
        port = ports[(start + offset) % len(ports)]
        if port in excluded:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return port
    return None


def serving_environment(
    python: str, folder: ServiceFolder, gpus: list[int], host: str, port: int, secret: str
) -> dict[str, str]:
    """The instance's environment, built from nothing (the agent's token never reaches a package)."""
    return {
        "PATH": os.pathsep.join([str(Path(python).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(folder.root),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        **visible_devices(gpus),
        "TRAINYARD_SERVE_HOST": host,
        "TRAINYARD_SERVE_PORT": str(port),
        "TRAINYARD_SERVICE_SECRET": secret,
    }


def _open_log(path: Path) -> tuple[int, int]:
    """`path` opened for appending (moved aside first when it grew past `LOG_MAX_BYTES`): the fd and
    where this launch's output starts."""
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    return fd, os.fstat(fd).st_size


class ServingProcess:
    """One instance's process: launched or adopted, waited for, asked for its health, stopped. It reads
    and writes the pid in the instance's state, which the service saves."""

    def __init__(
        self,
        service_id: uuid.UUID,
        index: int,
        folder: ServiceFolder,
        state: InstanceState,
        launcher: Launcher,
    ) -> None:
        self.service_id, self.index, self.folder, self.state = service_id, index, folder, state
        # A service answers the network: in the sandbox, with it (agent/sandbox.py).
        self.launcher = replace(launcher, network=True)
        self._child: asyncio.subprocess.Process | None = None

    def alive(self) -> bool:
        pid = self.state.pid
        return pid is not None and process_start_time(pid) == self.state.pid_start

    def adopt_lost(self) -> bool:
        """A process of this instance found by its command line when the state has no pid (the agent
        died between the launch and noting it); whether one was."""
        if self.state.pid is not None:
            return False
        pid = find_server(self.service_id, self.index)
        if pid is None:
            return False
        self.state.pid, self.state.pid_start = pid, process_start_time(pid)
        return True

    async def launch(self, python: str, server: Path, env: dict[str, str]) -> int:
        argv = [python, str(server), *server_command(self.service_id, self.index)]
        command = self.launcher.command(
            argv,
            cwd=self.folder.package,
            writable=[self.folder.root],
            readonly=[server.parent, Path(python).parent.parent],
        )
        uid, gid = self.launcher.spawn_user()
        stdout, _ = await asyncio.to_thread(_open_log, self.folder.stdout(self.index))
        try:
            stderr, offset = await asyncio.to_thread(_open_log, self.folder.stderr(self.index))
        except OSError:
            os.close(stdout)
            raise
        try:
            self._child = await asyncio.create_subprocess_exec(
                *command,
                cwd=self.folder.package,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own session: the agent's signals and death do not reach it
                user=uid,
                group=gid,
                extra_groups=[] if uid is not None else None,
                preexec_fn=self.launcher.preexec(),
            )
        finally:
            os.close(stdout)
            os.close(stderr)
        pid = self._child.pid
        self.state.pid, self.state.pid_start, self.state.stderr_offset = pid, process_start_time(pid), offset
        self.state.served = False
        return pid

    async def wait(self) -> tuple[int | None, int | None]:
        """Until the process ends: (exit code, signal); both None for an adopted one (not our child)."""
        child = self._child
        if child is not None and child.pid == self.state.pid:
            code = await child.wait()
            return (None, -code) if code < 0 else (code, None)
        await wait_for_pid(self.state.pid, self.state.pid_start)
        return None, None

    async def healthy(self, host: str) -> bool:
        """Whether GET /health answers 200 now, from this instance (not whatever else took the port)."""
        answer = await get_health(host, self.state.port or 0)
        return (
            answer is not None and answer[0] == 200 and answer[1].get("x-trainyard-instance") == self.instance
        )

    def bound_logs(self) -> None:
        """Keep a serving instance's logs within `LOG_MAX_BYTES` while it runs: past it, the last
        `LOG_KEPT_BYTES` go to `<name>.1` and the file is emptied (the process appends, so it writes on
        at the new end). What it writes between the copy and the cut is lost."""
        for path in (self.folder.stdout(self.index), self.folder.stderr(self.index)):
            try:
                if path.stat().st_size <= LOG_MAX_BYTES:
                    continue
                with open(path, "rb") as log:
                    log.seek(-LOG_KEPT_BYTES, os.SEEK_END)
                    kept = log.read()
                aside = path.with_name(path.name + ".1")
                aside.write_bytes(kept)
                os.truncate(path, 0)
            except OSError as error:
                logger.warning(
                    "service %s instance %d: %s not cut: %s", self.service_id, self.index, path, error
                )
                continue
            if path == self.folder.stderr(self.index):
                self.state.stderr_offset = 0

    @property
    def instance(self) -> str:
        return f"{self.service_id}/{self.index}"

    def signal(self, signum: int) -> None:
        """`signum` to the process's group and to everything below it, while it is the same process."""
        pid = self.state.pid
        if pid is None or not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)
        for below in descendants(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(below, signum)

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds to whatever is left; until it is gone."""
        if not self.alive():
            return
        logger.info("service %s instance %d: SIGTERM (pid %s)", self.service_id, self.index, self.state.pid)
        self.signal(signal.SIGTERM)
        ended = asyncio.ensure_future(self.wait())
        try:
            await asyncio.wait({ended}, timeout=grace)
            while not ended.done():
                logger.warning(
                    "service %s instance %d: alive after the grace; SIGKILL", self.service_id, self.index
                )
                self.signal(signal.SIGKILL)
                await asyncio.wait({ended}, timeout=1.0)
        finally:
            ended.cancel()
        pid = self.state.pid
        if pid is not None:  # what is left of its process group (the group outlives its leader)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
