"""The blob collector: content that nothing refers to any more leaves the store (docs/storage.md).

A pass, on one API process at a time (the sweeps' kind of claim, a lock of its own), removes:

1. rows of `blobs` older than the grace period that no row refers to (a `NOT EXISTS` over every foreign
   key to `blobs.sha256` in the metadata, so a new referrer is covered without touching this file),
   each by one conditional `DELETE` whose row stays locked while the object goes, then commit;
2. objects with no row (a process killed between its put and its record) older than the grace period,
   found by listing the store; each is claimed by inserting its row, so an upload recording that
   content meanwhile waits for the pass and then finds it gone (`record_blobs`: 409 `blob_gone`).

3. on S3, what agents' direct uploads left under `incoming/` (docs/storage.md, "Presigned URLs"): an
   object older than the grace period (sent, never reported: the agent died or gave up), and a
   multipart upload initiated before it (never completed; its parts are stored and billed until it is
   aborted). A local store takes no direct upload and has no such area.

The grace period covers an upload between its put and its record (a row of content already stored is
refreshed by `record_blobs`, so a reuse starts it again). Correctness never rests on the claim: two
passes at once each delete a row or an object once, under the same conditions.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import ColumnElement, delete, exists, select
from sqlalchemy.exc import IntegrityError

from api.core.blobs import BlobInfo, BlobStore
from api.core.repository import dialect_insert
from api.core.s3blobs import S3BlobStore
from api.models import Base, Blob
from api.models.base import utcnow
from api.runs.sweeper import SweepClaim

if TYPE_CHECKING:
    from sqlalchemy import Column
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from api.core.config import Settings

logger = logging.getLogger(__name__)
_BATCH = 500  # candidate rows read at once: under SQLite's limit of bound parameters
JOB = "blob-gc"


@dataclass(frozen=True)
class Collected:
    sha256: str
    size: int
    why: Literal["unreferenced", "orphan"]  # a row nothing refers to | an object with no row


@dataclass(frozen=True)
class Leftover:
    key: str  # under the store's prefix: incoming/<run id>/<sha256>
    size: int | None  # None for a multipart upload: its parts are not listed
    why: Literal["upload", "multipart"]  # an object never reported | a multipart upload never completed


@dataclass
class CollectionReport:
    dry_run: bool
    removed: list[Collected] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return sum(blob.size for blob in self.removed)


def blob_referrers(metadata: Any = Base.metadata) -> list[Column[Any]]:
    """Every column that refers to `blobs.sha256` by a foreign key."""
    target = Blob.__table__.c.sha256
    return [
        key.parent for table in metadata.sorted_tables for key in table.foreign_keys if key.column is target
    ]


def _unreferenced() -> list[ColumnElement[bool]]:
    return [~exists().where(column == Blob.sha256) for column in blob_referrers()]


class BlobCollector:
    """One pass over the store and the `blobs` table; `dry_run` reports what would go and removes
    nothing. Each removal is its own short transaction, so the pass never holds SQLite's one writer
    (or the API's one connection to it) for longer than one object's delete."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], store: BlobStore, grace_seconds: float
    ) -> None:
        self._sessionmaker = sessionmaker
        self._store = store
        self._grace = timedelta(seconds=grace_seconds)

    async def collect(self, *, dry_run: bool = False, now: datetime | None = None) -> CollectionReport:
        """`now` stands for the clock's time (tests pass one ahead of it: an object store's own
        timestamps cannot be set back)."""
        cutoff = (now or utcnow()) - self._grace
        report = CollectionReport(dry_run)
        await self._unreferenced_rows(cutoff, report)
        await self._orphan_objects(cutoff, report)
        if isinstance(self._store, S3BlobStore):
            await self._incoming(self._store, cutoff, report)
        if report.removed and not dry_run:
            logger.info(
                "the blob collector removed %d blobs, %d bytes", len(report.removed), report.bytes_freed
            )
        if report.leftovers and not dry_run:
            logger.info("the blob collector removed %d leftovers of direct uploads", len(report.leftovers))
        return report

    async def _incoming(self, store: S3BlobStore, cutoff: datetime, report: CollectionReport) -> None:
        """Objects under `incoming/` older than the grace period (looked at again before the delete: a
        retry of the upload may have written the key anew), then the multipart uploads under it
        initiated before it. Nothing outside `incoming/` is listed, let alone touched."""
        async for page in store.incoming():
            for found in page:
                if found.modified >= cutoff:
                    continue
                if not report.dry_run:
                    now = await store.incoming_info(found.key)
                    if now is None or now.modified >= cutoff:
                        continue
                    await store.delete_incoming(found.key)
                report.leftovers.append(Leftover(found.key, found.size, "upload"))
        multipart = store.multipart()
        if multipart is None:  # no signer of our own: no upload in parts was handed out either
            return
        prefix = store.whole_key("incoming/")
        async for uploads in multipart.pending(prefix):
            for upload in uploads:
                if upload.initiated >= cutoff or not upload.key.startswith(prefix):
                    continue
                if not report.dry_run:
                    await multipart.abort(upload.key, upload.upload_id)
                key = upload.key.removeprefix(store.whole_key(""))
                report.leftovers.append(Leftover(key, None, "multipart"))

    async def _unreferenced_rows(self, cutoff: datetime, report: CollectionReport) -> None:
        after = ""
        while True:
            async with self._sessionmaker() as session:
                rows = (
                    await session.execute(
                        select(Blob.sha256, Blob.size)
                        .where(Blob.sha256 > after, Blob.created_at < cutoff, *_unreferenced())
                        .order_by(Blob.sha256)
                        .limit(_BATCH)
                    )
                ).all()
            if not rows:
                return
            after = rows[-1].sha256
            for sha256, size in rows:
                if report.dry_run or await self._remove_row(sha256, cutoff):
                    report.removed.append(Collected(sha256, size, "unreferenced"))

    async def _remove_row(self, sha256: str, cutoff: datetime) -> bool:
        """Delete the row if it is still old and unreferenced, then the object, then commit: on
        PostgreSQL the row stays locked meanwhile, so `record_blobs` of the same hash waits and then
        inserts anew (and checks the store); on SQLite the one writer gives the same order. A failed
        object delete rolls the row back."""
        async with self._sessionmaker() as session:
            try:
                gone = await session.scalar(
                    delete(Blob)
                    .where(Blob.sha256 == sha256, Blob.created_at < cutoff, *_unreferenced())
                    .returning(Blob.sha256),
                    execution_options={"synchronize_session": False},
                )
            except IntegrityError:
                # PostgreSQL: a referrer committed while the delete waited for the row (it held the
                # row's key-share lock); the foreign key refuses, and the blob stays.
                await session.rollback()
                return False
            if gone is None:  # referred to, refreshed or removed since the candidates were read
                await session.rollback()
                return False
            await self._store.delete(sha256)
            await session.commit()
            return True

    async def _orphan_objects(self, cutoff: datetime, report: CollectionReport) -> None:
        async for batch in self._store.listing():
            old = {blob.sha256: blob for blob in batch if blob.modified < cutoff}
            if not old:
                continue
            async with self._sessionmaker() as session:
                recorded = set(await session.scalars(select(Blob.sha256).where(Blob.sha256.in_(list(old)))))
            for sha256, blob in sorted(old.items()):
                if sha256 in recorded:
                    continue
                if report.dry_run or await self._remove_orphan(blob, cutoff):
                    report.removed.append(Collected(sha256, blob.size, "orphan"))

    async def _remove_orphan(self, blob: BlobInfo, cutoff: datetime) -> bool:
        """Claim the hash by inserting its row (an upload recording it meanwhile waits, or was first
        and wins), look again that the object is still the old one (a put since the listing wrote it
        anew), delete it, and drop the row in the same transaction."""
        async with self._sessionmaker() as session:
            claimed = await session.scalar(
                dialect_insert(session)(Blob)
                .values(sha256=blob.sha256, size=blob.size, created_at=blob.modified)
                .on_conflict_do_nothing(index_elements=["sha256"])
                .returning(Blob.sha256)
            )
            if claimed is None:  # recorded since the listing
                await session.rollback()
                return False
            now = await self._store.info(blob.sha256)
            if now is None or now.modified >= cutoff:
                await session.rollback()
                return False
            await self._store.delete(blob.sha256)
            await session.execute(
                delete(Blob).where(Blob.sha256 == blob.sha256),
                execution_options={"synchronize_session": False},
            )
            await session.commit()
            return True


async def collect_claimed(
    sessionmaker: async_sessionmaker[AsyncSession], store: BlobStore, settings: Settings, *, dry_run: bool
) -> CollectionReport | None:
    """One pass under the collector's claim, held for the pass only; None when another process holds
    it (on PostgreSQL; on SQLite every caller collects, which the conditional deletes make safe)."""
    claim = SweepClaim(settings, job=JOB, doing="collects blobs")
    try:
        if not await claim.held():
            return None
        return await BlobCollector(sessionmaker, store, settings.blob_gc_grace_seconds).collect(
            dry_run=dry_run
        )
    finally:
        await claim.release()


async def collect_forever(
    sessionmaker: async_sessionmaker[AsyncSession], store: BlobStore, settings: Settings
) -> None:
    """The API's periodic pass, every `TRAINYARD_BLOB_GC_INTERVAL_SECONDS` (the first one interval
    after the start, so a restart loop never turns into a collection loop)."""
    while True:
        await asyncio.sleep(settings.blob_gc_interval_seconds)
        try:
            await collect_claimed(sessionmaker, store, settings, dry_run=False)
        except Exception:  # a pass that fails is tried again at the next interval
            logger.exception("the blob collector's pass failed")
