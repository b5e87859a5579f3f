"""The agent's client on an S3-backed API (docs/storage.md, "Presigned URLs"): the real app in
process, a real SeaweedFS. Fetches follow the API's 307 to S3 and are checked by sha256; outputs go to
the presigned URL the API hands out and are reported by reference."""

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import obstore
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from agent.client import ApiClient, ChecksumMismatch
from api.core.s3blobs import S3BlobStore
from shared.protocol import Hello, LaunchedEvent
from tests.agent.test_client import agent_settings, names
from tests.api.packages_kit import valid_package, zip_bytes
from tests.api.test_direct_blobs import settings
from tests.api.world import BASE_PACKAGE_ZIP, World, make_world, start_run
from tests.s3 import S3Server, keys_under, s3_server

# The session's SeaweedFS (tests/s3.py), and settings on it: conftest's `app` and `client` serve from S3.
__all__ = ["s3_server", "settings"]

SHA = hashlib.sha256(BASE_PACKAGE_ZIP).hexdigest()


class Recording(httpx.AsyncBaseTransport):
    """The app in process, recording each request the API answered with its status."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = ASGITransport(app=app)
        self.answered: list[tuple[httpx.Request, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.answered.append((request, response.status_code))
        return response


@pytest.fixture
async def running(
    client: AsyncClient, app: FastAPI, tmp_path: Path
) -> AsyncIterator[tuple[ApiClient, Recording, uuid.UUID]]:
    """An agent client (direct_blobs on, as by default) that said hello, and a run it launched."""
    world: World = await make_world(client)
    transport = Recording(app)
    async with ApiClient(agent_settings(world.agent_token, tmp_path), transport=transport) as api:
        await api.hello(Hello(agent_version="0.9.0"))
        run_id = uuid.UUID((await start_run(client, world))["id"])
        await api.ack((await api.poll(wait=0))[0].id)
        await api.report(run_id, LaunchedEvent(type="launched"))
        yield api, transport, run_id


async def test_fetches_follow_the_redirect_and_are_checked(
    running: tuple[ApiClient, Recording, uuid.UUID], app: FastAPI, s3_server: S3Server, tmp_path: Path
) -> None:
    api, transport, run_id = running
    folder = tmp_path / "downloads"
    folder.mkdir()
    assert await api.download_package(run_id, folder / "package.zip", SHA) == SHA
    assert (folder / "package.zip").read_bytes() == BASE_PACKAGE_ZIP
    # The API answered a redirect, not the bytes: the client followed it to S3 on its own.
    request, status = transport.answered[-1]
    assert request.url.path.endswith(f"/runs/{run_id}/package") and status == 307

    # Content changed behind the store's back is refused as before: nothing is kept.
    store = app.state.blobs
    assert isinstance(store, S3BlobStore)
    prefix = store.store.prefix
    assert prefix is not None
    obstore.put(s3_server.client(prefix), S3BlobStore.key_of(SHA), b"not the package")
    with pytest.raises(ChecksumMismatch):
        await api.download_package(run_id, folder / "again.zip", SHA)
    assert names(folder) == ["package.zip"]


async def test_outputs_go_to_s3_and_are_reported_by_reference(
    running: tuple[ApiClient, Recording, uuid.UUID], app: FastAPI, s3_server: S3Server, tmp_path: Path
) -> None:
    api, transport, run_id = running
    trained = tmp_path / "trained.zip"
    trained.write_bytes(zip_bytes({**valid_package(parameters=None), "model.txt": "weights"}))
    sent = await api.upload_package(run_id, trained)
    assert sent.sha256 == hashlib.sha256(trained.read_bytes()).hexdigest()
    artifact = tmp_path / "curve.csv"
    artifact.write_bytes(b"epoch,loss\n1,0.5\n")
    await api.upload_artifact(run_id, "curve.csv", artifact)
    bodies = [r for r, _ in transport.answered if r.method == "PUT"]
    # Two reports, each a small JSON reference: the files themselves went to S3.
    assert [r.headers["content-type"] for r in bodies] == ["application/json"] * 2
    assert all(int(r.headers["content-length"]) < 200 for r in bodies)
    prefix = app.state.blobs.store.prefix
    stored = keys_under(s3_server, prefix)
    assert S3BlobStore.key_of(sent.sha256 or "") in stored and not any(
        k.startswith("incoming/") for k in stored
    )
    # Sent again: the content is there, so only the reference travels.
    before = len(transport.answered)
    await api.upload_artifact(run_id, "curve-again.csv", artifact)
    assert [(r.method, status) for r, status in transport.answered[before:]] == [("POST", 200), ("PUT", 200)]
