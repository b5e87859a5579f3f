"""The wire of presigned URLs (docs/storage.md, "Presigned URLs"): an agent that says `direct_blobs` in
its hello fetches inputs from the blob store and sends outputs to it, the API handing out one URL per
object and checking what arrived. An agent that does not say it sees none of this."""

from pydantic import Field

from shared.protocol import INT64_MAX, AgentRequest, ApiReply

DIRECT_BLOBS = "direct_blobs"
"""The capability (`Hello.capabilities`): the agent follows a 307 of a fetch to a presigned URL with a
client of its own (no token), and can send an output through `POST runs/{run_id}/outputs/uploads`."""

BLOB_REFERENCE_TYPE = "application/json"
"""The `Content-Type` of an output sent by reference: `PUT .../outputs/package` (`/artifacts/{path}`,
`/checkpoint`) whose body is a `BlobReference` instead of the file."""


class BlobReference(AgentRequest):
    """A blob named by its content: what an agent asks to send, and how it reports what it sent."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, le=INT64_MAX)


class UploadTicket(ApiReply):
    """The answer to `POST runs/{run_id}/outputs/uploads`.

    `stored`: the content is in the store already; report it by reference, send nothing. Else `url`:
    `PUT` the bytes there (no token, `Content-Length` set), then report by reference. Neither: the
    store takes no direct upload (a local folder, or a file past `max_direct_bytes`): send the file
    through the API as before."""

    stored: bool
    url: str | None = Field(default=None, description="A presigned PUT of one object, valid `expires_in` s.")
    expires_in: float | None = None
