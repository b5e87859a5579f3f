"""Presigned URLs (docs/storage.md): an agent that says `direct_blobs` fetches its inputs from S3 and
sends its outputs there, past the API, which checks every object before it refers to it. On a local
store, and for an agent that does not say it, every byte goes through the API as before.

S3 is a real SeaweedFS (tests/s3.py); the agent is driven through the real app in process, its
presigned requests through a plain client that holds no token.
"""

import asyncio
import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from api.core.config import Settings
from api.core.s3blobs import S3BlobStore
from tests.api.packages_kit import valid_package, zip_bytes
from tests.api.world import (
    BASE_PACKAGE_ZIP,
    World,
    agent_client,
    make_world,
    ok,
    problem,
    report,
    start_run,
    take_commands,
)
from tests.conftest import settings_for
from tests.s3 import S3Server, keys_under, on_s3, s3, s3_server

__all__ = ["s3", "s3_server"]  # fixtures of tests/s3.py: its client and the session's SeaweedFS

DIRECT = {"agent_version": "0.9.0", "capabilities": ["direct_blobs"]}
OLD = {"agent_version": "0.8.0"}  # an agent of before: says nothing of the kind


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """conftest's settings on S3 (the default here) or on the local folder (`indirect` "local")."""
    store: dict[str, Any] = {}
    if getattr(request, "param", "s3") == "s3":
        store = on_s3(request.getfixturevalue("s3_server"), monkeypatch)
    return settings_for(database_url, tmp_path, **store)


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def prefix_of(settings: Settings) -> str:
    assert settings.s3_bucket_and_prefix is not None
    return settings.s3_bucket_and_prefix[1]


async def running(client: AsyncClient, agent: AsyncClient, world: World, hello: dict[str, Any]) -> str:
    """The world's process started and launched by an agent that said `hello`; the run's id."""
    ok(await agent.post("/hello", json=hello))
    run = await start_run(client, world)
    await take_commands(agent, "start_run")
    await report(agent, run["id"], "launched")
    return str(run["id"])


async def direct_put(
    agent: AsyncClient, s3: httpx.AsyncClient, run_id: str, content: bytes
) -> dict[str, Any]:
    """Ask for an upload of `content` and send it to the URL given; the ticket."""
    ticket: dict[str, Any] = ok(
        await agent.post(
            f"/runs/{run_id}/outputs/uploads", json={"sha256": sha(content), "size": len(content)}
        )
    )
    assert ticket["stored"] is False and ticket["url"], ticket
    sent = await s3.put(ticket["url"], content=content)
    assert sent.status_code == 200, sent.text
    return ticket


async def by_reference(agent: AsyncClient, route: str, content: bytes) -> httpx.Response:
    return await agent.put(route, json={"sha256": sha(content), "size": len(content)})


# -- fetches --------------------------------------------------------------------------------------------


async def test_an_agent_that_follows_redirects_fetches_from_s3(
    client: AsyncClient, app: FastAPI, settings: Settings, s3: httpx.AsyncClient
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run_id = await running(client, agent, world, DIRECT)
        machine = ok(await client.get(f"/machines/{world.machine}"))
        package = ok(await client.get(f"/projects/{world.project}/packages/pkg/versions/1.0"))
        for route in (f"/runs/{run_id}/package", f"/runs/{run_id}/blobs/{package['sha256']}"):
            answer = await agent.get(route)
            assert answer.status_code == 307, answer.text
            assert answer.headers["etag"] == f'"{package["sha256"]}"' and answer.content == b""
            url = answer.headers["location"]
            assert (
                url.startswith(settings.s3_endpoint_url or "")
                and S3BlobStore.key_of(package["sha256"]) in url
            )
            fetched = await s3.get(url)
            assert fetched.status_code == 200 and sha(fetched.content) == package["sha256"]
            # What the agent holds already is not fetched at all.
            held = await agent.get(route, headers={"If-None-Match": answer.headers["etag"]})
            assert held.status_code == 304
        # Still limited to the run's own inputs: no URL for a blob that is not one of them.
        problem(await agent.get(f"/runs/{run_id}/blobs/{'0' * 64}"), 404, "blob_not_found")
    assert machine["agent_version"] == "0.9.0"


@pytest.mark.parametrize("settings", ["local", "s3"], indirect=True)
async def test_an_older_agent_and_a_local_store_are_served_by_the_api(
    client: AsyncClient, app: FastAPI, settings: Settings
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        # On a local store the capability changes nothing; on S3 an agent without it is streamed.
        run_id = await running(client, agent, world, DIRECT if settings.s3_bucket_and_prefix is None else OLD)
        answer = await agent.get(f"/runs/{run_id}/package")
        assert answer.status_code == 200 and answer.content == BASE_PACKAGE_ZIP
        if settings.s3_bucket_and_prefix is not None:
            # An agent that said it, then came back older (its hello says nothing): streamed again.
            ok(await agent.post("/hello", json={**DIRECT, "runs": [run_id]}))
            assert (await agent.get(f"/runs/{run_id}/package")).status_code == 307
            ok(await agent.post("/hello", json={**OLD, "runs": [run_id]}))
            assert (await agent.get(f"/runs/{run_id}/package")).status_code == 200


# -- outputs ----------------------------------------------------------------------------------------------


async def test_outputs_go_up_directly_and_are_kept_once_checked(
    client: AsyncClient, app: FastAPI, settings: Settings, s3_server: S3Server, s3: httpx.AsyncClient
) -> None:
    world = await make_world(client)
    trained = zip_bytes({**valid_package(parameters=None), "model.txt": "weights"})
    curve = b"epoch,loss\n1,0.5\n"
    async with agent_client(app, world.agent_token) as agent:
        run_id = await running(client, agent, world, DIRECT)
        await direct_put(agent, s3, run_id, trained)
        await direct_put(agent, s3, run_id, curve)
        # Sent, not yet reported: only under the run's own upload keys, never a blob's.
        uploads = keys_under(s3_server, f"{prefix_of(settings)}/incoming")
        assert uploads == sorted(f"{run_id}/{sha(c)}" for c in (trained, curve))

        package = ok(await by_reference(agent, f"/runs/{run_id}/outputs/package", trained))
        assert (package["sha256"], package["size"]) == (sha(trained), len(trained))
        artifact = ok(await by_reference(agent, f"/runs/{run_id}/outputs/artifacts/plots/curve.csv", curve))
        assert artifact["path"] == "plots/curve.csv"
        # Content already stored is not sent again.
        again = {"sha256": sha(curve), "size": len(curve)}
        stored = ok(await agent.post(f"/runs/{run_id}/outputs/uploads", json=again))
        assert stored["stored"] is True and stored["url"] is None and stored["parts"] is None
        ok(await by_reference(agent, f"/runs/{run_id}/outputs/artifacts/curve-again.csv", curve))
        await report(agent, run_id, "exited", exit_code=0)
        finished = ok(await agent.post(f"/runs/{run_id}/events", json={"type": "finished"}))
        assert finished["status"] == "succeeded"

    assert keys_under(s3_server, f"{prefix_of(settings)}/incoming") == []
    version = ok(await client.get(f"/projects/{world.project}/packages/pkg/versions/1.1"))
    assert version["sha256"] == sha(trained)
    # People's downloads answer 307 to a presigned GET (tests/api/test_download_redirects.py).
    download = await client.get(f"/projects/{world.project}/packages/pkg/versions/1.1/download")
    assert (await s3.get(download.headers["location"])).content == trained
    got = await client.get(f"/projects/{world.project}/runs/{run_id}/artifacts/plots/curve.csv")
    assert (await s3.get(got.headers["location"])).content == curve
    assert [path for path in (settings.data_dir / "blobs").rglob("*") if path.is_file()] == []


async def test_a_tampered_or_missing_upload_is_refused_and_deleted(
    client: AsyncClient, app: FastAPI, settings: Settings, s3_server: S3Server, s3: httpx.AsyncClient
) -> None:
    world = await make_world(client)
    honest, forged = b"the real weights", b"the fake weights"  # the same size
    async with agent_client(app, world.agent_token) as agent:
        run_id = await running(client, agent, world, DIRECT)
        route = f"/runs/{run_id}/outputs/artifacts/weights.bin"
        ticket = ok(
            await agent.post(
                f"/runs/{run_id}/outputs/uploads", json={"sha256": sha(honest), "size": len(honest)}
            )
        )
        assert (await s3.put(ticket["url"], content=forged)).status_code == 200
        problem(await by_reference(agent, route, honest), 422, "upload_corrupt")
        # Neither the upload nor a blob under the hash it claimed is left.
        left = keys_under(s3_server, prefix_of(settings))
        assert S3BlobStore.key_of(sha(honest)) not in left and not any(
            k.startswith("incoming/") for k in left
        )

        # A size other than the one announced: refused and deleted before anything is copied.
        ticket = ok(
            await agent.post(
                f"/runs/{run_id}/outputs/uploads", json={"sha256": sha(honest), "size": len(honest)}
            )
        )
        assert (await s3.put(ticket["url"], content=honest + b"!")).status_code == 200
        problem(await by_reference(agent, route, honest), 422, "upload_mismatch")
        # Nothing sent at all.
        problem(await by_reference(agent, route, honest), 409, "upload_missing")
        assert not any(k.startswith("incoming/") for k in keys_under(s3_server, prefix_of(settings)))
        # A package that is no package: checked after the hash, the stored blob removed again.
        not_a_zip = b"PK but not a zip"
        await direct_put(agent, s3, run_id, not_a_zip)
        assert (await by_reference(agent, f"/runs/{run_id}/outputs/package", not_a_zip)).status_code == 422
        assert S3BlobStore.key_of(sha(not_a_zip)) not in keys_under(s3_server, prefix_of(settings))
    artifacts = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/artifacts"))
    assert artifacts == []


async def test_an_upload_url_writes_one_key_and_expires(
    client: AsyncClient, app: FastAPI, s3: httpx.AsyncClient
) -> None:
    store = app.state.blobs
    assert isinstance(store, S3BlobStore)
    key = S3BlobStore.incoming_key("run", sha(b"one"))
    url = await store.upload_url(key, timedelta(minutes=5))
    elsewhere = url.replace(key, S3BlobStore.key_of(sha(b"one")))
    assert elsewhere != url
    assert (await s3.put(elsewhere, content=b"one")).status_code == 403  # a blob's own key: refused
    assert (await s3.get(url)).status_code == 403  # a PUT URL reads nothing
    short = await store.upload_url(key, timedelta(seconds=1))
    await asyncio.sleep(2.5)  # past the URL's life whatever the timing: only later can make it older
    assert (await s3.put(short, content=b"one")).status_code == 403
    with pytest.raises(ValueError):
        await store.upload_url(key, timedelta(days=8))


@pytest.mark.parametrize("settings", ["local"], indirect=True)
async def test_on_a_local_store_outputs_go_through_the_api(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    content = b"an artifact"
    async with agent_client(app, world.agent_token) as agent:
        run_id = await running(client, agent, world, DIRECT)
        asked = {"sha256": sha(content), "size": len(content)}
        assert ok(await agent.post(f"/runs/{run_id}/outputs/uploads", json=asked))["url"] is None
        route = f"/runs/{run_id}/outputs/artifacts/a.txt"
        problem(await by_reference(agent, route, content), 409, "upload_missing")
        ok(await agent.put(route, content=content))
        assert ok(await agent.post(f"/runs/{run_id}/outputs/uploads", json=asked))["stored"] is True
        ok(await by_reference(agent, f"/runs/{run_id}/outputs/artifacts/b.txt", content))
    listed = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/artifacts"))
    assert sorted(a["path"] for a in listed) == ["a.txt", "b.txt"]


async def test_bad_requests_change_nothing(client: AsyncClient, app: FastAPI, s3_server: S3Server) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run_id = await running(client, agent, world, DIRECT)
        uploads = f"/runs/{run_id}/outputs/uploads"
        problem(await agent.post(uploads, json={"sha256": "../x", "size": 1}), 422, "validation_error")
        problem(await agent.post(uploads, json={"sha256": "0" * 64, "size": 2**40}), 413, "upload_too_large")
        route = f"/runs/{run_id}/outputs/artifacts/x"
        for body in (b"{", b'{"sha256": "abc", "size": 1}', b'{"sha256": "' + b"0" * 64 + b'", "size": -1}'):
            answer = await agent.put(route, content=body, headers={"Content-Type": "application/json"})
            problem(answer, 422, "invalid_reference")
        long = await agent.put(route, content=b"{" * 5000, headers={"Content-Type": "application/json"})
        problem(long, 422, "invalid_reference")
        await report(agent, run_id, "exited", exit_code=0)
        await report(agent, run_id, "finished")
        problem(await agent.post(uploads, json={"sha256": "0" * 64, "size": 1}), 409, "run_not_receiving")
        other = await make_world(client, "-2")
    async with agent_client(app, other.agent_token) as stranger:
        problem(await stranger.post(uploads, json={"sha256": "0" * 64, "size": 1}), 404, "run_not_found")
