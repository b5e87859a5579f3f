"""How a run's processes are started: as which user, inside what, with which limits.

Two layers, each enough on its own against the credential theft an attack on Trainyard found (a
package reading `/proc/<agent>/environ`, the token file, the agent's state):

- **Another user.** The run's processes never share a uid with the agent unless the settings say so
  explicitly (`AgentSettings.check_run_user`): as root, the agent starts them as `TRAINYARD_RUN_AS`.
- **A sandbox** (`TRAINYARD_SANDBOX=bwrap`, bubblewrap from the distribution): a private `/proc` and
  pid namespace (no other process of the machine is visible, the agent's least of all), a root
  filesystem that holds only the system's read-only folders, the run's interpreter and the run's own
  folder (writable), a private `/tmp`, no network unless `TRAINYARD_SANDBOX_NETWORK` allows it. As
  root, bubblewrap builds the sandbox and `setpriv` then drops to the run user with no capability
  and no way to gain one (`no_new_privs`), so the interpreter may live where that user could not
  reach it outside (pyenv under `/root`). Not as root, bubblewrap uses an unprivileged user
  namespace and the run keeps the agent's uid, which it cannot use against the agent: it sees neither
  its processes nor its files.

Limits (`TRAINYARD_RUN_MEMORY_BYTES`, `TRAINYARD_RUN_CPU_SECONDS`, `TRAINYARD_RUN_MAX_PROCESSES`) are
resource limits set on the first process of the run and inherited by all of it.

The same launch path starts the preflight probe (`preflight`), so "the run user can execute the run
interpreter and reach the work dir" is checked at start-up exactly as a run will be launched.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

# What a run needs of the machine besides its interpreter: the system's programs and libraries and
# /etc (the dynamic linker's cache, certificates, passwd for getpwuid). Bound read-only when present.
SYSTEM_FOLDERS = ("/usr", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/sys")
DEVICE_PREFIXES = ("nvidia",)  # /dev/nvidia*, for GPU runs

# Printed by the probe: what the interpreter is and where its files are, so the sandbox can show them.
PROBE = """
import importlib.util, json, os, site, sys
paths = [p for p in sys.path if p]
sites = site.getsitepackages() if hasattr(site, "getsitepackages") else []
bases = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)]
outer = [] if sys.prefix == sys.base_prefix else [
    p for p in sites if not any(os.path.realpath(p).startswith(b + os.sep) for b in bases)]
print(json.dumps({"executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
                  "exec_prefix": sys.exec_prefix, "base_exec_prefix": sys.base_exec_prefix,
                  "paths": paths + sites, "outer_site_packages": outer,
                  "pip": importlib.util.find_spec("pip") is not None, "version": sys.version.split()[0]}))
"""


class LaunchRefused(Exception):
    """The machine cannot launch runs as configured; the message says what to set."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int | None = None
    cpu_seconds: int | None = None
    max_processes: int | None = None

    def apply(self) -> None:
        """In the child, before exec: lower the limits (always permitted, inherited by every child)."""
        for kind, value in (
            (resource.RLIMIT_AS, self.memory_bytes),
            (resource.RLIMIT_CPU, self.cpu_seconds),
            (resource.RLIMIT_NPROC, self.max_processes),
        ):
            if value is not None:
                resource.setrlimit(kind, (value, value))

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.memory_bytes, self.cpu_seconds, self.max_processes))


@dataclass(frozen=True)
class Launcher:
    """Turns "run this interpreter with these arguments in this folder" into a command line and the
    user the agent starts it as."""

    uid: int | None  # the run user's, None = the agent's own
    gid: int | None
    sandbox: bool = False
    network: bool = False
    limits: Limits = Limits()
    readable: tuple[str, ...] = ()  # the interpreter's folders, shown read-only in the sandbox
    hidden: tuple[str, ...] = field(default=())  # files never shown (the token file)
    bwrap: str = "bwrap"

    def command(
        self, argv: list[str], *, cwd: Path, writable: Iterable[Path] = (), readonly: Iterable[Path] = ()
    ) -> list[str]:
        if not self.sandbox:
            return argv
        sandbox = self.sandbox_arguments(writable, readonly)
        return [*sandbox, "--chdir", str(cwd), *self._drop_privileges(), *argv]

    def spawn_user(self) -> tuple[int | None, int | None]:
        """Who the agent starts the command as: the run user, except in a root sandbox, where the
        sandbox is built as root and `setpriv` drops to the run user inside it."""
        if self.sandbox and os.geteuid() == 0:
            return None, None
        return self.uid, self.gid

    def preexec(self) -> Callable[[], None] | None:
        return self.limits.apply if self.limits.any else None

    def sandbox_arguments(self, writable: Iterable[Path], readonly: Iterable[Path]) -> list[str]:
        args = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if os.geteuid() != 0:
            args.append("--unshare-user")
        if not self.network:
            args.append("--unshare-net")
        args += ["--new-session", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]
        for folder in SYSTEM_FOLDERS:
            if os.path.islink(folder):  # merged /usr: /bin -> usr/bin
                args += ["--symlink", os.readlink(folder), folder]
            elif os.path.isdir(folder):
                args += ["--ro-bind", folder, folder]
        for device in _devices():
            args += ["--dev-bind", device, device]
        shown = _outermost([*self.readable, *map(str, readonly)], under_system=True)
        rw = [str(path) for path in writable]
        # bubblewrap would make a mount point's missing parents with their modes outside (a 0700
        # temporary folder stays closed to the run user): made traversable here first.
        for parent in _parents([*shown, *rw], bound=[*SYSTEM_FOLDERS, *shown, *rw]):
            args += ["--perms", "0755", "--dir", parent]
        for shown_path in shown:
            args += ["--ro-bind", shown_path, shown_path]
        for path in rw:
            args += ["--bind", path, path]
        for secret in self.hidden:
            if os.path.exists(secret) and _is_under(secret, [*SYSTEM_FOLDERS, *shown]):
                args += ["--ro-bind", "/dev/null", secret]
        return args

    def _drop_privileges(self) -> list[str]:
        if os.geteuid() != 0 or self.uid is None:
            return []
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        return [
            setpriv,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]


def _devices() -> list[str]:
    try:
        names = os.listdir("/dev")
    except OSError:
        return []
    return [f"/dev/{name}" for name in sorted(names) if name.startswith(DEVICE_PREFIXES)]


def _parents(paths: Iterable[str], *, bound: list[str]) -> list[str]:
    """Every folder above `paths` that is not `/`, /tmp or /run (made by the sandbox) and not inside a
    bound folder, outermost first."""
    parents: set[str] = set()
    for path in paths:
        for parent in Path(path).parents:
            text = str(parent)
            if text in ("/", "/tmp", "/run") or _is_under(text, bound):
                continue
            parents.add(text)
    return sorted(parents, key=lambda p: (p.count("/"), p))


def _is_under(path: str, folders: Iterable[str]) -> bool:
    return any(Path(path).is_relative_to(folder) for folder in folders)


def _outermost(paths: Iterable[str], *, under_system: bool) -> list[str]:
    """The existing folders among `paths` (as named and as resolved: a symlinked venv needs both),
    without those inside another one (or inside a system folder, which is bound already)."""
    named = [p for p in paths if p and os.path.exists(p)]
    every = sorted({os.path.abspath(p) for p in named} | {os.path.realpath(p) for p in named})
    kept: list[str] = []
    for path in every:
        if under_system and _is_under(path, SYSTEM_FOLDERS):
            continue
        if not any(Path(path).is_relative_to(other) for other in kept):
            kept.append(path)
    return kept


async def describe_python(python: str) -> dict[str, object]:
    """The probe's answer for `python`, run as the agent itself (to learn what the sandbox must show)."""
    code, out, err = await _run([python, "-I", "-c", PROBE], cwd="/", launcher=None)
    if code != 0:
        raise LaunchRefused(f"the run interpreter {python} does not run: {err or out or f'exit code {code}'}")
    try:
        answer = json.loads(out)
    except ValueError:
        raise LaunchRefused(f"the run interpreter {python} printed no description: {out[:200]!r}") from None
    if not isinstance(answer, dict):
        raise LaunchRefused(f"the run interpreter {python} printed no description")
    return answer


def interpreter_folders(description: dict[str, object]) -> tuple[str, ...]:
    """The folders the interpreter needs to see: its prefixes and every folder on its path."""
    found: list[str] = []
    for name in ("prefix", "base_prefix", "exec_prefix", "base_exec_prefix"):
        value = description.get(name)
        if isinstance(value, str):
            found.append(value)
    executable = description.get("executable")
    if isinstance(executable, str):
        found.append(os.path.dirname(executable))
        found.append(os.path.dirname(os.path.realpath(executable)))
    paths = description.get("paths")
    if isinstance(paths, list):
        found += [p for p in paths if isinstance(p, str)]
    return tuple(found)


async def preflight(launcher: Launcher, python: str, runner: Path, work_dir: Path, user: str) -> None:
    """Start the probe exactly as a run will be started (same user, same sandbox, the runner's folder
    as its current directory); refuse with what to set when it cannot run."""
    runtime = runner.parent
    argv = [python, "-I", "-c", "import sys; open(sys.argv[1], 'rb').close()", str(runner)]
    command = launcher.command(argv, cwd=runtime, readonly=[runtime])
    try:
        code, out, err = await _run(command, cwd=str(runtime), launcher=launcher)
    except PermissionError as error:
        code, out, err = 126, "", str(error)
    except FileNotFoundError as error:
        code, out, err = 127, "", str(error)
    if code == 0:
        return
    why = (err or out).strip().splitlines()[-1:] or [f"exit code {code}"]
    where = "inside the sandbox (TRAINYARD_SANDBOX=bwrap)" if launcher.sandbox else "directly"
    raise LaunchRefused(
        f"the run user {user} cannot run {python} on {runner} {where}: {why[0]}. Packages could never "
        "start. Set TRAINYARD_RUN_PYTHON to a Python that user can execute (with the libraries your "
        "packages need), make the work dir "
        f"{work_dir} reachable by that user, or, as root, turn on TRAINYARD_SANDBOX=bwrap, which shows "
        "the run user the interpreter wherever it is installed"
    )


async def _run(command: list[str], *, cwd: str, launcher: Launcher | None) -> tuple[int, str, str]:
    uid, gid = launcher.spawn_user() if launcher is not None else (None, None)
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        user=uid,
        group=gid,
        extra_groups=[] if uid is not None else None,
        preexec_fn=launcher.preexec() if launcher is not None else None,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace").strip(), err.decode(errors="replace").strip()
