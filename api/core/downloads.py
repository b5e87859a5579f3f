"""Download responses: a blob streamed under its sha256 as `ETag`, and a scratch file removed after.

Every download of the API goes through here: packages, dataset files, artifacts, the agent's inputs.
People's downloads from an S3 store are answered 307 to a presigned GET instead (docs/storage.md,
"Downloads to people"); the agent's routes have their own redirect (api/agent_routes/direct.py).
"""

import mimetypes
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import anyio.to_thread
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from api.core.blobs import CHUNK_BYTES, BlobStore

OCTET_STREAM = "application/octet-stream"
# A person's client follows a redirect at once; S3 checks the expiry when a request starts, so a long
# download that began in time runs to its end.
DOWNLOAD_URL_LIFETIME = timedelta(minutes=5)
# The one OpenAPI entry of a people's download route for its redirect.
REDIRECT_RESPONSE: dict[int | str, dict[str, object]] = {
    307: {
        "description": "On an S3 store: the file is at `Location`, a presigned URL valid for minutes "
        "(follow it without the token); ETag = sha256"
    }
}


def media_type_of(path: str) -> str:
    return mimetypes.guess_type(path, strict=False)[0] or OCTET_STREAM


def etag_of(sha256: str) -> str:
    return f'"{sha256}"'


def etag_matches(if_none_match: str | None, sha256: str) -> bool:
    """Whether an `If-None-Match` header names this content (weak validators count: RFC 9110 13.1.2)."""
    if if_none_match is None:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag_of(sha256):
            return True
    return False


def not_modified(sha256: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag_of(sha256)})


def attachment(filename: str) -> str:
    """A `Content-Disposition` naming the file, in RFC 6266's form for any alphabet.

    Always `attachment`: a file a package or a dataset brought (an `.html` artifact, an `.svg`) is
    saved, never shown as a page of this origin. The name is the path's last part, without control
    characters; every other byte is percent-encoded, so no name can end the header or add one."""
    filename = "".join(c for c in filename.rpartition("/")[2] if c.isprintable()) or "download"
    encoded = quote(filename, safe="")
    if encoded == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename*=UTF-8''{encoded}"


async def blob_response(
    blobs: BlobStore,
    sha256: str,
    size: int,
    media_type: str,
    if_none_match: str | None,
    *,
    filename: str,
    redirect: bool = False,
) -> Response:
    """The blob streamed as an attachment named `filename`, or 304 when the client holds it already.

    With `redirect` (a person's download, `settings.s3_redirect_downloads`), a store that has URLs
    answers 307 to a presigned GET that makes S3 send the same `Content-Disposition` and type. The
    caller has checked the permission already; the URL is for this one blob and lives minutes."""
    if etag_matches(if_none_match, sha256):
        return not_modified(sha256)
    if redirect:
        url = await blobs.download_url(
            sha256, DOWNLOAD_URL_LIFETIME, filename=filename, media_type=media_type
        )
        if url is not None:
            headers = {"Location": url, "ETag": etag_of(sha256), "Cache-Control": "private, no-store"}
            return Response(status_code=307, headers=headers)
    chunks = await blobs.open(sha256)  # 404 `blob_not_found` now, before the status is sent
    headers = {
        "ETag": etag_of(sha256),
        "Content-Length": str(size),
        "Content-Disposition": attachment(filename),
    }
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


class ScratchFileResponse(StreamingResponse):
    """A scratch file streamed, then removed by `release` however the response ended (sent, cut off,
    or never started). The file is read here rather than handed to the server (`FileResponse` may use
    `pathsend`), so it is never removed while a server still reads it."""

    def __init__(
        self, path: Path, release: Callable[[], None], *, media_type: str, headers: dict[str, str]
    ) -> None:
        super().__init__(_read(path), media_type=media_type, headers=headers)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _read(path: Path) -> AsyncIterator[bytes]:
    handle = await anyio.to_thread.run_sync(path.open, "rb")
    try:
        while chunk := await anyio.to_thread.run_sync(handle.read, CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()
