"""The blob store on an S3-compatible server (AWS S3, SeaweedFS, MinIO, Ceph RGW, R2...).

The same contract as `LocalBlobStore` (api/core/blobs.py): a blob lives under
`<prefix>/sha256/<ab>/<cd>/<sha256>`, is written once and read verified.

An upload is hashed while it is written to a scratch file on the API's disk, then sent under its final
key: the key is a hash, so it is known only once the last byte arrived, and this way nothing but a
complete, checked blob ever reaches the bucket (no temporary object, no server-side copy, which S3
caps at 5 GiB, no orphan to collect after a crash). Multipart uploads take the place of the uploads
that the archive checks already hold in a scratch file anyway; the file goes as soon as it is sent.
A blob of one part is written with `If-None-Match: *`, so an existing object is never touched; a
larger one is sent only when a HEAD found no object, and a race of two identical uploads ends with the
same bytes under the key whichever completes last (as the local store's rename does).

The client is obstore (the Rust `object_store` crate): native asyncio, streams in and out without
holding an object in memory, multipart and presigning built in; docs/storage.md says why it was taken.
"""

import hashlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Self

import anyio.to_thread
import obstore
from obstore.exceptions import AlreadyExistsError, BaseError
from obstore.store import S3Store

from api.core.blobs import (
    CHUNK_BYTES,
    SHA256_PATTERN,
    BlobCorrupt,
    BlobInfo,
    BlobStore,
    LocalBlobStore,
    StoredBlob,
    blob_not_found,
    check_sha256,
    remove_stale,
    scratch_file,
    spool,
    verified,
)
from api.core.config import Settings
from api.core.downloads import attachment
from api.core.errors import Conflict, InvalidInput, ServiceUnavailable
from api.core.s3multipart import MAX_COPY_BYTES, Multipart
from api.core.sigv4 import Presigner

if TYPE_CHECKING:
    from obstore import GetResult, ObjectMeta  # in the type stubs only

# A multipart upload keeps at most PART_BYTES x PARTS_IN_FLIGHT of one file in memory (32 MiB); S3's
# 10,000 parts then allow an object of 80 GiB, past any upload limit of the API.
PART_BYTES = 8 * 1024 * 1024
PARTS_IN_FLIGHT = 4
# SigV4's bounds on a presigned URL's life.
MIN_URL_LIFETIME = timedelta(seconds=1)
MAX_URL_LIFETIME = timedelta(days=7)
# Past these, a request fails instead of hanging the upload or download that waits on it.
_RETRIES = 4
_RETRY_TIMEOUT = timedelta(seconds=60)
_CONNECT_TIMEOUT = timedelta(seconds=10)


@dataclass(frozen=True)
class IncomingObject:
    """An object of a direct upload, under `incoming/`: its key under the store's prefix."""

    key: str
    size: int
    modified: datetime


class S3BlobStore(BlobStore):
    # An adopted upload past this is copied in parts of this size (S3's `CopyObject` stops at 5 GiB);
    # tests lower it to run the path on megabytes.
    copy_part_bytes = MAX_COPY_BYTES

    def __init__(
        self, store: S3Store, temp_dir: Path, *, presigner: Presigner | None = None, prefix: str = ""
    ) -> None:
        self.store = store
        self.temp_dir = temp_dir
        # Our own SigV4 signer (api/core/sigv4.py) for what obstore's cannot sign; None without static
        # credentials in the environment. `prefix` is the store's prefix, for the whole keys it signs.
        self.presigner = presigner
        self.prefix = prefix.strip("/")
        temp_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        location = settings.s3_bucket_and_prefix
        if location is None:
            raise ValueError("TRAINYARD_BLOB_STORE is not an s3:// URL")
        bucket, prefix = location
        endpoint = settings.s3_endpoint_url
        store = S3Store(
            bucket,
            prefix=prefix or None,
            # Credentials and region: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, read by the
            # client from the environment (docs/storage.md).
            endpoint=endpoint,
            client_options={
                "allow_http": endpoint is not None and endpoint.startswith("http://"),
                "connect_timeout": _CONNECT_TIMEOUT,
            },
            retry_config={"max_retries": _RETRIES, "retry_timeout": _RETRY_TIMEOUT},
        )
        presigner = Presigner.from_environment(endpoint, bucket)
        return cls(store, settings.blob_folder / "tmp", presigner=presigner, prefix=prefix)

    def whole_key(self, key: str) -> str:
        """A key of the store (`key_of`, `incoming_key`) as the bucket knows it: under the prefix."""
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def key_of(sha256: str) -> str:
        """The object's key under the store's prefix; two levels of fan-out, as on disk."""
        check_sha256(sha256)
        return f"sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StoredBlob:
        # No fsync: the scratch file lives only until it is sent, and a crash loses the upload anyway.
        temp, sha256, size = await spool(chunks, self.temp_dir, max_bytes=max_bytes, sync=False)
        try:
            return await self._send(temp, sha256, size)
        finally:
            temp.unlink(missing_ok=True)

    async def put_file(self, path: Path) -> StoredBlob:
        if path.parent.resolve() != self.temp_dir.resolve():
            raise ValueError(f"{path} was not made by temp_file()")
        try:
            sha256, size = await anyio.to_thread.run_sync(_hash_file, path)
            return await self._send(path, sha256, size)
        finally:
            # Synchronous on purpose, as in `spool`: under cancellation an await could be cancelled too.
            path.unlink(missing_ok=True)  # noqa: ASYNC240

    async def open(self, sha256: str) -> AsyncIterator[bytes]:
        key = self.key_of(sha256)
        with _unavailable_on_failure():
            try:
                result = await obstore.get_async(self.store, key)
            except FileNotFoundError as error:
                raise blob_not_found(sha256) from error
        return verified(sha256, _chunks(result))

    async def exists(self, sha256: str) -> bool:
        return await self._head_size(self.key_of(sha256)) is not None

    async def size(self, sha256: str) -> int:
        size = await self._head_size(self.key_of(sha256))
        if size is None:
            raise blob_not_found(sha256)
        return size

    async def delete(self, sha256: str) -> None:
        key = self.key_of(sha256)
        with _unavailable_on_failure():
            await obstore.delete_async(self.store, key)  # S3 answers 204 for a key that is not there

    async def info(self, sha256: str) -> BlobInfo | None:
        with _unavailable_on_failure():
            try:
                meta = await obstore.head_async(self.store, self.key_of(sha256))
            except FileNotFoundError:
                return None
        return BlobInfo(sha256, meta["size"], meta["last_modified"])

    async def listing(self) -> AsyncIterator[list[BlobInfo]]:
        """ListObjectsV2 under `sha256/`, a page of 1,000 at a time (S3's page)."""
        with _unavailable_on_failure():
            async for page in obstore.list(self.store, "sha256/", chunk_size=1000):
                yield [found for meta in page if (found := self._listed(meta)) is not None]

    def _listed(self, meta: "ObjectMeta") -> BlobInfo | None:
        name = meta["path"].rpartition("/")[2]
        if not SHA256_PATTERN.fullmatch(name) or meta["path"] != self.key_of(name):
            return None  # not a blob's key: never touched
        return BlobInfo(name, meta["size"], meta["last_modified"])

    async def url_for(self, sha256: str, expires: timedelta) -> str:
        """A presigned GET of this one object (SigV4, signed here: no request to S3). S3 refuses it
        once `expires` has passed, for any other key, and for any other method."""
        if not MIN_URL_LIFETIME <= expires <= MAX_URL_LIFETIME:
            raise ValueError(f"a presigned URL lives {MIN_URL_LIFETIME} to {MAX_URL_LIFETIME}")
        return await obstore.sign_async(self.store, "GET", self.key_of(sha256), expires)

    async def download_url(
        self, sha256: str, expires: timedelta, *, filename: str, media_type: str
    ) -> str | None:
        """A presigned GET of this one object for a person's download, signed by our own signer
        (obstore's cannot sign `response-*`): S3 answers it with `Content-Disposition: attachment`
        naming `filename` (RFC 6266, as the API's own answer) and `Content-Type: media_type`, and
        refuses it once `expires` has passed, for another key, or with those parameters changed.
        None without static credentials (no signer): the API streams the download then."""
        check_sha256(sha256)
        if self.presigner is None:
            return None
        if not MIN_URL_LIFETIME <= expires <= MAX_URL_LIFETIME:
            raise ValueError(f"a presigned URL lives {MIN_URL_LIFETIME} to {MAX_URL_LIFETIME}")
        query = {"response-content-disposition": attachment(filename), "response-content-type": media_type}
        return self.presigner.url("GET", self.whole_key(self.key_of(sha256)), expires, query=query)

    def download_origin(self) -> str | None:
        return None if self.presigner is None else self.presigner.origin

    # Direct uploads (docs/storage.md, "Presigned URLs"): an agent PUTs an output to a key of its own
    # upload, never to a blob's key, and the API moves it under its hash once checked.

    @staticmethod
    def incoming_key(scope: str, sha256: str) -> str:
        """Where a direct upload of `sha256` for `scope` (a run's id) lands before it is checked. Never
        a blob's own key: a URL handed out cannot overwrite content that something refers to."""
        check_sha256(sha256)
        if not scope or "/" in scope:
            raise ValueError("an upload's scope is one path segment")
        return f"incoming/{scope}/{sha256}"

    async def upload_url(self, key: str, expires: timedelta) -> str:
        """A presigned PUT of the one key `key` (`incoming_key`), refused by S3 once `expires` passed."""
        if not MIN_URL_LIFETIME <= expires <= MAX_URL_LIFETIME:
            raise ValueError(f"a presigned URL lives {MIN_URL_LIFETIME} to {MAX_URL_LIFETIME}")
        return await obstore.sign_async(self.store, "PUT", key, expires)

    async def incoming(self) -> AsyncIterator[list[IncomingObject]]:
        """The objects under `incoming/` (direct uploads not yet adopted), a page at a time."""
        with _unavailable_on_failure():
            async for page in obstore.list(self.store, "incoming/", chunk_size=1000):
                yield [IncomingObject(meta["path"], meta["size"], meta["last_modified"]) for meta in page]

    async def incoming_info(self, key: str) -> "IncomingObject | None":
        _check_incoming(key)
        with _unavailable_on_failure():
            try:
                meta = await obstore.head_async(self.store, key)
            except FileNotFoundError:
                return None
        return IncomingObject(key, meta["size"], meta["last_modified"])

    async def delete_incoming(self, key: str) -> None:
        _check_incoming(key)
        with _unavailable_on_failure():
            await obstore.delete_async(self.store, key)

    def multipart(self) -> Multipart | None:
        """The multipart calls obstore does not make (api/core/s3multipart.py); None without our own
        signer (no static credentials): then an upload goes up in one `PUT` or through the API."""
        return None if self.presigner is None else Multipart(self.presigner)

    async def adopt_upload(self, key: str, sha256: str, size: int, copy_to: Path | None = None) -> StoredBlob:
        """Move the object an agent sent to `key` under its hash, checked: its size by a HEAD, then its
        content by reading it once from the blob's key, which only the API writes (so the agent's URL,
        still valid, cannot change the bytes after the check). `copy_to` receives them on the way (the
        archive checks of a package need a file). An object that fails is deleted and refused (422
        `upload_mismatch`, `upload_corrupt`); none at all is 409 `upload_missing`. The upload's own
        key is deleted in every case."""
        target = self.key_of(sha256)
        try:
            found = await self._head_size(key)
            if found is None:
                raise Conflict(f"nothing was uploaded for {sha256}", code="upload_missing")
            if found != size:
                raise InvalidInput(
                    f"the upload is {found} bytes, not the {size} announced: deleted", code="upload_mismatch"
                )
            if await self._head_size(target) is not None:
                created = False  # stored meanwhile by another upload: the API's copy is the one kept
            else:
                multipart = self.multipart()
                if found > self.copy_part_bytes and multipart is not None:
                    await multipart.copy(
                        self.whole_key(key), self.whole_key(target), found, part_bytes=self.copy_part_bytes
                    )
                else:
                    with _unavailable_on_failure():
                        await obstore.copy_async(self.store, key, target)
                created = True
        finally:
            with _unavailable_on_failure():
                await obstore.delete_async(self.store, key)
        if not created and copy_to is None:
            return StoredBlob(
                sha256, size, created=False, store=self
            )  # the stored blob was checked when stored
        try:
            await read_through(await self.open(sha256), copy_to)
        except BlobCorrupt:
            if created:
                await self.delete(sha256)
            raise InvalidInput(
                f"the upload does not hash to {sha256}: deleted", code="upload_corrupt"
            ) from None
        return StoredBlob(sha256, size, created=created, store=self)

    def temp_file(self) -> AbstractContextManager[Path]:
        return scratch_file(self.temp_dir)

    def cleanup_temp(self, older_than_seconds: float) -> int:
        return remove_stale(self.temp_dir, older_than_seconds)

    async def _head_size(self, key: str) -> int | None:
        with _unavailable_on_failure():
            try:
                meta = await obstore.head_async(self.store, key)
            except FileNotFoundError:
                return None
        return meta["size"]

    async def _send(self, path: Path, sha256: str, size: int) -> StoredBlob:
        key = self.key_of(sha256)
        with _unavailable_on_failure():
            if size <= PART_BYTES:
                # One request, conditional: an object already under the key is never overwritten.
                try:
                    await obstore.put_async(self.store, key, path, mode="create", use_multipart=False)
                except AlreadyExistsError:
                    return StoredBlob(sha256, size, created=False, store=self)
                return StoredBlob(sha256, size, created=True, store=self)
            if await self._head_size(key) is not None:
                return StoredBlob(sha256, size, created=False, store=self)
            # S3 applies no condition to a multipart upload's parts; the object appears whole at
            # completion, and a failed upload is aborted by the client (a bucket lifecycle rule
            # catches the ones a crash leaves: docs/storage.md).
            await obstore.put_async(
                self.store,
                key,
                path,
                use_multipart=True,
                chunk_size=PART_BYTES,
                max_concurrency=PARTS_IN_FLIGHT,
            )
        return StoredBlob(sha256, size, created=True, store=self)


async def read_through(chunks: AsyncIterator[bytes], copy_to: Path | None) -> None:
    """Read a verified stream to its end (its hash is checked there), into `copy_to` if given."""
    if copy_to is None:
        async for _ in chunks:
            pass
        return
    handle = await anyio.to_thread.run_sync(copy_to.open, "wb")
    try:
        async for chunk in chunks:
            await anyio.to_thread.run_sync(handle.write, chunk)
    finally:
        handle.close()


async def _chunks(result: "GetResult") -> AsyncGenerator[bytes, None]:
    with _unavailable_on_failure():
        async for chunk in result.stream(min_chunk_size=CHUNK_BYTES):
            yield bytes(chunk)


@contextmanager
def _unavailable_on_failure() -> Iterator[None]:
    """The store's own failures (refused credentials, an unreachable server once retries ran out) as
    503 `blob_store_unavailable`: the server's trouble, said plainly, never a bare 500."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (BaseError, OSError) as error:
        raise ServiceUnavailable(
            f"the blob store failed: {type(error).__name__}", code="blob_store_unavailable"
        ) from error


def _check_incoming(key: str) -> None:
    if not key.startswith("incoming/") or ".." in key.split("/"):
        raise ValueError(f"{key} is not under incoming/")


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def blob_store(settings: Settings) -> BlobStore:
    """The store `TRAINYARD_BLOB_STORE` names: S3 for an s3:// URL, else a local folder."""
    if settings.s3_bucket_and_prefix is not None:
        return S3BlobStore.from_settings(settings)
    return LocalBlobStore(settings.blob_folder)
