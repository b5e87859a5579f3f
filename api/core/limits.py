"""Request bodies over the limit are refused with 413 before they are read whole."""

import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.errors import PayloadTooLarge, problem_response

# The upload routes (the REST API's and the console's) stream their bodies to the blob store under
# limits of their own; every other route gets at most `max_bytes`, whatever its Content-Type says.
STREAMED_PATHS = re.compile(
    r"^(?:/api/v1/(?:projects/[^/]+/(?:packages|datasets)/[^/]+/versions"
    r"|agent/runs/[^/]+/outputs/(?:package|checkpoint|artifacts/.+))"
    r"|/ui/projects/[^/]+/(?:packages|datasets)/upload)$"
)
# An agent's telemetry batch is larger than other JSON bodies: up to 50,000 points after a backlog.
TELEMETRY_PATH = re.compile(r"^/api/v1/agent/runs/[^/]+/telemetry$")


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, max_telemetry_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_telemetry_bytes = max_telemetry_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("POST", "PUT") and STREAMED_PATHS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        limit = self.max_telemetry_bytes if TELEMETRY_PATH.match(scope["path"]) else self.max_bytes
        # Not a dict of the headers: this frame lives as long as the request, a held long-poll's too.
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value  # the last one, as a dict of them would have it
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(scope, receive, send, limit)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"the request body is over {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = problem_response(
        413, PayloadTooLarge.code, PayloadTooLarge.title, f"the request body is over {limit} bytes"
    )
    await response(scope, receive, send)
