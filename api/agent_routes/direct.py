"""Presigned URLs for agents that said `direct_blobs` in their hello (docs/storage.md, "Presigned URLs").

Fetches: on an S3 store, such an agent's `GET runs/{run_id}/package`, `/blobs/{sha256}` and `/checkpoint`
answer 307 to a presigned GET of the one object; the agent follows with a client of its own (no
token) and checks the sha256 as before. Any other agent, and every agent on a local store, is served
the bytes by the API, as before.

Outputs: `POST runs/{run_id}/outputs/uploads` answers `stored`, a presigned PUT of a key of the run's
own (`S3BlobStore.incoming_key`), presigned PUTs of the parts of a multipart upload on that key (past
`TRAINYARD_DIRECT_UPLOAD_PART_BYTES`, where the API signs with static credentials), or none of these
(send the file through the API). The agent then reports the output by reference (`Content-Type:
application/json`, a `BlobReference`, with the upload id and the parts' ETags for a multipart upload)
on the route that took the file before; the API completes a multipart upload, then moves the object
under its hash only once its size and its hash are checked.
"""

import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from api.agent_routes.service import agent_machine
from api.core.blobs import BlobStore, StoredBlob
from api.core.db import SessionDep
from api.core.deps import BlobsDep, SettingsDep
from api.core.downloads import blob_response, etag_matches, etag_of, not_modified
from api.core.errors import Conflict, InvalidInput, PayloadTooLarge, error_responses
from api.core.s3blobs import MAX_URL_LIFETIME, S3BlobStore, read_through
from api.core.s3multipart import MAX_PART_BYTES
from api.core.security import CurrentAgent
from api.runs.service import machine_run
from shared.direct_blobs import BLOB_REFERENCE_TYPE, DIRECT_BLOBS, BlobReference, UploadTicket
from shared.enums import RunStatus

router = APIRouter(prefix="/agent/runs/{run_id}", tags=["agent"], responses=error_responses(401, 403, 404))

# A fetch is followed at once, so minutes are plenty; S3 checks the expiry when a request starts, so a
# long download that began in time runs to its end. An upload URL waits for the agent's whole PUT.
FETCH_URL_LIFETIME = timedelta(minutes=5)
UPLOAD_URL_LIFETIME = timedelta(minutes=15)
# One presigned PUT carries an object of up to 5 GiB (S3's limit). Past the part size, an upload goes up
# in parts where the API has static credentials to sign them with (obstore's signer does not sign
# `uploadId`/`partNumber`; api/core/sigv4.py does), up to the API's own output limit
# (`max_package_bytes`); without them, a larger output goes through the API.
MAX_DIRECT_UPLOAD_BYTES = 5 * 1024**3
# At most this many parts are handed out (S3 allows 10,000): the ticket stays ~0.5 MB of URLs, and the
# part size grows instead; every part but the last is at least S3's 5 MiB (the setting's own floor).
MAX_UPLOAD_PARTS = 1000
# The parts' URLs are handed out at once, so they live as long as the whole upload may take at a slow
# rate (2 MiB/s, a shared uplink of 16 Mbit/s), plus the 15 minutes a single PUT gets: S3 checks the
# expiry when a part's request starts. 80 GiB at that rate is 11.5 h; SigV4's 7 days bound it.
SLOW_UPLOAD_BYTES_PER_SECOND = 2 * 1024**2
# A report lists up to 10,000 ETags of at most 100 characters.
_MAX_REFERENCE_BYTES = 2 * 1024**2
# The OpenAPI document's second body of the output routes: the reference to a direct upload.
# An output's route takes its file or, as `application/json`, a `BlobReference` to its direct upload
# (docs/storage.md). The document names only the file's type: openapi-python-client (docs/clients.md)
# generates a client that does not import for a body of two types (its `| Unset` goes unimported).
# Outputs of every kind are taken while the run is active; artifacts also once it failed or stopped
# (api/agent_routes/io.py). The report itself checks its own kind.
_TAKING_OUTPUTS = frozenset({RunStatus.RUNNING, RunStatus.STOPPING, RunStatus.FAILED, RunStatus.STOPPED})

T = TypeVar("T")


async def input_response(
    session: AsyncSession,
    agent: CurrentAgent,
    blobs: BlobStore,
    request: Request,
    sha256: str,
    size: int,
    media_type: str,
    filename: str,
) -> Response:
    """One of a run's inputs: 307 to a presigned GET for an agent that follows one, else streamed."""
    if_none_match = request.headers.get("if-none-match")
    if etag_matches(if_none_match, sha256):
        return not_modified(sha256)
    url = await blobs.url_for(sha256, FETCH_URL_LIFETIME)  # None on a local store: no query then
    if url is not None and DIRECT_BLOBS in (await agent_machine(session, agent.machine_id)).capabilities:
        headers = {"Location": url, "ETag": etag_of(sha256), "Cache-Control": "no-store"}
        return Response(status_code=307, headers=headers)
    return await blob_response(blobs, sha256, size, media_type, if_none_match, filename=filename)


@router.post(
    "/outputs/uploads",
    operation_id="agent_runs_outputs_upload_ticket",
    responses=error_responses(409, 413, 422),
)
async def upload_ticket(
    run_id: uuid.UUID,
    reference: BlobReference,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    agent: CurrentAgent,
) -> UploadTicket:
    """How to send an output of `sha256` and `size`: not at all (`stored`), to a presigned PUT (`url`),
    or through the API as before (neither)."""
    run = await machine_run(session, agent.machine_id, run_id)
    if RunStatus(run.status) not in _TAKING_OUTPUTS:
        raise Conflict(f"run {run.id} is {run.status}: it takes no outputs", code="run_not_receiving")
    _check_size(reference, settings.max_package_bytes)
    if await blobs.exists(reference.sha256):
        await _check_stored_size(blobs, reference)
        return UploadTicket(stored=True)
    if not isinstance(blobs, S3BlobStore):
        return UploadTicket(stored=False)
    key = S3BlobStore.incoming_key(str(run.id), reference.sha256)
    multipart = blobs.multipart()
    if reference.size > settings.direct_upload_part_bytes and multipart is not None:
        part_bytes = part_size(reference.size, settings.direct_upload_part_bytes)
        if part_bytes > MAX_PART_BYTES:
            return UploadTicket(stored=False)
        lifetime = parts_lifetime(reference.size)
        whole = blobs.whole_key(key)
        upload_id = await multipart.create(whole)
        return UploadTicket(
            stored=False,
            upload_id=upload_id,
            part_bytes=part_bytes,
            parts=multipart.part_urls(whole, upload_id, math.ceil(reference.size / part_bytes), lifetime),
            expires_in=lifetime.total_seconds(),
        )
    if reference.size > MAX_DIRECT_UPLOAD_BYTES:
        return UploadTicket(stored=False)
    url = await blobs.upload_url(key, UPLOAD_URL_LIFETIME)
    return UploadTicket(stored=False, url=url, expires_in=UPLOAD_URL_LIFETIME.total_seconds())


def part_size(size: int, part_bytes: int) -> int:
    """`part_bytes`, grown to whole MiB where `size` would take more than `MAX_UPLOAD_PARTS` parts."""
    if math.ceil(size / part_bytes) <= MAX_UPLOAD_PARTS:
        return part_bytes
    mib = 1024**2
    return math.ceil(size / MAX_UPLOAD_PARTS / mib) * mib


def parts_lifetime(size: int) -> timedelta:
    slow = timedelta(seconds=size / SLOW_UPLOAD_BYTES_PER_SECOND) + UPLOAD_URL_LIFETIME
    return min(slow, MAX_URL_LIFETIME)


async def reference_in(request: Request) -> BlobReference | None:
    """The `BlobReference` an output's body holds when it is sent by reference, else None (the file)."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != BLOB_REFERENCE_TYPE:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_REFERENCE_BYTES:
            raise InvalidInput("a reference to an upload is a small JSON object", code="invalid_reference")
    try:
        reference = BlobReference.model_validate_json(bytes(body))
    except ValidationError:
        reference = None
    if reference is None or (reference.upload_id is None) != (reference.etags is None):
        raise InvalidInput(
            'a reference to an upload reads {"sha256": "<64 hex digits>", "size": <bytes>}, and for an'
            ' upload in parts "upload_id" and "etags" too',
            code="invalid_reference",
        ) from None
    return reference


async def adopt(
    blobs: BlobStore, run_id: uuid.UUID, reference: BlobReference, *, max_bytes: int
) -> StoredBlob:
    """The blob an output refers to, checked: already stored (its size matches), or the run's direct
    upload moved under its hash once its size and hash match (else deleted and refused)."""
    _check_size(reference, max_bytes)
    if await blobs.exists(reference.sha256):
        await _drop_parts(blobs, run_id, reference)
        await _check_stored_size(blobs, reference)
        return StoredBlob(reference.sha256, reference.size, created=False, store=blobs)
    if not isinstance(blobs, S3BlobStore):
        raise Conflict(f"no blob {reference.sha256} is stored: send the file", code="upload_missing")
    key = await _completed(blobs, run_id, reference)
    return await blobs.adopt_upload(key, reference.sha256, reference.size)


async def adopt_checked(
    blobs: BlobStore,
    run_id: uuid.UUID,
    reference: BlobReference,
    check: Callable[[Path], Awaitable[T]],
    *,
    max_bytes: int,
) -> tuple[StoredBlob, T]:
    """`adopt` for an output the API inspects as a file (a package, a checkpoint): its bytes land in a
    scratch file on the way through the hash check, and `check` reads that. A blob this adoption
    stored and `check` refused is deleted again: nothing refers to it."""
    _check_size(reference, max_bytes)
    with blobs.temp_file() as path:
        if await blobs.exists(reference.sha256):
            await _drop_parts(blobs, run_id, reference)
            await _check_stored_size(blobs, reference)
            await read_through(await blobs.open(reference.sha256), path)  # verified on the way
            stored = StoredBlob(reference.sha256, reference.size, created=False, store=blobs)
        elif isinstance(blobs, S3BlobStore):
            key = await _completed(blobs, run_id, reference)
            stored = await blobs.adopt_upload(key, reference.sha256, reference.size, copy_to=path)
        else:
            raise Conflict(f"no blob {reference.sha256} is stored: send the file", code="upload_missing")
        try:
            return stored, await check(path)
        except BaseException:
            if stored.created:
                await blobs.delete(stored.sha256)
            raise


async def _completed(blobs: S3BlobStore, run_id: uuid.UUID, reference: BlobReference) -> str:
    """The run's incoming key of `reference`, its multipart upload completed first if it names one. A
    completion S3 refuses (a forged upload id, a part missing, a wrong ETag) aborts every upload open
    on the key: nothing stays behind, and the agent starts over with a new ticket."""
    key = S3BlobStore.incoming_key(str(run_id), reference.sha256)
    if reference.upload_id is None or reference.etags is None:
        return key
    multipart = blobs.multipart()
    if multipart is None:
        raise Conflict("this store hands out no upload in parts", code="upload_missing")
    whole = blobs.whole_key(key)
    try:
        await multipart.complete(whole, reference.upload_id, reference.etags)
    except (Conflict, InvalidInput):
        await multipart.abort_all(whole)
        raise
    return key


async def _drop_parts(blobs: BlobStore, run_id: uuid.UUID, reference: BlobReference) -> None:
    """A multipart upload of content stored meanwhile is not needed: aborted, not completed."""
    if reference.upload_id is None or not isinstance(blobs, S3BlobStore):
        return
    multipart = blobs.multipart()
    if multipart is not None:
        await multipart.abort_all(blobs.whole_key(S3BlobStore.incoming_key(str(run_id), reference.sha256)))


def _check_size(reference: BlobReference, max_bytes: int) -> None:
    if reference.size > max_bytes:
        raise PayloadTooLarge(f"the upload is over {max_bytes} bytes", code="upload_too_large")


async def _check_stored_size(blobs: BlobStore, reference: BlobReference) -> None:
    stored = await blobs.size(reference.sha256)
    if stored != reference.size:
        raise InvalidInput(
            f"blob {reference.sha256} is {stored} bytes, not {reference.size}", code="upload_mismatch"
        )
