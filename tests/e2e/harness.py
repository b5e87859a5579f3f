"""The whole system as an operator runs it: `trainyard-api serve` on a free port (SQLite), the agent as
a real `trainyard-agent run` process, real packages uploaded over HTTP. No mocks.

Packages in these tests wait on files the test writes (`go`) and leave files the test reads (pids,
`sigterm`), so nothing depends on how fast this shared machine is; every wait below is a generous
bound on waiting for a process, never an assertion about speed.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.run_process import command_lines, process_start_time
from tests.api.packages_kit import zip_bytes
from tests.api.test_cli import COMMAND as API_COMMAND
from tests.api.test_cli import Server, migrate, serving
from tests.api.test_cli import _env as api_env
from tests.api.world import ok
from tests.conftest import ADMIN_TOKEN

WAIT_SECONDS = 300.0  # a bound on waiting for a real training on a busy machine, never a speed check
STOP_GRACE_SECONDS = 2.0
PROJECT = "e2e"
MACHINE = "local"
_AGENT_SCRIPT = Path(sys.executable).with_name("trainyard-agent")
AGENT_COMMAND = [str(_AGENT_SCRIPT)] if _AGENT_SCRIPT.exists() else [sys.executable, "-m", "agent.cli"]

# What every test package imports: waiting on the test's files, leaving files for it.
PACKAGE_HELPERS = """
import os, time

MARKS = os.environ.get("marks", "")


def mark(name, text=""):
    if MARKS:
        with open(os.path.join(MARKS, name), "a") as f:
            f.write(str(text))


def wait_for(name, limit=120.0):
    deadline = time.monotonic() + limit
    while not os.path.exists(os.path.join(MARKS, name)):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never wrote " + name)
        time.sleep(0.02)
"""


def package(train: str, **files: str) -> dict[str, str]:
    """A package's files: `train.py` (dedented) plus the shared helpers module."""
    return {"train.py": textwrap.dedent(train), "e2e_helpers.py": PACKAGE_HELPERS, **files}


def public_tempdir(prefix: str) -> Path:
    """A folder every user can traverse: a run's user must reach its work dir (pytest's own temporary
    folders are private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


def run_as_user() -> str | None:
    """As root, packages run as root itself, explicitly (with TRAINYARD_ALLOW_UNSAFE_RUN_USER), because
    this machine's Python lives under /root, which no other user can reach outside a sandbox (the
    token-secrecy tests run a real unprivileged user: with the system's Python, and in the sandbox)."""
    return "root" if os.geteuid() == 0 else None


@dataclass
class AgentProcess:
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    expected_down: bool = False

    def start(self) -> AgentProcess:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [*AGENT_COMMAND, "run"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: the agent dies at once, its runs go on."""
        assert self.process is not None
        self.expected_down = True
        self.process.kill()
        self.process.wait(timeout=WAIT_SECONDS)

    def stop(self) -> int | None:
        self.expected_down = True
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@dataclass
class Stack:
    server: Server
    admin: httpx.AsyncClient
    root: Path
    work_dir: Path
    marks_root: Path
    token_file: Path
    agents: list[AgentProcess] = field(default_factory=list)
    counter: int = 0

    @property
    def api_url(self) -> str:
        return self.server.base_url

    def agent_env(self, drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TRAINYARD_API_URL": self.server.base_url,
            "TRAINYARD_AGENT_TOKEN_FILE": str(self.token_file),
            "TRAINYARD_AGENT_WORK_DIR": str(self.work_dir),
            "TRAINYARD_STOP_GRACE": str(STOP_GRACE_SECONDS),
            "TRAINYARD_RETRY_INITIAL": "0.05",
            "TRAINYARD_RETRY_MAX": "0.5",
            "TRAINYARD_LOG_LEVEL": "INFO",
        }
        run_as = run_as_user()
        if run_as is not None:
            env["TRAINYARD_RUN_AS"] = run_as
        # Packages as the agent's own user or root: refused unless accepted in so many words. The suite
        # accepts it (the machine's Python is under /root); tests/e2e/test_sandbox.py runs them as
        # another user in the sandbox, and test_agent_machine.py as another user without one.
        env["TRAINYARD_ALLOW_UNSAFE_RUN_USER"] = "true"
        env.update(extra)
        for name in drop:
            env.pop(name, None)
        return env

    def start_agent(self, drop: tuple[str, ...] = (), **extra: str) -> AgentProcess:
        env = self.agent_env(drop, **extra)
        agent = AgentProcess(env, self.root / f"agent-{len(self.agents)}.log")
        self.agents.append(agent.start())
        return agent

    def marks(self, name: str) -> Path:
        folder = self.marks_root / name
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o777)
        return folder

    async def deploy(self, files: dict[str, str], *, marks: Path | None = None, **template: Any) -> str:
        """Upload `files` as a new package (1.0), a template on it and a process; the process's path."""
        self.counter += 1
        name = f"p{self.counter}"
        uploaded = await self.admin.post(
            f"/projects/{PROJECT}/packages/{name}/versions",
            files={"file": (f"{name}.zip", zip_bytes(files), "application/zip")},
        )
        ok(uploaded, 201)
        parameters = dict(template.pop("parameters", {}))
        if marks is not None:
            parameters["marks"] = str(marks)
        ok(
            await self.admin.post(
                f"/projects/{PROJECT}/templates",
                json={
                    "name": name,
                    "model_type": "classifier",
                    "base_package": name,
                    "parameters": parameters,
                    **template,
                },
            ),
            201,
        )
        created = await self.admin.post(
            f"/projects/{PROJECT}/templates/{name}/processes", json={"machine": MACHINE}
        )
        process = ok(created, 201)
        return f"/projects/{PROJECT}/processes/{process['id']}"

    async def start(self, process: str) -> dict[str, Any]:
        run: dict[str, Any] = ok(await self.admin.post(f"{process}/start"), 201)["latest_run"]
        return run

    async def stop(self, process: str) -> dict[str, Any]:
        body: dict[str, Any] = ok(await self.admin.post(f"{process}/stop"), 202)
        return body

    async def run(self, run_id: str) -> dict[str, Any]:
        body: dict[str, Any] = ok(await self.admin.get(f"/projects/{PROJECT}/runs/{run_id}"))
        return body

    async def wait_run(self, run_id: str, *statuses: str) -> dict[str, Any]:
        """The run once its status is one of `statuses` (a bound on waiting, not a speed check)."""
        deadline = time.monotonic() + WAIT_SECONDS
        run = await self.run(run_id)
        while run["status"] not in statuses:
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} stayed {run['status']}: {run}\n{self.logs()}")
            self.check_agents()
            await asyncio.sleep(0.05)
            run = await self.run(run_id)
        return run

    async def wait_succeeded(self, run_id: str) -> dict[str, Any]:
        """The run once it ended; an AssertionError that leads with why, when it did not succeed.

        pytest cuts a long assertion message: the reason, the traceback and the run's stderr come
        first, the whole run and the programs' logs after them."""
        run = await self.wait_run(run_id, "succeeded", "failed", "stopped")
        if run["status"] != "succeeded":
            page = await self.admin.get(f"/projects/{PROJECT}/runs/{run_id}/logs")
            lines = page.json().get("lines", []) if page.status_code == 200 else []
            tail = "\n".join(f"{line['stream']}: {line['text']}" for line in lines[-80:])
            raise AssertionError(
                f"run {run_id} {run['status']} ({run['reason_code']}):\n{run['detail']}\n"
                f"--- run log:\n{tail}\n--- run: {run}\n{self.logs()}"
            )
        return run

    def kill_api(self) -> None:
        """SIGKILL the API: no shutdown, no flush, as a crash or an OOM kill."""
        self.server.process.kill()
        self.server.process.wait(timeout=WAIT_SECONDS)

    def restart_api(self) -> None:
        """`trainyard-api serve` again, on the same port and data dir."""
        port = self.server.base_url.rsplit(":", 1)[1]
        with self.server.log.open("ab") as sink:
            self.server.process = subprocess.Popen(
                [*API_COMMAND, "serve", "--port", port],
                cwd=self.root,
                env=api_env(self.root / "data", **API_SETTINGS),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.server.wait_until_up()

    async def wait_polling(self) -> None:
        """Until the machine has been seen (its agent said hello and polls)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not ok(await self.admin.get(f"/machines/{MACHINE}")).get("last_seen_at"):
            self.check_agents()
            if time.monotonic() > deadline:
                raise AssertionError(f"the agent never polled\n{self.logs()}")
            await asyncio.sleep(0.05)

    def check_agents(self) -> None:
        """Fail at once when an agent died that the test did not stop."""
        for agent in self.agents:
            if not agent.expected_down and agent.process is not None and agent.process.poll() is not None:
                raise AssertionError(f"an agent exited ({agent.process.returncode})\n{self.logs()}")

    def logs(self) -> str:
        agents = "\n".join(f"--- agent {i}:\n{a.output()[-6000:]}" for i, a in enumerate(self.agents))
        return f"--- api:\n{self.server.output()[-4000:]}\n{agents}"


async def wait_for_file(path: Path, stack: Stack | None = None) -> str:
    deadline = time.monotonic() + WAIT_SECONDS
    while not await asyncio.to_thread(path.exists):
        if stack is not None:
            stack.check_agents()
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared\n{stack.logs() if stack else ''}")
        await asyncio.sleep(0.02)
    return await asyncio.to_thread(path.read_text)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count)."""
    return process_start_time(pid) is not None


async def wait_gone(pids: list[int], stack: Stack | None = None) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            left = [pid for pid in pids if alive(pid)]
            raise AssertionError(f"still alive: {left}\n{stack.logs() if stack else ''}")
        await asyncio.sleep(0.05)


API_SETTINGS = {"bootstrap_token": ADMIN_TOKEN, "start_timeout": "60", "sweep_interval": "0.2"}


@contextmanager
def _api(root: Path, **settings: str) -> Iterator[Server]:
    migrate(root, **API_SETTINGS, **settings)
    with serving(root, **API_SETTINGS, **settings) as server:
        yield server


@asynccontextmanager
async def stack(**settings: str) -> AsyncIterator[Stack]:
    """The API, an admin client, a machine `local` (capacity 20) and its token file; no agent yet.
    `settings`: more of the API's (`blob_store="s3://..."` as TRAINYARD_BLOB_STORE)."""
    root = public_tempdir("trainyard-e2e-")
    try:
        with _api(root, **settings) as server:
            async with httpx.AsyncClient(
                base_url=f"{server.base_url}/api/v1",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=60,
            ) as admin:
                ok(await admin.post("/model-types", json={"name": "classifier"}), 201)
                ok(await admin.post("/projects", json={"name": PROJECT}), 201)
                fields = {"name": MACHINE, "address": "127.0.0.1", "capacity": 20}
                machine = ok(await admin.post("/machines", json=fields), 201)
                token_file = root / "agent-token"
                token_file.write_text(machine["agent_token"] + "\n")
                os.chmod(token_file, 0o600)
                work_dir = root / "agent"
                work_dir.mkdir(mode=0o755)
                the_stack = Stack(server, admin, root, work_dir, root / "marks", token_file)
                the_stack.marks_root.mkdir(mode=0o777)
                os.chmod(the_stack.marks_root, 0o777)
                try:
                    yield the_stack
                finally:
                    for agent in the_stack.agents:
                        agent.stop()
                    _kill_leftover_runners(work_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kill_leftover_runners(work_dir: Path) -> None:
    """A failed test must not leave a training process behind on the machine."""
    needle = str(work_dir).encode()
    for pid, cmdline in command_lines():
        if needle in cmdline and b"runner.py" in cmdline:
            with suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
