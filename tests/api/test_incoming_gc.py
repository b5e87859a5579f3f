"""The blob collector and what agents' direct uploads leave under `incoming/` (api/storage/collector.py,
docs/storage.md "Garbage collection"): an object sent and never reported, a multipart upload opened
and never completed. On S3 (a real SeaweedFS, tests/s3.py) both go after the grace period, nothing else
is touched; a local store has no such area. The grace period is the setting, the clock run ahead
(`collect(now=...)`) as in tests/api/test_blob_gc.py, whose fixtures these are.
"""

import asyncio
import hashlib
from datetime import timedelta

import obstore
from fastapi import FastAPI

from api.core.config import Settings
from api.core.s3blobs import S3BlobStore, blob_store
from api.core.s3multipart import Multipart
from tests.api.test_blob_gc import _gc, collect, settings
from tests.s3 import s3_server

__all__ = ["s3_server", "settings"]  # the session's SeaweedFS; conftest's settings on each store

RUN = "0192f0c4-0000-7000-8000-000000000001"


def incoming(content: bytes) -> str:
    return S3BlobStore.incoming_key(RUN, hashlib.sha256(content).hexdigest())


async def open_uploads(store: S3BlobStore, multipart: Multipart, under: str) -> list[str]:
    return [u.key async for page in multipart.pending(store.whole_key(under)) for u in page]


async def test_leftovers_under_incoming_go_after_the_grace_period_nothing_else(app: FastAPI) -> None:
    store = app.state.blobs
    if not isinstance(store, S3BlobStore):
        # A local folder takes no direct upload: nothing to list, every pass reports none.
        assert (await collect(app)).leftovers == []
        return
    multipart = store.multipart()
    assert multipart is not None
    sent = incoming(b"sent and never reported")
    await obstore.put_async(store.store, sent, b"sent and never reported")
    opened = incoming(b"opened in parts and never completed")
    await multipart.create(store.whole_key(opened))
    # Beside incoming/: an object and an open upload the collector must never touch.
    await obstore.put_async(store.store, "elsewhere/kept", b"not an upload")
    elsewhere = await multipart.create(store.whole_key("elsewhere/open"))

    assert (await collect(app, ahead=timedelta(0))).leftovers == []  # younger than the grace period
    dry = await collect(app, dry_run=True)
    assert {(left.key, left.size, left.why) for left in dry.leftovers} == {
        (sent, len(b"sent and never reported"), "upload"),
        (opened, None, "multipart"),
    }
    assert await store.incoming_info(sent) is not None  # a dry run removes nothing
    assert await open_uploads(store, multipart, "incoming/") == [store.whole_key(opened)]

    report = await collect(app)
    assert len(report.leftovers) == 2 and report.removed == []
    assert await store.incoming_info(sent) is None
    assert await open_uploads(store, multipart, "incoming/") == []
    assert (await collect(app)).leftovers == []
    # Untouched: the object and the upload outside incoming/.
    assert (await obstore.head_async(store.store, "elsewhere/kept"))["size"] == len(b"not an upload")
    assert await open_uploads(store, multipart, "elsewhere/") == [store.whole_key("elsewhere/open")]
    await multipart.abort(store.whole_key("elsewhere/open"), elsewhere)


def test_the_command_lists_and_removes_leftovers(settings: Settings) -> None:
    store = blob_store(settings)
    if not isinstance(store, S3BlobStore):
        done = _gc(settings, "--dry-run")
        assert done.returncode == 0 and "incoming/" not in done.stdout
        return
    multipart = store.multipart()
    assert multipart is not None
    sent = incoming(b"left by a dead agent")
    obstore.put(store.store, sent, b"left by a dead agent")
    opened = incoming(b"parts of a dead agent")
    asyncio.run(multipart.create(store.whole_key(opened)))

    dry = _gc(settings, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {sent} {len(b'left by a dead agent')} bytes (upload)" in dry.stdout
    assert f"would remove {opened} (multipart)" in dry.stdout
    assert "would remove 2 leftovers of direct uploads" in dry.stdout
    assert asyncio.run(store.incoming_info(sent)) is not None

    done = _gc(settings)
    assert done.returncode == 0, done.stderr
    assert f"removed {sent} {len(b'left by a dead agent')} bytes (upload)" in done.stdout
    assert asyncio.run(store.incoming_info(sent)) is None
    assert asyncio.run(open_uploads(store, multipart, "incoming/")) == []
