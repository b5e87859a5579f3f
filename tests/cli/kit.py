"""The `trainyard` command as a person or a script runs it: a real process, its own config folder, a
clean environment (no TRAINYARD_* of the caller's, no colour), and a real API to talk to."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.api.test_cli import Server, migrate, serving
from tests.conftest import ADMIN_TOKEN, POSTGRES_URL, SECRET_KEY

_SCRIPT = Path(sys.executable).with_name("trainyard")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cli.main"]
COMMAND_TIMEOUT = 180.0  # a bound on waiting for the process, never a speed check
_DROPPED = ("TRAINYARD_", "FORCE_COLOR", "NO_COLOR", "TTY_", "COLUMNS", "XDG_CONFIG_HOME")


@dataclass
class Cli:
    """Runs `trainyard` with `home` as its config folder's parent and the given environment."""

    home: Path
    env: dict[str, str]

    def __call__(
        self, *args: str, stdin: str | None = None, timeout: float = COMMAND_TIMEOUT, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMMAND, *args],
            input=stdin if stdin is not None else "",
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @property
    def config_file(self) -> Path:
        return self.home / "config" / "trainyard" / "config.json"


def cli_for(home: Path) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED)}
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["HOME"] = str(home)
    return Cli(home, env)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


@contextmanager
def api_server(root: Path, database: str) -> Iterator[Server]:
    """`trainyard-api` migrated and serving on `database` (`sqlite`, or a fresh PostgreSQL database)."""
    settings = {"bootstrap_token": ADMIN_TOKEN}
    name = None
    if database == "postgresql":
        name = f"trainyard_cli_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        settings |= {"database_url": f"{POSTGRES_URL.rpartition('/')[0]}/{name}", "secret_key": SECRET_KEY}
    try:
        migrate(root, **settings)
        with serving(root, **settings) as server:
            yield server
    finally:
        if name is not None:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
