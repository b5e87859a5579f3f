"""The blob collector (api/storage/collector.py, docs/storage.md "Garbage collection"), on both stores
(a folder, and a real SeaweedFS: tests/s3.py) and both databases, through the real app.

An object store's timestamps cannot be set back, so a pass is run with a clock ahead of the real one
(`collect(now=...)`) where a test needs its blobs past the grace period: what was written before
`now - grace` is old. The grace period itself is the real setting.
"""

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select

from api.core.blobs import BlobStore, StoredBlob
from api.core.config import Settings
from api.core.errors import Conflict
from api.core.repository import record_blobs
from api.core.s3blobs import blob_store
from api.main import create_app
from api.models import Blob
from api.models.base import utcnow
from api.runs.sweeper import lock_key
from api.storage.collector import JOB, BlobCollector, CollectionReport, blob_referrers
from tests.api.packages_kit import upload_package, valid_package, versions_path, zip_bytes
from tests.api.world import ok, problem
from tests.conftest import SECRET_KEY, settings_for
from tests.s3 import on_s3, s3_server

__all__ = ["s3_server"]  # the session's SeaweedFS, a fixture of tests/s3.py

GRACE = 3600.0
LATER = timedelta(seconds=2 * GRACE)  # a pass this far ahead of the clock finds every blob old
PROJECT = "vision"
DATASETS = f"/projects/{PROJECT}/datasets"
WAIT_SECONDS = 30.0  # a bound on waiting for the API's own pass, never a claim about speed
_SCRIPT = Path(sys.executable).with_name("trainyard-api")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "api.cli"]


@pytest.fixture(params=["local", "s3"])
def settings(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """conftest's settings, on each store; the API's own passes off (tests run theirs)."""
    fields: dict[str, str] = {}
    if request.param == "s3":
        fields = on_s3(request.getfixturevalue("s3_server"), monkeypatch)
    return settings_for(
        database_url,
        tmp_path,
        blob_gc_grace_seconds=GRACE,
        blob_gc_interval_seconds=0,
        s3_redirect_downloads=False,  # downloads streamed, as on the local store: the bytes read here
        **fields,
    )


async def collect(app: FastAPI, *, ahead: timedelta = LATER, dry_run: bool = False) -> CollectionReport:
    collector = BlobCollector(app.state.sessionmaker, app.state.blobs, GRACE)
    return await collector.collect(dry_run=dry_run, now=utcnow() + ahead)


async def rows(app: FastAPI) -> set[str]:
    async with app.state.sessionmaker() as session:
        return set(await session.scalars(select(Blob.sha256)))


async def stored(store: BlobStore) -> set[str]:
    return {blob.sha256 async for batch in store.listing() for blob in batch}


async def consistent(app: FastAPI) -> set[str]:
    """The recorded blobs, after checking that each one's content is stored: never a row over nothing."""
    recorded = await rows(app)
    assert recorded <= await stored(app.state.blobs)
    return recorded


async def stream(content: bytes) -> AsyncIterator[bytes]:
    yield content


def removed(report: CollectionReport) -> set[tuple[str, str]]:
    return {(blob.sha256, blob.why) for blob in report.removed}


def package(seed: str) -> bytes:
    return zip_bytes({**valid_package(), "notes.txt": seed})


async def upload_files(client: AsyncClient, dataset: str, files: dict[str, bytes]) -> dict[str, str]:
    parts = [("files", (name, content, "application/octet-stream")) for name, content in files.items()]
    return ok(await client.post(f"{DATASETS}/{dataset}/versions", files=parts), 201)  # type: ignore[no-any-return]


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_every_foreign_key_to_blobs_is_a_referrer() -> None:
    names = {f"{column.table.name}.{column.name}" for column in blob_referrers()}
    assert {"package_versions.blob_sha256", "dataset_files.sha256", "run_outputs.sha256"} <= names


async def test_a_referred_blob_survives_every_pass(app: FastAPI, client: AsyncClient) -> None:
    ok(await client.post("/projects", json={"name": PROJECT}), 201)
    zipped = package("kept")
    ok(await upload_package(client, PROJECT, "digits", zipped), 201)
    files = {"cat.png": b"\x89PNG cat", "dog.png": b"\x89PNG dog"}
    await upload_files(client, "pets", files)
    everything = {sha(zipped)} | {sha(content) for content in files.values()}

    for ahead in (timedelta(0), LATER, timedelta(days=365)):
        assert (await collect(app, ahead=ahead)).removed == []
        assert await consistent(app) == everything == await stored(app.state.blobs)
    download = await client.get(f"{versions_path(PROJECT, 'digits')}/1.0/download")
    assert download.status_code == 200 and download.content == zipped


async def test_an_orphan_goes_after_the_grace_period_a_younger_one_stays(app: FastAPI) -> None:
    store: BlobStore = app.state.blobs
    # An object with no row: a process killed between its put and its record.
    orphan = await store.put(stream(b"an orphan object"), max_bytes=1024)
    # A row nothing refers to: recorded, and the version that was to refer to it never came.
    lonely = await store.put(stream(b"a lonely row"), max_bytes=1024)
    async with app.state.sessionmaker() as session:
        await record_blobs(session, [lonely])
        await session.commit()

    assert (await collect(app, ahead=timedelta(0))).removed == []  # both younger than the grace period
    assert await consistent(app) == {lonely.sha256}
    assert await stored(store) == {orphan.sha256, lonely.sha256}

    dry = await collect(app, dry_run=True)
    assert removed(dry) == {(orphan.sha256, "orphan"), (lonely.sha256, "unreferenced")}
    assert await stored(store) == {orphan.sha256, lonely.sha256}  # a dry run removes nothing

    report = await collect(app)
    assert removed(report) == {(orphan.sha256, "orphan"), (lonely.sha256, "unreferenced")}
    assert report.bytes_freed == orphan.size + lonely.size
    assert await rows(app) == set() == await stored(store)
    assert (await collect(app)).removed == []


async def test_a_deleted_versions_blobs_go_after_the_grace_period(app: FastAPI, client: AsyncClient) -> None:
    ok(await client.post("/projects", json={"name": PROJECT}), 201)
    first, second = package("first"), package("second")
    ok(await upload_package(client, PROJECT, "digits", first), 201)
    ok(await upload_package(client, PROJECT, "digits", second), 201)
    await upload_files(client, "pets", {"cat.png": b"cat one", "dog.png": b"dog"})
    # Version 2 is a zip: exactly its files, so the first cat is only version 1's.
    zipped = zip_bytes({"cat.png": b"cat two", "dog.png": b"dog"})
    parts = [("file", ("pets.zip", zipped, "application/zip"))]
    ok(await client.post(f"{DATASETS}/pets/versions", files=parts), 201)

    assert (await client.delete(f"{versions_path(PROJECT, 'digits')}/1.0")).status_code == 204
    assert (await client.delete(f"{DATASETS}/pets/versions/1")).status_code == 204
    assert (await collect(app, ahead=timedelta(0))).removed == []  # not before the grace period
    assert sha(first) in await consistent(app)

    report = await collect(app)
    assert removed(report) == {(sha(first), "unreferenced"), (sha(b"cat one"), "unreferenced")}
    assert await consistent(app) == {sha(second), sha(b"cat two"), sha(b"dog")}
    assert await stored(app.state.blobs) == {sha(second), sha(b"cat two"), sha(b"dog")}
    download = await client.get(f"{versions_path(PROJECT, 'digits')}/2.0/download")
    assert download.status_code == 200 and download.content == second


async def test_content_the_collector_took_after_the_put_is_refused_not_recorded(
    app: FastAPI, client: AsyncClient
) -> None:
    """The one race of the design, step by step: an upload's put finds the content stored (and sends
    nothing), the collector removes row and object, then the upload records: 409 `blob_gone`."""
    ok(await client.post("/projects", json={"name": PROJECT}), 201)
    zipped = package("raced")
    ok(await upload_package(client, PROJECT, "digits", zipped), 201)
    assert (await client.delete(f"{versions_path(PROJECT, 'digits')}/1.0")).status_code == 204

    found = await app.state.blobs.put(stream(zipped), max_bytes=len(zipped))
    assert isinstance(found, StoredBlob) and not found.created
    assert removed(await collect(app)) == {(sha(zipped), "unreferenced")}
    async with app.state.sessionmaker() as session:
        with pytest.raises(Conflict) as refused:
            await record_blobs(session, [found])
        await session.rollback()
    assert refused.value.code == "blob_gone"
    assert sha(zipped) not in await consistent(app)

    # Sent again, the content is stored anew and recorded.
    ok(await upload_package(client, PROJECT, "digits", zipped), 201)
    assert sha(zipped) in await consistent(app)

    # Content stored longer ago than the grace period and recorded only now (a slow upload of many
    # files) went as an orphan meanwhile: refused the same way.
    slow = await app.state.blobs.put(stream(b"the first file of a slow upload"), max_bytes=1024)
    assert slow.created
    assert removed(await collect(app)) == {(slow.sha256, "orphan")}
    async with app.state.sessionmaker() as session:
        with pytest.raises(Conflict, match="send it again"):
            await record_blobs(session, [slow])
        await session.rollback()
    assert slow.sha256 not in await consistent(app)


class HeldDelete:
    """The app's own store, for the collector, whose object deletes wait until `release` is set: the
    moment a pass holds a row it deleted and has not yet removed the object."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self.deleting = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def delete(self, sha256: str) -> None:
        self.deleting.set()
        await self.release.wait()
        await self._store.delete(sha256)


def _waiting_on_a_lock(database_url: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


async def test_a_record_waits_for_the_pass_that_holds_the_row_then_is_refused(
    app: FastAPI, client: AsyncClient, settings: Settings, is_postgres: bool
) -> None:
    """The design's order, held at its middle: the pass has deleted the row and not yet the object;
    an upload's put finds the content and its record waits for the row (PostgreSQL's row lock, SQLite's
    one connection), then finds the content gone: 409 `blob_gone`, and neither row nor object stays."""
    ok(await client.post("/projects", json={"name": PROJECT}), 201)
    zipped = package("held")
    ok(await upload_package(client, PROJECT, "digits", zipped), 201)
    assert (await client.delete(f"{versions_path(PROJECT, 'digits')}/1.0")).status_code == 204

    held = HeldDelete(app.state.blobs)
    collector = BlobCollector(app.state.sessionmaker, held, GRACE)  # type: ignore[arg-type]
    collecting = asyncio.create_task(collector.collect(now=utcnow() + LATER))
    async with asyncio.timeout(WAIT_SECONDS):
        await held.deleting.wait()
    found = await app.state.blobs.put(stream(zipped), max_bytes=len(zipped))
    assert not found.created  # the object is still there: the upload sends nothing

    async def record() -> None:
        async with app.state.sessionmaker() as session:
            await record_blobs(session, [found])
            await session.commit()

    recording = asyncio.create_task(record())
    if is_postgres:  # see it wait on the row the pass holds, then let the pass go on
        async with asyncio.timeout(WAIT_SECONDS):
            while not await asyncio.to_thread(_waiting_on_a_lock, settings.resolved_database_url):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    held.release.set()
    assert removed(await collecting) == {(sha(zipped), "unreferenced")}
    with pytest.raises(Conflict, match="send it again"):
        await recording
    assert sha(zipped) not in await consistent(app)
    assert sha(zipped) not in await stored(app.state.blobs)


async def test_a_row_left_over_nothing_is_repaired_by_the_next_upload(
    app: FastAPI, client: AsyncClient
) -> None:
    """A pass whose commit failed after it deleted the object leaves a row nothing refers to over
    nothing: the next upload of that content finds no object, stores it anew, and records it."""
    ok(await client.post("/projects", json={"name": PROJECT}), 201)
    zipped = package("left over")
    ok(await upload_package(client, PROJECT, "digits", zipped), 201)
    assert (await client.delete(f"{versions_path(PROJECT, 'digits')}/1.0")).status_code == 204
    await app.state.blobs.delete(sha(zipped))  # the object went, the row stayed

    again = ok(await upload_package(client, PROJECT, "digits", zipped), 201)
    download = await client.get(f"{versions_path(PROJECT, 'digits')}/{again['version']}/download")
    assert download.status_code == 200 and download.content == zipped
    assert sha(zipped) in await consistent(app)


async def test_uploads_racing_the_collector_end_stored_or_refused(app: FastAPI, client: AsyncClient) -> None:
    """Uploads of content whose row nothing refers to, each at once with a pass that finds it old:
    every one ends stored (and readable) or refused with `blob_gone`, never recorded over nothing."""
    ok(await client.post("/projects", json={"name": PROJECT}), 201)
    zipped = package("contended")
    versions = versions_path(PROJECT, "digits")
    outcomes = []
    for _ in range(6):
        made = ok(await upload_package(client, PROJECT, "digits", zipped), 201)
        assert (await client.delete(f"{versions}/{made['version']}")).status_code == 204
        upload, _ = await asyncio.gather(upload_package(client, PROJECT, "digits", zipped), collect(app))
        if upload.status_code == 201:
            download = await client.get(f"{versions}/{upload.json()['version']}/download")
            assert download.status_code == 200 and download.content == zipped
            assert (await client.delete(f"{versions}/{upload.json()['version']}")).status_code == 204
        else:
            problem(upload, 409, "blob_gone")
        outcomes.append(upload.status_code)
        await consistent(app)
    assert set(outcomes) <= {201, 409}


# -- the API's own passes ---------------------------------------------------------------------------------


async def test_the_api_collects_on_its_interval_and_not_when_off(settings: Settings) -> None:
    frequent = settings.model_copy(update={"blob_gc_interval_seconds": 0.05, "blob_gc_grace_seconds": 0})
    application = create_app(frequent)
    async with application.router.lifespan_context(application):
        orphan = await application.state.blobs.put(stream(b"left by a crash"), max_bytes=1024)
        async with asyncio.timeout(WAIT_SECONDS):
            while await application.state.blobs.exists(orphan.sha256):  # noqa: ASYNC110 (no event to wait on)
                await asyncio.sleep(0.05)
    off = create_app(settings.model_copy(update={"blob_gc_grace_seconds": 0}))
    async with off.router.lifespan_context(off):
        assert [task for task in asyncio.all_tasks() if task.get_name() == "blob-gc"] == []


# -- trainyard-api gc ----------------------------------------------------------------------------------


def _gc(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env |= {
        "TRAINYARD_DATA_DIR": str(settings.data_dir),
        "TRAINYARD_DATABASE_URL": settings.resolved_database_url,
        "TRAINYARD_SECRET_KEY": SECRET_KEY,  # required on PostgreSQL
        "TRAINYARD_BLOB_GC_GRACE_SECONDS": "0",
    }
    if settings.blob_store is not None and settings.s3_endpoint_url is not None:
        env |= {
            "TRAINYARD_BLOB_STORE": settings.blob_store,
            "TRAINYARD_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        }
    return subprocess.run(
        [*COMMAND, "gc", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_command_prints_what_it_removes_and_a_dry_run_removes_nothing(settings: Settings) -> None:
    store = blob_store(settings)
    orphan = asyncio.run(store.put(stream(b"orphaned by a crash"), max_bytes=1024))

    dry = _gc(settings, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {orphan.sha256} {orphan.size} bytes (orphan)" in dry.stdout
    assert f"would remove 1 blobs, {orphan.size} bytes would be freed" in dry.stdout
    assert asyncio.run(store.exists(orphan.sha256))

    done = _gc(settings)
    assert done.returncode == 0, done.stderr
    assert f"removed {orphan.sha256} {orphan.size} bytes (orphan)" in done.stdout
    assert f"removed 1 blobs, {orphan.size} bytes freed" in done.stdout
    assert not asyncio.run(store.exists(orphan.sha256))


def test_the_command_leaves_the_pass_to_the_process_that_holds_the_claim(
    settings: Settings, is_postgres: bool
) -> None:
    if not is_postgres:
        pytest.skip("on SQLite there is one API process: no claim to wait for")
    with psycopg.connect(settings.resolved_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(JOB),))
        refused = _gc(settings)
    assert refused.returncode == 3
    assert "another process is collecting" in refused.stderr
