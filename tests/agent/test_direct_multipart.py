"""The agent's client sends a large output in parts (docs/storage.md, "Presigned URLs"): the real app in
process with parts of 5 MiB, a real SeaweedFS; each part is read from the file as it goes, the ETags are
reported, and the API completes and checks the upload."""

import hashlib
import json
import os
import uuid
from pathlib import Path

import httpx
from fastapi import FastAPI

from agent.client import PART_ATTEMPTS, ApiClient
from api.core.s3blobs import S3BlobStore
from tests.agent.test_direct_blobs import Recording, running
from tests.api.test_direct_multipart import settings
from tests.s3 import S3Server, keys_under, s3_server

# The session's SeaweedFS (tests/s3.py), settings with parts of 5 MiB, an agent with a run it launched.
__all__ = ["running", "s3_server", "settings"]

MIB = 1024**2


async def test_a_large_output_goes_up_in_parts(
    running: tuple[ApiClient, Recording, uuid.UUID], app: FastAPI, s3_server: S3Server, tmp_path: Path
) -> None:
    api, transport, run_id = running
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(12 * MIB))
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    sent = await api.upload_artifact(run_id, "weights.bin", weights)
    assert sent.sha256 == sha256
    [put] = [r for r, _ in transport.answered if r.method == "PUT"]
    reported = json.loads(put.content)
    assert reported["sha256"] == sha256 and reported["upload_id"] and len(reported["etags"]) == 3
    store = app.state.blobs
    assert isinstance(store, S3BlobStore)
    stored = keys_under(s3_server, store.store.prefix)
    assert S3BlobStore.key_of(sha256) in stored and not any(k.startswith("incoming/") for k in stored)
    kept = b"".join([chunk async for chunk in await store.open(sha256)])  # verified as read
    assert kept == weights.read_bytes()
    # A small output still goes up in one PUT, and its report carries no multipart fields.
    small = tmp_path / "curve.csv"
    small.write_bytes(b"epoch,loss\n1,0.5\n")
    await api.upload_artifact(run_id, "curve.csv", small)
    last = [r for r, _ in transport.answered if r.method == "PUT"][-1]
    assert set(json.loads(last.content)) == {"sha256", "size"}


class FailingPart(httpx.AsyncBaseTransport):
    """The blob store, except that every request for part `number` of the first upload seen fails
    with a 503 (the store's trouble, or a proxy's), and one request of each other part a network
    error. Delegates to the real SeaweedFS otherwise."""

    def __init__(self, number: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.number = str(number)
        self.first_upload: str | None = None
        self.dropped: set[str] = set()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        upload_id, part = request.url.params.get("uploadId"), request.url.params.get("partNumber")
        if upload_id is not None and part is not None:
            self.first_upload = self.first_upload or upload_id
            if upload_id == self.first_upload:
                await request.aread()
                if part == self.number:
                    return httpx.Response(503, text="<Error><Code>SlowDown</Code></Error>")
                if part not in self.dropped:
                    self.dropped.add(part)
                    raise httpx.ConnectError("connection reset", request=request)
        return await self.inner.handle_async_request(request)


async def test_a_part_that_keeps_failing_sends_the_upload_again_with_a_new_ticket(
    running: tuple[ApiClient, Recording, uuid.UUID], app: FastAPI, s3_server: S3Server, tmp_path: Path
) -> None:
    api, transport, run_id = running
    failing = FailingPart(2)
    await api._direct.aclose()
    api._direct = httpx.AsyncClient(transport=failing, follow_redirects=False)  # the store, with faults
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(12 * MIB))
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (await api.upload_artifact(run_id, "weights.bin", weights)).sha256 == sha256
    # Part 2 was tried PART_ATTEMPTS times (the others again after a network error), then a
    # new ticket, a new upload, whose id the report names.
    first = failing.first_upload
    tried = [
        r.url.params.get("partNumber") for r in failing.requests if r.url.params.get("uploadId") == first
    ]
    assert tried.count("2") == PART_ATTEMPTS
    tickets = [r for r, status in transport.answered if r.url.path.endswith("/outputs/uploads")]
    assert len(tickets) == 2
    [put] = [r for r, _ in transport.answered if r.method == "PUT"]
    assert json.loads(put.content)["upload_id"] not in (None, first)
    # The first upload stays open until the API's collector aborts it (tests/api/test_incoming_gc.py).
    store = app.state.blobs
    assert isinstance(store, S3BlobStore)
    multipart = store.multipart()
    assert multipart is not None
    open_ids = [u.upload_id async for page in multipart.pending(store.whole_key("incoming/")) for u in page]
    assert open_ids == [first]
    kept = b"".join([chunk async for chunk in await store.open(sha256)])
    assert kept == weights.read_bytes()
