"""`trainyard packages download` and `trainyard runs artifact` as real processes against a real
`trainyard-api serve` on a real SeaweedFS: with redirects on, the API answers 307 and the command
follows to the bucket without its token; with them off, the API streams. Either way the file lands
whole, checked against its sha256. On SQLite only: the database plays no part in a download.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from cli.client import Api
from cli.download import save
from tests.api.packages_kit import valid_package, zip_bytes
from tests.api.test_cli import Server, serving, trainyard_api
from tests.cli.kit import Cli, cli_for, ok
from tests.conftest import ADMIN_TOKEN
from tests.s3 import S3Server, on_s3, s3_server

__all__ = ["s3_server"]  # the session's SeaweedFS, a fixture of tests/s3.py

PROJECT = "downloads"
PACKAGE = zip_bytes(valid_package(parameters=None))
CURVE = b"epoch,loss\n1,0.5\n"
ARTIFACT = 'plots/résumé "final".csv'
RUNS: dict[str, str] = {}  # each server's run, by its URL


@pytest.fixture(scope="module", params=["redirect", "streamed"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp(f"cli-downloads-{request.param}")
    with pytest.MonkeyPatch.context() as patch:
        settings = {
            "bootstrap_token": ADMIN_TOKEN,
            "s3_redirect_downloads": str(request.param == "redirect").lower(),
            **on_s3(s3_server, patch),
        }
        migrated = trainyard_api(root, "migrate", **settings)
        assert migrated.returncode == 0, migrated.stderr
        with serving(root, **settings) as running:
            _seed(running)
            yield running


def _seed(server: Server) -> None:
    """A package version, and a run of it with an artifact, through the public API (an agent's routes
    driven by hand, as tests/api/world.py drives them)."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=f"{server.base_url}/api/v1", headers=headers, timeout=30) as admin:

        def made(response: httpx.Response) -> Any:
            assert response.status_code in (200, 201), response.text
            return response.json()

        made(admin.post("/model-types", json={"name": "classifier"}))
        made(admin.post("/projects", json={"name": PROJECT}))
        files = {"file": ("package.zip", PACKAGE, "application/zip")}
        made(admin.post(f"/projects/{PROJECT}/packages/pkg/versions", files=files))
        template = {"name": "tpl", "model_type": "classifier", "base_package": "pkg", "parameters": {}}
        made(admin.post(f"/projects/{PROJECT}/templates", json=template))
        machine = made(admin.post("/machines", json={"name": "box", "address": "10.0.0.1"}))
        process = made(admin.post(f"/projects/{PROJECT}/templates/tpl/processes", json={"machine": "box"}))
        agent_headers = {"Authorization": f"Bearer {machine['agent_token']}"}
        with httpx.Client(
            base_url=f"{server.base_url}/api/v1/agent", headers=agent_headers, timeout=30
        ) as agent:
            made(agent.post("/hello", json={"agent_version": "0.9.0"}))
            started = made(admin.post(f"/projects/{PROJECT}/processes/{process['id']}/start"))
            run_id = started["latest_run"]["id"]
            for command in made(agent.get("/commands")):
                made(agent.post(f"/commands/{command['id']}/ack"))
            made(agent.post(f"/runs/{run_id}/events", json={"type": "launched"}))
            made(agent.put(f"/runs/{run_id}/outputs/artifacts/{quote(ARTIFACT)}", content=CURVE))
    RUNS[server.base_url] = str(run_id)


@pytest.fixture
def logged_in(tmp_path: Path, server: Server) -> Cli:
    cli = cli_for(tmp_path)
    ok(cli("login", server.base_url, "--token", "--project", PROJECT, stdin=ADMIN_TOKEN + "\n"))
    return cli


def test_a_package_version_is_saved_whole(logged_in: Cli, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    saved = logged_in("packages", "download", "pkg", "1.0", "-o", str(work))
    assert ok(saved).strip() == f"Saved {work / 'pkg-1.0.zip'} ({len(PACKAGE)} B)."
    assert "downloading pkg-1.0.zip" in saved.stderr and "100%" in saved.stderr, saved.stderr
    assert (work / "pkg-1.0.zip").read_bytes() == PACKAGE
    assert [p.name for p in work.iterdir()] == ["pkg-1.0.zip"]  # no scratch file left

    target = tmp_path / "named.zip"
    quiet = json.loads(ok(logged_in("packages", "download", "pkg", "1.0", "-o", str(target), "--json")))
    assert quiet == {"path": str(target), "sha256": hashlib.sha256(PACKAGE).hexdigest(), "size": len(PACKAGE)}
    assert target.read_bytes() == PACKAGE


def test_an_artifact_with_a_hostile_name_is_saved_under_its_own_name(
    logged_in: Cli, server: Server, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    ok(logged_in("runs", "artifact", RUNS[server.base_url], ARTIFACT, "-o", str(work)))
    assert (work / 'résumé "final".csv').read_bytes() == CURVE


def test_a_missing_version_is_one_error_line_and_no_file(logged_in: Cli, tmp_path: Path) -> None:
    missing = logged_in("packages", "download", "pkg", "9.0", "-o", str(tmp_path / "x.zip"))
    assert missing.returncode == 3, missing
    assert missing.stderr.startswith("error: ") and len(missing.stderr.splitlines()) == 1, missing.stderr
    assert not (tmp_path / "x.zip").exists()


def test_the_commands_client_sends_its_token_to_the_api_only(
    server: Server, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The command's own client (`cli.client.Api`), watched: on a redirect, httpx drops
    `Authorization` for the bucket's origin."""
    sent: list[httpx.Request] = []
    with Api(server.base_url, ADMIN_TOKEN) as api:
        api.http.event_hooks["request"].append(sent.append)
        save(api, f"/projects/{PROJECT}/packages/pkg/versions/1.0/download", tmp_path / "p.zip", quiet=True)
    assert (tmp_path / "p.zip").read_bytes() == PACKAGE
    api_host = urlsplit(server.base_url).netloc
    assert "authorization" in sent[0].headers and sent[0].url.netloc.decode() == api_host
    if "redirect" in request.node.callspec.id:
        assert len(sent) == 2 and sent[1].url.netloc.decode() != api_host
        assert "authorization" not in sent[1].headers
    else:
        assert len(sent) == 1
