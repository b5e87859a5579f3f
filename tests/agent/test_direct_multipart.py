"""The agent's client sends a large output in parts (docs/storage.md, "Presigned URLs"): the real app in
process with parts of 5 MiB, a real SeaweedFS; each part is read from the file as it goes, the ETags are
reported, and the API completes and checks the upload."""

import hashlib
import json
import os
import uuid
from pathlib import Path

from fastapi import FastAPI

from agent.client import ApiClient
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
