"""The bootstrap token, an administrator's that never expires, is used before serving and is never in
the serving process's environment; the API and the agent are not dumpable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.runtime.runner import descendants
from tests.api.test_cli import http, serving, trainyard_api
from tests.api.world import ok
from tests.conftest import ADMIN_TOKEN, SECRET_KEY


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


async def test_the_serving_process_never_holds_the_bootstrap_token(tmp_path: Path) -> None:
    assert trainyard_api(tmp_path, "migrate").returncode == 0
    with serving(tmp_path, bootstrap_token=ADMIN_TOKEN) as server:
        environ = _environ(server.process.pid)
        assert b"TRAINYARD_DATA_DIR=" in environ  # the rest of its settings are there
        assert ADMIN_TOKEN.encode() not in environ and b"TRAINYARD_BOOTSTRAP_TOKEN" not in environ
        async with http(f"{server.base_url}/api/v1", ADMIN_TOKEN) as admin:
            me = ok(await admin.get("/auth/me"))  # the token works: it lives on as its HMAC
            assert '"admin"' in json.dumps(me)
    assert "created the administrator `admin`" in server.output()


@pytest.mark.postgres
async def test_no_worker_holds_it_either(tmp_path: Path, scratch_postgres: str) -> None:
    settings = {"database_url": scratch_postgres, "secret_key": SECRET_KEY}
    assert trainyard_api(tmp_path, "migrate", **settings).returncode == 0
    with serving(tmp_path, "--workers", "2", bootstrap_token=ADMIN_TOKEN, **settings) as server:
        workers = descendants(server.process.pid)
        assert workers
        for pid in [server.process.pid, *workers]:
            assert ADMIN_TOKEN.encode() not in _environ(pid)
        async with http(f"{server.base_url}/api/v1", ADMIN_TOKEN) as admin:
            ok(await admin.get("/auth/me"))


@pytest.mark.parametrize("module", ["api.access.bootstrap", "agent.cli"])
def test_the_programs_make_themselves_not_dumpable(module: str) -> None:
    code = (
        f"import ctypes, {module} as m; m.not_dumpable(); "
        "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"  # PR_GET_DUMPABLE
    )
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "0"
