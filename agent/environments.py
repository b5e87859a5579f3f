"""The Python interpreter a run uses: the machine's, or a virtual environment built from the package's
`requirements.txt` and cached by the sha256 of that file's bytes.

Layout under the agent's work dir:

    envs/<sha256>/                       a whole environment, renamed into place only once pip succeeded
    envs/<sha256>/trainyard-env.json     written last: what it was built from
    envs/<sha256>/requirements.txt       the checked lines pip installed
    envs/<sha256>/.last-used             touched at each use; `prune(..., older_than=...)` reads it
    envs/.<sha256>.<uuid>.tmp/           a build in progress, or what a crash left (removed by the next)
    envs/.locks/<sha256>.lock            the lock of that hash across agent processes

An environment is made with `--system-site-packages`, so what the machine's Python has (torch above
all) is never installed twice; pip installs only what is missing. A build is done once however many
runs ask at the same time: an asyncio lock per hash inside the agent, an `fcntl` lock across processes.
Cancelling `python_for` kills pip and leaves nothing behind. What the file may say is
`shared.requirements`' policy (size, UTF-8, each line), checked before pip reads a line: the API
applies the very same check to every package it stores.
"""

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import site
import stat
import sys
import sysconfig
import time
import uuid
import venv
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from agent.sandbox import Launcher, Limits
from shared.requirements import MAX_REQUIREMENTS_BYTES, RequirementRefused, check_requirements_file

REQUIREMENTS = "requirements.txt"
MARKER = "trainyard-env.json"
LAST_USED = ".last-used"
OUTPUT_KEPT_BYTES = 64 * 1024  # of pip's output, for the error
DETAIL_MAX_CHARS = 8000  # the run's `detail` (shared.protocol allows 16 KiB)
_TEMP_SUFFIX = ".tmp"
_KEY = re.compile(r"[0-9a-f]{64}")
_LOCK_POLL_MAX = 0.5


class EnvironmentBuildFailed(Exception):
    """The run's environment could not be made; `detail` is for the run's `detail` (pip's last lines)."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail if detail is not None else message


def requirements_hash(package_dir: Path) -> str | None:
    """The environment key of an unpacked package (what `prune` keeps), None without requirements."""
    try:
        return hashlib.sha256(_read_requirements(Path(package_dir) / REQUIREMENTS)).hexdigest()
    except (FileNotFoundError, EnvironmentBuildFailed):
        return None  # nothing was built for it


async def python_for(
    package_dir: Path,
    work_dir: Path,
    *,
    venvs: bool = True,
    base: str | None = None,
    outer: list[str] | None = None,
    launcher: Launcher | None = None,
) -> Path:
    """The interpreter for a run of the package unpacked in `package_dir`, building its environment
    under `work_dir/envs` when the package has a `requirements.txt` (and `venvs` is on).

    `base` is the run interpreter (`TRAINYARD_RUN_PYTHON`) the environment is made from, and `outer`
    the site-packages of the virtual environment it belongs to, if any (agent/sandbox.py's probe);
    without them, the agent's own Python. With `launcher`, the environment is made and pip runs as
    the run user (in the sandbox, if it is on, with the network): a package's build scripts never run
    as the agent. The finished environment belongs to the agent and is read-only to runs."""
    python = Path(base) if base is not None else Path(sys.executable)
    if not venvs:
        return python
    try:
        content = await asyncio.to_thread(_read_requirements, Path(package_dir) / REQUIREMENTS)
    except FileNotFoundError:
        return python
    try:
        lines = check_requirements_file(content)
    except RequirementRefused as error:
        raise EnvironmentBuildFailed(str(error)) from None
    key = hashlib.sha256(content).hexdigest()
    envs = Path(work_dir) / "envs"
    final = envs / key
    async with _in_process_lock(envs, key), _file_lock(envs, key):
        if not await asyncio.to_thread(_is_whole, final):
            await _build(envs, final, key, lines, base, outer, launcher)
        await asyncio.to_thread(_touch, final / LAST_USED)
    return final / "bin" / "python"


def _read_requirements(path: Path) -> bytes:
    """The file's bytes, up to one past `MAX_REQUIREMENTS_BYTES` (what `check_requirements_file`
    refuses); never through a symbolic link (its lines could end up in an error message)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise EnvironmentBuildFailed(f"requirements.txt cannot be read: {error.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EnvironmentBuildFailed("requirements.txt is not a regular file")
        return file.read(MAX_REQUIREMENTS_BYTES + 1)  # one byte past the bound: enough to refuse it


_locks: dict[tuple[Path, str], tuple[asyncio.Lock, int]] = {}


@contextlib.asynccontextmanager
async def _in_process_lock(envs: Path, key: str) -> AsyncIterator[None]:
    """One asyncio lock per hash while someone needs it (dropped after, so no loop keeps it)."""
    slot = (envs, key)
    lock, users = _locks.get(slot, (asyncio.Lock(), 0))
    _locks[slot] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = _locks[slot]
        if users == 1:
            del _locks[slot]
        else:
            _locks[slot] = (lock, users - 1)


def _lock_path(envs: Path, key: str) -> Path:
    return envs / ".locks" / f"{key}.lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive `flock` on `path`, or None while another holds it.

    `prune` unlinks a lock file while holding it, so a lock taken on a file that is no longer at
    `path` guards nothing: it is dropped and the caller tries again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


@contextlib.asynccontextmanager
async def _file_lock(envs: Path, key: str) -> AsyncIterator[None]:
    """The hash's lock across processes. Polled without blocking, so a cancelled wait leaks no lock."""
    path = _lock_path(envs, key)
    pause = 0.01
    while (fd := _try_lock(path)) is None:
        await asyncio.sleep(pause)
        pause = min(pause * 2, _LOCK_POLL_MAX)
    try:
        yield
    finally:
        os.close(fd)


def _is_whole(final: Path) -> bool:
    """Whether `final` is a finished environment whose interpreter still exists; else it is removed
    (the machine's Python was replaced, say) so the caller builds it again."""
    if (final / MARKER).is_file() and (final / "bin" / "python").exists():
        return True
    if os.path.lexists(final):
        _remove(final)
    return False


def _touch(path: Path) -> None:
    path.touch()  # now, also when it exists


def _remove(path: Path) -> None:
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _clear_temporaries(envs: Path, key: str) -> None:
    """Remove what an interrupted build of `key` left (the caller holds its lock)."""
    envs.mkdir(parents=True, exist_ok=True)
    for entry in envs.glob(f".{key}.*{_TEMP_SUFFIX}"):
        _remove(entry)


async def _build(
    envs: Path,
    final: Path,
    key: str,
    lines: list[str],
    base: str | None,
    outer: list[str] | None,
    launcher: Launcher | None,
) -> None:
    """Make the environment under a temporary name, install into it, rename it into place."""
    await asyncio.to_thread(_clear_temporaries, envs, key)
    temporary = envs / f".{key}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
    builder = _Spawner(launcher, temporary)
    try:
        if base is None:
            outer = _outer_site_packages()
            await asyncio.to_thread(_create, temporary, lines)
        else:
            await asyncio.to_thread(builder.make_folder)
            await _create_from(base, temporary, lines, outer or [], builder)
        await _pip_install(temporary, builder)
        await asyncio.to_thread(builder.take_back)
        await asyncio.to_thread(_finish, temporary, final, key, base or sys.executable, outer or [])
    finally:
        await asyncio.to_thread(_remove, temporary)


def _outer_site_packages() -> list[str]:
    """The running virtual environment's site-packages, when the agent runs in one.

    `venv --system-site-packages` links a new environment to the *base* interpreter
    (`sys._base_executable`) and its site-packages, not to the virtual environment the agent runs in
    (where torch may be installed, as on a developer's machine). So the new environment also gets a
    `.pth` file that calls `site.addsitedir` on these folders: they come after its own packages and
    before the base's, and their own `.pth` files (editable installs) work as in the agent's Python.
    """
    if sys.prefix == sys.base_prefix:
        return []
    bases = {Path(sys.base_prefix).resolve(), Path(sys.base_exec_prefix).resolve()}
    return [
        path
        for path in site.getsitepackages()
        if not any(Path(path).resolve().is_relative_to(base) for base in bases)
    ]


class _Builder(venv.EnvBuilder):
    def __init__(self, outer: list[str], *, with_pip: bool) -> None:
        super().__init__(system_site_packages=True, symlinks=True, with_pip=with_pip)
        self.outer = outer

    def post_setup(self, context: SimpleNamespace) -> None:
        if not self.outer:
            return
        site_packages = Path(
            sysconfig.get_path("purelib", "venv", vars={"base": context.env_dir, "platbase": context.env_dir})
        )
        site_packages.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"import site; site.addsitedir({folder!r})\n" for folder in self.outer)
        (site_packages / "_trainyard_outer_site.pth").write_text(lines, encoding="utf-8")


def _create(temporary: Path, lines: list[str]) -> None:
    outer = _outer_site_packages()
    # pip itself comes from the machine's Python (visible through the links above) when it has one;
    # ensurepip only when it has none.
    _Builder(outer, with_pip=importlib.util.find_spec("pip") is None).create(temporary)
    (temporary / REQUIREMENTS).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


class _Spawner:
    """Starts a build's commands: as the agent without a launcher, else as the run user (through the
    sandbox when it is on, with the network pip needs), in a folder that user owns until
    `take_back`."""

    def __init__(self, launcher: Launcher | None, folder: Path) -> None:
        self.launcher = None if launcher is None else replace(launcher, network=True, limits=Limits())
        self.folder = folder

    def make_folder(self) -> None:
        self.folder.mkdir(mode=0o755)
        uid, gid = self._owner()
        if uid is not None and os.geteuid() == 0:
            os.chown(self.folder, uid, gid if gid is not None else -1)

    def take_back(self) -> None:
        """The environment becomes the agent's, writable by nobody else: runs of other packages use it."""
        if self._owner()[0] is None or os.geteuid() != 0:
            return
        for path in [self.folder, *self.folder.rglob("*")]:
            os.lchown(path, os.geteuid(), os.getegid())
            if not path.is_symlink():
                os.chmod(path, stat.S_IMODE(path.lstat().st_mode) & ~0o022)

    def _owner(self) -> tuple[int | None, int | None]:
        return (self.launcher.uid, self.launcher.gid) if self.launcher is not None else (None, None)

    async def start(self, argv: list[str], *, output: bool) -> asyncio.subprocess.Process:
        launcher = self.launcher
        command = argv
        uid = gid = None
        if launcher is not None:
            command = launcher.command(argv, cwd=self.folder, writable=[self.folder])
            uid, gid = launcher.spawn_user()
        sink = asyncio.subprocess.PIPE if output else asyncio.subprocess.DEVNULL
        return await asyncio.create_subprocess_exec(
            *command,
            cwd=self.folder,  # the environment itself: no file of the package is in reach
            env=_pip_environment(self.folder if launcher is not None else None),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT if output else asyncio.subprocess.DEVNULL,
            start_new_session=True,  # so its build subprocesses are killed with it
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )


async def _create_from(
    base: str, temporary: Path, lines: list[str], outer: list[str], builder: _Spawner
) -> None:
    """The environment made by the run interpreter itself (`base -m venv`), so that it runs wherever
    that interpreter runs (as the run user, in the sandbox), whatever Python the agent has."""
    argv = [base, "-I", "-m", "venv", "--system-site-packages", "--symlinks", "--without-pip", str(temporary)]
    process = await builder.start(argv, output=True)
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise EnvironmentBuildFailed(
            f"{base} -m venv failed (exit code {process.returncode})", detail=_tail(output)
        )
    await asyncio.to_thread(_add_outer, temporary, outer)
    python = str(temporary / "bin" / "python")
    # Without a pip of the machine's Python's own, ensurepip brings one into the environment.
    has_pip = await (await builder.start([python, "-c", "import pip"], output=False)).wait() == 0
    if not has_pip:
        ensured = await builder.start([python, "-m", "ensurepip", "--default-pip"], output=False)
        if await ensured.wait() != 0:
            raise EnvironmentBuildFailed(f"{base} has no pip, and ensurepip could not install one")
    (temporary / REQUIREMENTS).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _add_outer(environment: Path, outer: list[str]) -> None:
    if not outer:
        return
    found = sorted(environment.glob("lib/python*/site-packages"))
    if not found:
        raise EnvironmentBuildFailed(f"the new environment {environment} has no site-packages")
    lines = "".join(f"import site; site.addsitedir({folder!r})\n" for folder in outer)
    (found[0] / "_trainyard_outer_site.pth").write_text(lines, encoding="utf-8")


# What a build passes on from the agent's environment: pip's own settings and the way out.
_PASSED_ON = ("PIP_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "SSL_CERT_", "REQUESTS_CA_BUNDLE")


def _pip_environment(home: Path | None = None) -> dict[str, str]:
    # The agent's own variables (its token above all, any cloud credential it holds) never reach pip
    # or a package's build scripts: only pip's settings, the proxies and the certificates do.
    environment = {name: value for name, value in os.environ.items() if name.upper().startswith(_PASSED_ON)}
    environment.update(
        PATH=os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin"]),
        LANG="C.UTF-8",
        HOME=str(home) if home is not None else os.environ.get("HOME", "/"),
        PIP_NO_INPUT="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PYTHONNOUSERSITE="1",
    )
    if home is not None:
        environment["PIP_NO_CACHE_DIR"] = "1"  # not into the environment's own folder
    return environment


async def _pip_install(environment: Path, builder: _Spawner | None = None) -> None:
    """`pip install -r` in `environment`, its output kept (bounded) for the error."""
    command = [str(environment / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off"]
    builder = builder or _Spawner(None, environment)
    process = await builder.start([*command, "--no-warn-script-location", "-r", REQUIREMENTS], output=True)
    output = bytearray()
    try:
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):
            output += chunk
            del output[:-OUTPUT_KEPT_BYTES]
        code = await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.shield(process.wait())
        raise
    if code != 0:
        raise EnvironmentBuildFailed(
            f"pip install -r requirements.txt failed (exit code {code})", detail=_tail(bytes(output))
        )


def _tail(output: bytes) -> str:
    text = output.decode("utf-8", errors="replace").strip()
    if len(text) > DETAIL_MAX_CHARS:
        text = text[-DETAIL_MAX_CHARS:].partition("\n")[2]
    return text or "pip printed nothing"


def _finish(temporary: Path, final: Path, key: str, base: str, outer: list[str]) -> None:
    """Point scripts at the final name, write the marker, rename into place."""
    old, new = str(temporary).encode(), str(final).encode()
    for path in [temporary / "pyvenv.cfg", *(temporary / "bin").iterdir()]:
        # Console scripts and activate files name the folder they were made in.
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1024 * 1024:
            continue
        content = path.read_bytes()
        if old in content and b"\0" not in content:
            path.write_bytes(content.replace(old, new))
    record = {
        "requirements_sha256": key,
        "base_executable": base,
        "outer_site_packages": outer,
        "built_at": time.time(),
    }
    (temporary / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.rename(temporary, final)


def _last_used(environment: Path) -> float:
    for name in (LAST_USED, MARKER):
        with contextlib.suppress(OSError):
            return (environment / name).stat().st_mtime
    return 0.0


def prune(work_dir: Path, keep: Iterable[str] = (), *, older_than: float | None = None) -> list[str]:
    """Remove the environments whose key (`requirements_hash`) is not in `keep`; with `older_than`
    (seconds), only those not used for that long. Returns the keys removed.

    Blocking (call it in a thread). Pass the keys of every run in hand: an environment being built or
    looked up at that moment is skipped (its lock is held), but nothing else tracks which runs use
    which environment. Leftovers of interrupted builds are removed too.
    """
    envs = Path(work_dir) / "envs"
    if not envs.is_dir():
        return []
    kept, now, removed = set(keep), time.time(), []
    for entry in sorted(envs.iterdir()):
        temporary = entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX)
        key = entry.name[1:65] if temporary else entry.name
        if not _KEY.fullmatch(key):
            continue
        recent = older_than is not None and now - _last_used(entry) < older_than
        if not temporary and (key in kept or recent):
            continue
        lock = _lock_path(envs, key)
        fd = _try_lock(lock)
        if fd is None:
            continue  # being built or used right now
        try:
            if temporary:
                _remove(entry)
                continue
            aside = envs / f".{key}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
            os.rename(entry, aside)  # gone at once for any reader; deleted after
            _remove(aside)
            lock.unlink(missing_ok=True)
            removed.append(key)
        finally:
            os.close(fd)
    return removed
