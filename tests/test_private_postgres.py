"""The suite's own PostgreSQL (tests/private_postgres.py): started where no server answers, removed after.

The second test is the README's situation word for word: pytest with TRAINYARD_TEST_POSTGRES_URL unset
on a machine where nothing answers at the default address. A network namespace of its own (root only)
gives it that machine: its loopback has no server on port 5432, whatever this one runs.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import DEFAULT_POSTGRES_URL
from tests.private_postgres import PrivatePostgres, _free_port, answers

# A bound on waiting for a process, never an assertion about speed.
PYTEST_TIMEOUT = 300
HEALTH_TEST = "tests/api/test_health.py::test_healthz_answers_without_a_token"
REPOSITORY = Path(__file__).resolve().parent.parent


def test_a_private_server_serves_and_leaves_nothing_behind() -> None:
    assert not answers(f"postgresql://postgres@127.0.0.1:{_free_port()}/test")
    server = PrivatePostgres.start()
    try:
        assert answers(server.url)
        with psycopg.connect(server.url, autocommit=True) as admin:
            admin.execute('CREATE DATABASE "scratch"')
        with psycopg.connect(server.url.rpartition("/")[0] + "/scratch") as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (
                "postgres",
                "scratch",
            )
            conn.execute("CREATE TABLE t (name text)")
            conn.execute("INSERT INTO t VALUES ('ж')")
            assert conn.execute("SELECT name FROM t").fetchone() == ("ж",)
    finally:
        server.stop()
    assert server.process.returncode is not None
    assert not server.root.exists()
    assert not answers(server.url)


def _isolated_network() -> list[str]:
    """A command prefix that runs in a network namespace of its own with its loopback up."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if os.geteuid() != 0 or unshare is None or ip is None:
        pytest.skip("a network namespace needs root, unshare (util-linux) and ip (iproute2)")
    prefix = [unshare, "--net", "sh", "-c", f'"{ip}" link set lo up && exec "$@"', "isolated"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no network namespace here: {probe.stderr.strip()}")
    return prefix


def test_the_suite_brings_its_own_postgres_where_none_answers() -> None:
    prefix = _isolated_network()
    # Nothing of this session's: its settings, nor pytest-xdist's worker variables.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINYARD_", "PYTEST_"))}
    env["TRAINYARD_TEST_DATABASES"] = "postgresql"
    check = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-c",
            f"from tests.private_postgres import answers; print(answers({DEFAULT_POSTGRES_URL!r}))",
        ],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.stdout.strip() == "False", check.stderr  # nothing answers at the default address there

    result = subprocess.run(
        [*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--reruns=0", HEALTH_TEST],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=PYTEST_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "test_healthz_answers_without_a_token[postgresql] PASSED" in output, output
    assert re.search(r"\b1 passed\b", output), output
    header = re.search(r"postgresql: a private server at (\S+) in (\S+)", output)
    assert header is not None, output
    assert not Path(header.group(2)).exists(), "the private server's folder was left behind"
