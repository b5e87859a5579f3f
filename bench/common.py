"""What the benchmarks share: a free loopback port and the installed `trainyard-api` command.

Each benchmark runs as `python bench/<name>.py`, so this folder is on its import path."""

import shutil
import socket
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def api_command() -> str:
    """`trainyard-api` beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("trainyard-api")
    found = str(beside) if beside.exists() else shutil.which("trainyard-api")
    if found is None:
        raise SystemExit("trainyard-api is not installed: pip install -e . in this venv")
    return found
