"""The wire of presigned URLs (docs/storage.md, "Presigned URLs"): an agent that says `direct_blobs` in
its hello fetches inputs from the blob store and sends outputs to it, the API handing out one URL per
object and checking what arrived. An agent that does not say it sees none of this."""

from typing import Annotated

from pydantic import Field

from shared.protocol import INT64_MAX, AgentRequest, ApiReply

DIRECT_BLOBS = "direct_blobs"
"""The capability (`Hello.capabilities`): the agent follows a 307 of a fetch to a presigned URL with a
client of its own (no token), and can send an output through `POST runs/{run_id}/outputs/uploads`."""

BLOB_REFERENCE_TYPE = "application/json"
"""The `Content-Type` of an output sent by reference: `PUT .../outputs/package` (`/artifacts/{path}`,
`/checkpoint`) whose body is a `BlobReference` instead of the file."""


MAX_PARTS = 10_000
"""S3's bound on the parts of one multipart upload (the API hands out at most 1,000)."""

ETag = Annotated[str, Field(min_length=1, max_length=100)]


class BlobReference(AgentRequest):
    """A blob named by its content: what an agent asks to send, and how it reports what it sent.

    A report of an upload sent in parts (`UploadTicket.parts`) names its `upload_id` and the `ETag`
    header the store answered for each part, in order; the API completes the upload with them."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, le=INT64_MAX)
    upload_id: str | None = Field(default=None, min_length=1, max_length=1024)
    etags: list[ETag] | None = Field(default=None, min_length=1, max_length=MAX_PARTS)


class UploadTicket(ApiReply):
    """The answer to `POST runs/{run_id}/outputs/uploads`.

    `stored`: the content is in the store already; report it by reference, send nothing. Else `url`:
    `PUT` the bytes there (no token, `Content-Length` set), then report by reference. Else `parts`:
    `PUT` bytes `[(n-1) * part_bytes, n * part_bytes)` of the file to the n-th URL, then report by
    reference with `upload_id` and each part's `ETag`. None of these: the store takes no direct upload
    (a local folder, or a file past what one `PUT` carries): send the file through the API as before."""

    stored: bool
    url: str | None = Field(default=None, description="A presigned PUT of one object, valid `expires_in` s.")
    expires_in: float | None = None
    upload_id: str | None = Field(default=None, description="The multipart upload the `parts` belong to.")
    part_bytes: int | None = Field(default=None, description="Every part's size but the last's.")
    parts: list[str] | None = Field(
        default=None, description="A presigned PUT of each part 1..N in order, valid `expires_in` s."
    )
