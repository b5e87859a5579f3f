"""Direct uploads in parts (docs/storage.md, "Presigned URLs"): past `direct_upload_part_bytes` (5 MiB
here, S3's floor), the API opens a multipart upload on the run's incoming key and hands out a presigned
PUT per part; the agent reports the parts' ETags and the API completes the upload, then checks and
keeps the object as it does a single PUT. What the agent gets wrong is refused and leaves nothing under
`incoming/`, no object and no open upload.

S3 is a real SeaweedFS (tests/s3.py) that checks every signature; the test plays the agent: the real
app in process, the presigned requests through a plain client that holds no token.
"""

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from api.agent_routes.direct import MAX_UPLOAD_PARTS, part_size, parts_lifetime
from api.core.config import Settings
from api.core.s3blobs import MAX_URL_LIFETIME, S3BlobStore
from api.core.s3multipart import PendingUpload
from api.core.sigv4 import Credentials, Presigner
from tests.api.packages_kit import valid_package, zip_bytes
from tests.api.test_direct_blobs import DIRECT, by_reference, prefix_of, running, sha
from tests.api.world import agent_client, make_world, ok, problem
from tests.conftest import settings_for
from tests.s3 import S3Server, keys_under, on_s3, s3, s3_server

__all__ = ["s3", "s3_server"]  # fixtures of tests/s3.py: its client and the session's SeaweedFS

MIB = 1024**2
PART = 5 * MIB


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """conftest's settings on SeaweedFS, parts of 5 MiB."""
    return settings_for(
        database_url,
        tmp_path,
        direct_upload_part_bytes=PART,
        s3_redirect_downloads=False,  # people's downloads streamed: the test reads them back here
        **on_s3(request.getfixturevalue("s3_server"), monkeypatch),
    )


def store_of(app: FastAPI) -> S3BlobStore:
    store = app.state.blobs
    assert isinstance(store, S3BlobStore)
    return store


async def pending(store: S3BlobStore) -> list[PendingUpload]:
    multipart = store.multipart()
    assert multipart is not None
    return [upload async for page in multipart.pending(store.whole_key("incoming/")) for upload in page]


async def nothing_incoming(store: S3BlobStore, server: S3Server, settings: Settings) -> None:
    assert keys_under(server, f"{prefix_of(settings)}/incoming") == []
    assert await pending(store) == []


async def ticket_for(agent: AsyncClient, run_id: str, content: bytes) -> dict[str, Any]:
    asked = {"sha256": sha(content), "size": len(content)}
    ticket: dict[str, Any] = ok(await agent.post(f"/runs/{run_id}/outputs/uploads", json=asked))
    assert ticket["stored"] is False and ticket["url"] is None and ticket["upload_id"], ticket
    return ticket


async def put_parts(s3: httpx.AsyncClient, ticket: dict[str, Any], content: bytes) -> list[str]:
    """Each part to its URL, as the agent does; the ETags S3 answered, in order."""
    size = ticket["part_bytes"]
    etags = []
    for number, url in enumerate(ticket["parts"]):
        sent = await s3.put(url, content=content[number * size : (number + 1) * size])
        assert sent.status_code == 200, sent.text
        etags.append(sent.headers["etag"])
    return etags


def report(content: bytes, upload_id: str, etags: list[str]) -> dict[str, Any]:
    return {"sha256": sha(content), "size": len(content), "upload_id": upload_id, "etags": etags}


@pytest.mark.parametrize("copy_part_bytes", [None, PART], ids=["copy", "copy-in-parts"])
async def test_an_output_goes_up_in_parts_and_is_kept_once_checked(
    client: AsyncClient,
    app: FastAPI,
    settings: Settings,
    s3_server: S3Server,
    s3: httpx.AsyncClient,
    copy_part_bytes: int | None,
) -> None:
    store = store_of(app)
    if copy_part_bytes is not None:
        store.copy_part_bytes = copy_part_bytes  # the >5 GiB path (UploadPartCopy), on 12 MiB
    world = await make_world(client)
    weights = os.urandom(12 * MIB)
    trained = zip_bytes({**valid_package(parameters=None), "model.txt": "weights"})
    async with agent_client(app, world.agent_token) as agent:
        run_id = await running(client, agent, world, DIRECT)
        ticket = await ticket_for(agent, run_id, weights)
        assert ticket["part_bytes"] == PART and len(ticket["parts"]) == 3
        assert ticket["expires_in"] >= 15 * 60
        etags = await put_parts(s3, ticket, weights)
        # Sent, not completed: an open upload on the run's own incoming key, no object anywhere yet.
        assert [u.key for u in await pending(store)] == [
            store.whole_key(S3BlobStore.incoming_key(run_id, sha(weights)))
        ]
        route = f"/runs/{run_id}/outputs/artifacts/weights.bin"
        artifact = ok(await agent.put(route, json=report(weights, ticket["upload_id"], etags)))
        assert (artifact["sha256"], artifact["size"]) == (sha(weights), len(weights))
        # A small output still goes up in one PUT.
        assert ok(
            await agent.post(
                f"/runs/{run_id}/outputs/uploads", json={"sha256": sha(trained), "size": len(trained)}
            )
        )["url"]
    await nothing_incoming(store, s3_server, settings)
    got = await client.get(f"/projects/{world.project}/runs/{run_id}/artifacts/weights.bin")
    assert got.status_code == 200 and sha(got.content) == sha(weights)
    # S3's ETag of a completed upload is the MD5 of its parts' MD5s: a CopyObject keeps the upload's,
    # a copy in parts has one of its own.
    uploaded = hashlib.md5(b"".join(bytes.fromhex(e.strip('"')) for e in etags)).hexdigest() + "-3"
    meta = obstore.head(store.store, S3BlobStore.key_of(sha(weights)))
    assert (str(meta["e_tag"]).strip('"') == uploaded) == (copy_part_bytes is None), meta


async def test_a_package_in_parts_is_checked_as_a_file(
    client: AsyncClient, app: FastAPI, settings: Settings, s3_server: S3Server, s3: httpx.AsyncClient
) -> None:
    store = store_of(app)
    store.copy_part_bytes = PART
    world = await make_world(client)
    trained = zip_bytes({**valid_package(parameters=None), "model.bin": os.urandom(11 * MIB)})
    async with agent_client(app, world.agent_token) as agent:
        run_id = await running(client, agent, world, DIRECT)
        ticket = await ticket_for(agent, run_id, trained)
        etags = await put_parts(s3, ticket, trained)
        body = report(trained, ticket["upload_id"], etags)
        package = ok(await agent.put(f"/runs/{run_id}/outputs/package", json=body))
        assert package["sha256"] == sha(trained)
    await nothing_incoming(store, s3_server, settings)
    kept = b"".join([chunk async for chunk in await store.open(sha(trained))])  # verified as read
    assert kept == trained


async def test_parts_gone_wrong_are_refused_and_leave_nothing(
    client: AsyncClient, app: FastAPI, settings: Settings, s3_server: S3Server, s3: httpx.AsyncClient
) -> None:
    store = store_of(app)
    world = await make_world(client)
    weights = os.urandom(12 * MIB)
    async with agent_client(app, world.agent_token) as agent:
        run_id = await running(client, agent, world, DIRECT)
        route = f"/runs/{run_id}/outputs/artifacts/weights.bin"

        # ETags that are not the parts'.
        ticket = await ticket_for(agent, run_id, weights)
        etags = await put_parts(s3, ticket, weights)
        wrong = [etags[0], '"0123456789abcdef0123456789abcdef"', etags[2]]
        problem(
            await agent.put(route, json=report(weights, ticket["upload_id"], wrong)),
            422,
            "upload_parts_invalid",
        )
        await nothing_incoming(store, s3_server, settings)

        # An upload id of no upload (the real one is aborted all the same).
        ticket = await ticket_for(agent, run_id, weights)
        etags = await put_parts(s3, ticket, weights)
        forged = report(weights, ticket["upload_id"] + "x", etags)
        problem(await agent.put(route, json=forged), 409, "upload_missing")
        await nothing_incoming(store, s3_server, settings)

        # A part never sent, reported with an ETag of its own making.
        ticket = await ticket_for(agent, run_id, weights)
        etags = await put_parts(s3, {**ticket, "parts": ticket["parts"][:2]}, weights)
        made_up = [*etags, '"0123456789abcdef0123456789abcdef"']
        problem(
            await agent.put(route, json=report(weights, ticket["upload_id"], made_up)),
            422,
            "upload_parts_invalid",
        )
        await nothing_incoming(store, s3_server, settings)

        # The first parts only, reported as all: S3 completes a shorter object, refused by its size.
        ticket = await ticket_for(agent, run_id, weights)
        etags = await put_parts(s3, ticket, weights)
        problem(
            await agent.put(route, json=report(weights, ticket["upload_id"], etags[:2])),
            422,
            "upload_mismatch",
        )
        await nothing_incoming(store, s3_server, settings)

        # Other bytes of the same size: refused by their hash, no blob under the hash claimed.
        ticket = await ticket_for(agent, run_id, weights)
        etags = await put_parts(s3, ticket, os.urandom(len(weights)))
        problem(
            await agent.put(route, json=report(weights, ticket["upload_id"], etags)), 422, "upload_corrupt"
        )
        await nothing_incoming(store, s3_server, settings)
        assert not await store.exists(sha(weights))

        # An upload id without ETags (or the reverse) is no reference.
        half = {"sha256": sha(weights), "size": len(weights), "upload_id": "u"}
        problem(await agent.put(route, json=half), 422, "invalid_reference")
    assert ok(await client.get(f"/projects/{world.project}/runs/{run_id}/artifacts")) == []


async def test_content_stored_meanwhile_aborts_the_parts(
    client: AsyncClient, app: FastAPI, settings: Settings, s3_server: S3Server, s3: httpx.AsyncClient
) -> None:
    store = store_of(app)
    world = await make_world(client)
    weights = os.urandom(6 * MIB)
    async with agent_client(app, world.agent_token) as agent:
        run_id = await running(client, agent, world, DIRECT)
        ticket = await ticket_for(agent, run_id, weights)
        etags = await put_parts(s3, ticket, weights)
        ok(await agent.put(f"/runs/{run_id}/outputs/artifacts/through-the-api.bin", content=weights))
        body = report(weights, ticket["upload_id"], etags)
        ok(await agent.put(f"/runs/{run_id}/outputs/artifacts/by-reference.bin", json=body))
    await nothing_incoming(store, s3_server, settings)


async def test_without_static_credentials_an_upload_is_one_put(
    client: AsyncClient, app: FastAPI, settings: Settings
) -> None:
    store_of(app).presigner = None  # an instance role: nothing of our own to sign parts with
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run_id = await running(client, agent, world, DIRECT)
        asked = {"sha256": "0" * 64, "size": 12 * MIB}
        ticket = ok(await agent.post(f"/runs/{run_id}/outputs/uploads", json=asked))
        assert ticket["url"] and ticket["parts"] is None and ticket["upload_id"] is None
        body = {**asked, "upload_id": "u", "etags": ['"e"']}
        problem(await by_reference(agent, f"/runs/{run_id}/outputs/artifacts/x", b"x"), 409, "upload_missing")
        problem(await agent.put(f"/runs/{run_id}/outputs/artifacts/x", json=body), 409, "upload_missing")


def test_parts_stay_at_most_a_thousand_and_their_urls_outlive_a_slow_upload() -> None:
    assert part_size(12 * MIB, PART) == PART
    big = 80 * 1024**3
    grown = part_size(big, 64 * MIB)
    assert grown % MIB == 0 and -(-big // grown) <= MAX_UPLOAD_PARTS and grown > 64 * MIB
    assert parts_lifetime(12 * MIB).total_seconds() >= 15 * 60
    assert parts_lifetime(big).total_seconds() >= big / (2 * MIB)
    assert parts_lifetime(5 * 1024**4) == MAX_URL_LIFETIME


async def test_what_s3_refuses_the_api_is_503_and_records_nothing(
    client: AsyncClient, app: FastAPI, settings: Settings, s3: httpx.AsyncClient
) -> None:
    store = store_of(app)
    signer = store.presigner
    assert signer is not None
    world = await make_world(client)
    weights = os.urandom(6 * MIB)
    async with agent_client(app, world.agent_token) as agent:
        run_id = await running(client, agent, world, DIRECT)
        ticket = await ticket_for(agent, run_id, weights)
        etags = await put_parts(s3, ticket, weights)
        # Credentials S3 refuses (rotated under the API, say): the store's trouble, never a 500.
        store.presigner = Presigner(signer.endpoint, signer.bucket, signer.region, Credentials("no", "no"))
        asked = {"sha256": sha(weights), "size": len(weights)}
        refused = await agent.post(f"/runs/{run_id}/outputs/uploads", json=asked)
        problem(refused, 503, "blob_store_unavailable")
        route = f"/runs/{run_id}/outputs/artifacts/weights.bin"
        body = report(weights, ticket["upload_id"], etags)
        problem(await agent.put(route, json=body), 503, "blob_store_unavailable")
        # The signer back: the same report completes the upload that is still open.
        store.presigner = signer
        ok(await agent.put(route, json=body))
    listed = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/artifacts"))
    assert [a["path"] for a in listed] == ["weights.bin"]
