"""Badcase images on an S3 store in Debian's Chromium, against a real `trainyard-api serve` on a real
SeaweedFS: the image route answers 307 to a presigned GET of the bucket, the page's
Content-Security-Policy lets that one origin's images in, and the <img> loads and decodes the PNG (an
`attachment` image shows all the same). The run is played by the test as its agent, as
tests/api/test_evaluation.py does in process."""

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.api.packages_kit import valid_package, zip_bytes
from tests.api.test_cli import Server, serving, trainyard_api
from tests.console.browser import SETTINGS, Watch, sign_in
from tests.console.kit import PASSWORD
from tests.e2e.harness import public_tempdir
from tests.s3 import S3Server, on_s3, s3_server

__all__ = ["s3_server"]  # the session's SeaweedFS, a fixture of tests/s3.py

PROJECT = "digits"
RUN_ID: dict[str, str] = {}


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=200).save(buffer, "PNG")
    return buffer.getvalue()


def ok(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201), (
        f"{response.request.url}: {response.status_code} {response.text}"
    )
    return response.json() if response.content else None


@pytest.fixture(scope="module")
def server(s3_server: S3Server) -> Iterator[Server]:
    root = public_tempdir("trainyard-console-s3-")
    with pytest.MonkeyPatch.context() as patch:
        settings = {**SETTINGS, **on_s3(s3_server, patch)}
        migrated = trainyard_api(root, "migrate", **settings)
        assert migrated.returncode == 0, migrated.stderr
        with serving(root, **settings) as running:
            RUN_ID[running.base_url] = _seed(running)
            yield running


def _seed(server: Server) -> str:
    """ann (an administrator), a dataset with a test image, and a run that evaluated it; the run's id."""
    admin = {"Authorization": f"Bearer {SETTINGS['bootstrap_token']}"}
    with httpx.Client(base_url=f"{server.base_url}/api/v1", headers=admin, timeout=30) as api:
        ok(api.post("/users", json={"name": "ann", "password": PASSWORD, "is_admin": True}))
        ok(api.post("/model-types", json={"name": "classifier"}))
        ok(api.post("/projects", json={"name": PROJECT}))
        package = zip_bytes(valid_package(parameters=None))
        files = {"file": ("pkg.zip", package, "application/zip")}
        ok(api.post(f"/projects/{PROJECT}/packages/pkg/versions", files=files))
        dataset = zip_bytes({"train/3/a.png": _png(), "test/3/b.png": _png()})
        files = {"file": ("digits.zip", dataset, "application/zip")}
        ok(api.post(f"/projects/{PROJECT}/datasets/digits/versions", files=files))
        template = {
            "name": "tpl",
            "model_type": "classifier",
            "base_package": "pkg",
            "pipeline_type": "full",
            "dataset": "digits",
            "dataset_path": "train",
            "test_dataset": "digits",
            "test_dataset_path": "test",
        }
        ok(api.post(f"/projects/{PROJECT}/templates", json=template))
        machine = ok(api.post("/machines", json={"name": "box", "address": "10.0.0.1"}))
        process = ok(api.post(f"/projects/{PROJECT}/templates/tpl/processes", json={"machine": "box"}))
        token = {"Authorization": f"Bearer {machine['agent_token']}"}
        with httpx.Client(base_url=f"{server.base_url}/api/v1/agent", headers=token, timeout=30) as agent:
            ok(agent.post("/hello", json={"agent_version": "0.9.0"}))
            run_id = ok(api.post(f"/projects/{PROJECT}/processes/{process['id']}/start"))["latest_run"]["id"]
            for command in ok(agent.get("/commands")):
                ok(agent.post(f"/commands/{command['id']}/ack"))
            ok(agent.post(f"/runs/{run_id}/events", json={"type": "launched"}))
            evaluation = {
                "accuracy": 0.0,
                "samples": 1,
                "confusion_matrix": {"labels": ["3", "8"], "matrix": [[0, 1], [0, 0]]},
                "badcases": [{"path": "3/b.png", "label": "3", "prediction": "8", "confidence": 0.9}],
            }
            ok(agent.put(f"/runs/{run_id}/outputs/evaluation", json=evaluation))
            ok(agent.post(f"/runs/{run_id}/events", json={"type": "exited", "exit_code": 0}))
            ok(agent.put(f"/runs/{run_id}/outputs/package", content=package))
            ok(agent.post(f"/runs/{run_id}/events", json={"type": "finished"}))
    return str(run_id)


def test_a_badcase_image_loads_from_s3_within_the_pages_policy(
    page: Page, server: Server, s3_server: S3Server
) -> None:
    responses: list[tuple[str, int]] = []
    page.on("response", lambda response: responses.append((response.url, response.status)))
    watch = Watch(page)
    path = f"/ui/projects/{PROJECT}/runs/{RUN_ID[server.base_url]}/evaluation"
    page.goto(path)
    sign_in(page)
    expect(page).to_have_url(path)
    image = page.locator(".badcases img").first
    expect(image).to_be_visible()
    # decode() settles once the image has loaded: it rejects a broken one (a refused redirect, a CSP)
    assert image.evaluate("img => img.decode().then(() => img.naturalWidth)") == 8
    image_route = [status for url, status in responses if url.endswith("/files/test/3/b.png")]
    from_s3 = [status for url, status in responses if url.startswith(s3_server.endpoint.rstrip("/") + "/")]
    assert image_route == [307] and from_s3 == [200], responses
    assert watch.csp == [] and watch.dialogs == []
