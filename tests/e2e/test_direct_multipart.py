"""A real agent's large output goes up in parts (docs/storage.md, "Presigned URLs"): `trainyard-api
serve` on a real SeaweedFS with parts of 5 MiB, the real agent process. The run writes a 12 MiB
artifact; the agent asks for a ticket, sends three parts straight to S3 and reports their ETags; the
API completes the upload, checks it and keeps it. What went past the API is read from its `/metrics`.
"""

from __future__ import annotations

import hashlib
import random

import obstore
import pytest

from api.core.s3blobs import S3BlobStore
from tests.e2e.harness import PROJECT, package, stack
from tests.e2e.test_direct_blobs import requests_by_route
from tests.s3 import S3Server, keys_under, new_prefix, s3_server

__all__ = ["s3_server"]  # the session's SeaweedFS, a fixture of tests/s3.py

MIB = 1024**2
WRITES_WEIGHTS = package(
    """
    import os
    import random


    class Main:
        def train(self, data_directory):
            content = random.Random(7).randbytes(12 * 1024 * 1024)
            with open(os.path.join(os.environ["artifacts_directory"], "weights.bin"), "wb") as f:
                f.write(content)

        def save(self):
            with open("model.txt", "w") as f:
                f.write("trained")
    """
)


async def test_a_real_agents_large_output_goes_up_in_parts(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in s3_server.environment().items():  # the API's S3 client reads these
        monkeypatch.setenv(variable, value)
    prefix = new_prefix()
    settings = {
        "blob_store": s3_server.url(prefix),
        "s3_endpoint_url": s3_server.endpoint,
        "direct_upload_part_bytes": str(5 * MIB),
    }
    async with stack(**settings) as s:
        s.start_agent()  # today's agent: direct_blobs on
        before = await requests_by_route(s)
        process = await s.deploy(WRITES_WEIGHTS)
        run = await s.start(process)
        await s.wait_succeeded(run["id"])
        direct = await requests_by_route(s) - before
        # The artifact and the trained package: a ticket each, then reported by reference.
        assert direct[("POST", "/outputs/uploads", "200")] == 2, direct
        assert direct[("PUT", "/outputs/artifacts/{path:path}", "200")] == 1, direct
        artifact = await s.admin.get(
            f"/projects/{PROJECT}/runs/{run['id']}/artifacts/weights.bin", follow_redirects=True
        )
        assert artifact.status_code == 200, artifact.text
        expected = random.Random(7).randbytes(12 * MIB)
        assert hashlib.sha256(artifact.content).digest() == hashlib.sha256(expected).digest()
        # Nothing left under incoming/: the parts were completed into one object, adopted, deleted.
        stored = keys_under(s3_server, prefix)
        assert stored and all(key.startswith("sha256/") for key in stored), stored
        # In three parts: the ETag of a completed multipart upload is `<md5 of the parts' md5s>-3`,
        # and SeaweedFS's CopyObject (the adoption) keeps it.
        key = S3BlobStore.key_of(hashlib.sha256(expected).hexdigest())
        assert str(obstore.head(s3_server.client(prefix), key)["e_tag"]).strip('"').endswith("-3")
