"""Presigned URLs end to end (docs/storage.md): `trainyard-api serve` on a real SeaweedFS and the real
agent process. An agent of today fetches its package and dataset files from S3 and sends its outputs
there, the API handing out URLs and checking what arrived; an agent with `TRAINYARD_DIRECT_BLOBS=false`
(as an older agent, which says nothing of the kind) is served every byte by the API, as before.

What went past the API is read from the API's own `/metrics` (requests by route and status): the
fetches answered 307, never 200, and the outputs were reported by reference after an upload ticket.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections import Counter

import pytest

from tests.api.world import ok
from tests.e2e.harness import PROJECT, Stack, package, stack, wait_for_file
from tests.s3 import S3Server, keys_under, new_prefix, s3_server

__all__ = ["s3_server"]  # the session's SeaweedFS, a fixture of tests/s3.py

READS_AND_SAVES = package(
    """
    import os
    from e2e_helpers import mark


    class Main:
        def train(self, data_directory):
            with open(os.path.join(data_directory, "labels.csv")) as f:
                mark("data", f.read())
            with open(os.path.join(os.environ["artifacts_directory"], "curve.csv"), "w") as f:
                f.write("epoch,loss\\n1,0.5\\n")

        def save(self):
            with open("model.txt", "w") as f:
                f.write("trained on " + os.environ.get("marks", ""))
    """
)
_METRIC = re.compile(
    r'^trainyard_http_requests_total\{method="(\w+)",route="([^"]+)",status="(\d+)"\} ([0-9.e+]+)$'
)


async def requests_by_route(s: Stack) -> Counter[tuple[str, str, str]]:
    """(method, route, status) -> requests the API answered so far."""
    text = (await s.admin.get(f"{s.api_url}/metrics")).text
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        if found := _METRIC.match(line):
            method, route, status, value = found.groups()
            counts[(method, route.removeprefix("/agent/runs/{run_id}"), status)] = int(float(value))
    return counts


async def train_once(s: Stack, name: str) -> None:
    """A run of READS_AND_SAVES on a dataset `name` of its own (a file no agent's cache holds yet), to
    success."""
    labels = f"{name},1\n".encode()
    files = [("files", ("labels.csv", labels, "text/csv"))]
    ok(await s.admin.post(f"/projects/{PROJECT}/datasets/{name}/versions", files=files), 201)
    marks = s.marks(name)
    process = await s.deploy({**READS_AND_SAVES, "NAME": name}, marks=marks, dataset=name)
    run = await s.start(process)
    await s.wait_succeeded(run["id"])
    assert (await wait_for_file(marks / "data", s)) == labels.decode()


async def test_an_agent_on_s3_fetches_and_sends_past_the_api(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in s3_server.environment().items():  # the API's S3 client reads these
        monkeypatch.setenv(variable, value)
    prefix = new_prefix()
    async with stack(blob_store=s3_server.url(prefix), s3_endpoint_url=s3_server.endpoint) as s:
        agent = s.start_agent()  # today's agent: direct_blobs on
        before = await requests_by_route(s)
        await train_once(s, "direct")
        direct = await requests_by_route(s) - before
        # The package and the dataset file: 307 to S3, not one streamed by the API.
        assert direct[("GET", "/package", "307")] == 1, direct
        assert direct[("GET", "/blobs/{sha256}", "307")] == 1, direct
        assert not any(
            status == "200" and route in ("/package", "/blobs/{sha256}") for _, route, status in direct
        )
        # The package and the artifact: a ticket each, then reported by reference.
        assert direct[("POST", "/outputs/uploads", "200")] == 2, direct
        assert direct[("PUT", "/outputs/package", "200")] == 1, direct
        assert direct[("PUT", "/outputs/artifacts/{path:path}", "200")] == 1, direct
        # A person's download: 307 to S3, followed (the token is not sent there).
        trained = await s.admin.get(
            f"/projects/{PROJECT}/packages/p1/versions/1.1/download", follow_redirects=True
        )
        assert [r.status_code for r in trained.history] == [307]
        assert trained.status_code == 200, trained.text
        assert "model.txt" in zipfile.ZipFile(io.BytesIO(trained.content)).namelist()
        agent.stop()

        # An agent that does not say direct_blobs (as one of before): every byte through the API.
        s.start_agent(TRAINYARD_DIRECT_BLOBS="false")
        before = await requests_by_route(s)
        await train_once(s, "through")
        through = await requests_by_route(s) - before
        assert through[("GET", "/package", "200")] == 1, through
        assert through[("GET", "/blobs/{sha256}", "200")] == 1, through
        assert not any(status == "307" for _, _, status in through), through
        assert through[("POST", "/outputs/uploads", "200")] == 0, through
        assert through[("PUT", "/outputs/package", "200")] == 1, through
        # Every blob is in the bucket, none on the API's disk, no direct upload left behind.
        assert [path for path in (s.root / "data" / "blobs").rglob("*") if path.is_file()] == []
        stored = keys_under(s3_server, prefix)
        assert stored and all(key.startswith("sha256/") for key in stored), stored
