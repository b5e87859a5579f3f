"""The multipart calls of S3 that obstore does not expose, signed with our own SigV4 (api/core/sigv4.py).

An agent's direct upload past `TRAINYARD_DIRECT_UPLOAD_PART_BYTES` goes up in parts (docs/storage.md,
"Presigned URLs"): the API creates the multipart upload on the run's incoming key, hands out one
presigned `PUT` per part (`partNumber`, `uploadId` under the signature), and completes it with the
ETags the agent reports. Adopting an object of more than 5 GiB (S3's limit of one `CopyObject`) copies
it in parts (`UploadPartCopy`). The collector lists and aborts what agents left open under `incoming/`.

Each call is one request with a presigned URL of a minute (the API's own, sent at once). S3's answers
are small XML documents, read up to a bound and parsed by `xml.etree` (S3 sends no entities; the bound
keeps a broken server from filling memory). What S3 fails on is 503 `blob_store_unavailable`, as for
the rest of the store; what the agent got wrong (a forged upload id, a missing part, a wrong ETag) is
409 `upload_missing` or 422 `upload_parts_invalid`.
"""

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

import httpx

from api.core.errors import Conflict, InvalidInput, ServiceUnavailable
from api.core.sigv4 import Presigner

# S3's bounds on a multipart upload (AWS's "Amazon S3 multipart upload limits").
MIN_PART_BYTES = 5 * 1024**2
MAX_PART_BYTES = 5 * 1024**3
MAX_PARTS = 10_000
# A copy of one request stops at 5 GiB: past it, `UploadPartCopy` in parts of at most this.
MAX_COPY_BYTES = 5 * 1024**3
_CALL_LIFETIME = timedelta(minutes=1)  # each call's own URL, sent at once
_MAX_ANSWER_BYTES = 4 * 1024**2  # a list page of 1,000 uploads is ~300 KB
_TIMEOUT = httpx.Timeout(120.0, connect=10.0)  # a part copy of 5 GiB is one request
# What the agent got wrong at completion, as S3 names it: refused, never retried.
_AGENT_ERRORS = frozenset(
    {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML", "InvalidArgument"}
)


@dataclass(frozen=True)
class PendingUpload:
    key: str  # the whole key in the bucket
    upload_id: str
    initiated: datetime


class S3Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


class Multipart:
    """The multipart calls on the keys of one bucket; `key` is always the whole key (the store's
    prefix included: `S3BlobStore.whole_key`)."""

    def __init__(self, presigner: Presigner) -> None:
        self.presigner = presigner

    def part_urls(self, key: str, upload_id: str, parts: int, expires: timedelta) -> list[str]:
        """A presigned `PUT` of each part 1..`parts` (signed here: no request to S3)."""
        return [
            self.presigner.url("PUT", key, expires, query={"partNumber": str(number), "uploadId": upload_id})
            for number in range(1, parts + 1)
        ]

    async def create(self, key: str) -> str:
        """CreateMultipartUpload; its upload id."""
        root = await self._call("POST", key, {"uploads": ""}, raw=False)
        upload_id = _text(root, "UploadId")
        if not upload_id:
            raise _unavailable("CreateMultipartUpload answered no UploadId")
        return upload_id

    async def complete(self, key: str, upload_id: str, etags: Sequence[str]) -> None:
        """CompleteMultipartUpload of parts 1..len(etags). A forged or finished upload id is 409
        `upload_missing`, a part missing or an ETag that is not the part's 422 `upload_parts_invalid`
        (S3 may say either with 200 and an `<Error>` document: read as such)."""
        body = ET.Element("CompleteMultipartUpload")
        for number, etag in enumerate(etags, 1):
            part = ET.SubElement(body, "Part")
            ET.SubElement(part, "PartNumber").text = str(number)
            ET.SubElement(part, "ETag").text = etag
        try:
            await self._call("POST", key, {"uploadId": upload_id}, content=ET.tostring(body), raw=True)
        except S3Error as error:
            if error.code == "NoSuchUpload":
                raise Conflict("no such upload is open for this output", code="upload_missing") from None
            if error.code in _AGENT_ERRORS:
                raise InvalidInput(
                    f"the parts reported do not complete the upload ({error.code})",
                    code="upload_parts_invalid",
                ) from None
            raise _unavailable(str(error)) from error

    async def abort(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload; an upload already gone is no error."""
        try:
            await self._call("DELETE", key, {"uploadId": upload_id}, raw=True)
        except S3Error as error:
            if error.code != "NoSuchUpload":
                raise _unavailable(str(error)) from error

    async def abort_all(self, key: str) -> None:
        """Abort every upload still open on exactly `key`."""
        async for page in self.pending(key):
            for upload in page:
                if upload.key == key:
                    await self.abort(key, upload.upload_id)

    async def pending(self, prefix: str) -> AsyncIterator[list[PendingUpload]]:
        """ListMultipartUploads under `prefix`, a page at a time."""
        markers: dict[str, str] = {}
        while True:
            root = await self._call("GET", "", {"uploads": "", "prefix": prefix, **markers}, raw=False)
            page = []
            for node in _children(root, "Upload"):
                key, upload_id, initiated = (
                    _text(node, "Key"),
                    _text(node, "UploadId"),
                    _text(node, "Initiated"),
                )
                if key and upload_id and initiated:
                    page.append(PendingUpload(key, upload_id, _timestamp(initiated)))
            yield page
            next_key, next_id = _text(root, "NextKeyMarker"), _text(root, "NextUploadIdMarker")
            if _text(root, "IsTruncated") != "true" or not next_key:
                return
            markers = {"key-marker": next_key, "upload-id-marker": next_id or ""}

    async def copy(self, source: str, target: str, size: int, *, part_bytes: int = MAX_COPY_BYTES) -> None:
        """`source` copied to `target` by a multipart copy in parts of `part_bytes` (S3's `CopyObject`
        stops at 5 GiB). The target appears whole at completion or not at all; a failure aborts."""
        if not MIN_PART_BYTES <= part_bytes <= MAX_COPY_BYTES or size > part_bytes * MAX_PARTS:
            raise ValueError("a copy part is 5 MiB to 5 GiB, at most 10,000 of them")
        upload_id = await self.create(target)
        try:
            etags = []
            for number, start in enumerate(range(0, size, part_bytes), 1):
                end = min(start + part_bytes, size) - 1
                headers = {
                    "x-amz-copy-source": quote(f"/{self.presigner.bucket}/{source}"),
                    "x-amz-copy-source-range": f"bytes={start}-{end}",
                }
                query = {"partNumber": str(number), "uploadId": upload_id}
                root = await self._call("PUT", target, query, headers=headers, raw=False)
                etag = _text(root, "ETag")
                if not etag:
                    raise _unavailable("UploadPartCopy answered no ETag")
                etags.append(etag)
            await self.complete(target, upload_id, etags)
        except Exception:
            await self.abort(target, upload_id)
            raise

    async def _call(
        self,
        method: str,
        key: str,
        query: dict[str, str],
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        raw: bool,
    ) -> ET.Element:
        """One signed request; its answer's XML root (an empty element for an empty body). An
        `<Error>` answer, whatever its status, raises `S3Error` when `raw`, else 503 like a transport
        failure."""
        url = self.presigner.url(method, key, _CALL_LIFETIME, query=query, headers=headers)
        try:
            async with (
                httpx.AsyncClient(timeout=_TIMEOUT) as http,
                http.stream(method, url, content=content, headers=headers) as response,
            ):
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_ANSWER_BYTES:
                        raise _unavailable(f"{method} answered more than {_MAX_ANSWER_BYTES} bytes")
        except httpx.HTTPError as error:
            raise _unavailable(f"{type(error).__name__}") from error
        try:
            root = ET.fromstring(bytes(body)) if body.strip() else ET.Element("Empty")
        except ET.ParseError:
            if response.is_success:
                raise _unavailable(f"{method} answered no XML") from None
            root = ET.Element("Empty")
        if _local(root.tag) == "Error" or not response.is_success:
            failed = S3Error(
                response.status_code, _text(root, "Code") or "Unknown", _text(root, "Message") or ""
            )
            if raw:
                raise failed
            raise _unavailable(str(failed)) from failed
        return root


def _unavailable(why: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"the blob store failed: {why}", code="blob_store_unavailable")


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(root: ET.Element, name: str) -> list[ET.Element]:
    return [node for node in root if _local(node.tag) == name]


def _text(root: ET.Element, name: str) -> str | None:
    found = _children(root, name)
    return (found[0].text or "").strip() if found else None


def _timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
