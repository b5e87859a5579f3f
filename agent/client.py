"""The agent's typed client for `/api/v1/agent/...`, with retries.

Transport errors (connect errors, timeouts, remote disconnects), 429 and 5xx are retried with
full-jitter exponential backoff, honouring `Retry-After`; any other 4xx raises `ApiRejected` at once.
Each call may cap its retrying (`retry_for` seconds, `attempts`); with neither it retries until the
API answers, as the agent's loops must survive an outage of the API. The token travels only in the
`Authorization` header and is never logged.
"""

import hashlib
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import anyio
import httpx
from pydantic import BaseModel, TypeAdapter

from agent.config import AgentSettings
from shared.protocol import (
    Command,
    CommandAckReply,
    DatasetManifest,
    ExitedEvent,
    FinishedEvent,
    Hello,
    HelloReply,
    LaunchedEvent,
    OutputReply,
    RunEventReply,
    SnapshotUpload,
    StageEvent,
    TelemetryBatch,
    TelemetryReply,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

API_PREFIX = "/api/v1/agent"
CHUNK_BYTES = 1024 * 1024
POLL_MARGIN_SECONDS = 10.0
MAX_RETRY_AFTER_SECONDS = 600.0
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# Worth another attempt: the request may not have reached the API, or its answer was lost.
RETRIED_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_COMMANDS = TypeAdapter(list[Command])

AnyRunEvent = LaunchedEvent | StageEvent | ExitedEvent | FinishedEvent


class ApiError(Exception):
    """The base of the client's errors."""


class ApiRejected(ApiError):
    """The API refused the request (a 4xx other than 429): retrying would not help."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


class ApiUnavailable(ApiError):
    """The API did not answer within the call's `retry_for` or `attempts`."""

    def __init__(self, what: str, attempts: int, last: str) -> None:
        super().__init__(f"{what}: gave up after {attempts} attempts (last: {last})")
        self.attempts, self.last = attempts, last


class ChecksumMismatch(ApiError):
    """A download's content does not hash to the sha256 expected."""


class _Retry(Exception):
    """One attempt's answer is worth another attempt (429, 5xx)."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after = status, retry_after


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds to wait: delta-seconds or an HTTP date; None when absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _rejected(response: httpx.Response) -> ApiRejected:
    code, detail = f"http_{response.status_code}", response.text[:500]
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        detail = str(body.get("detail") or body.get("title") or detail)
    return ApiRejected(response.status_code, code, detail)


async def _check(response: httpx.Response) -> None:
    """Raise `_Retry` or `ApiRejected` for an answer that is not a success."""
    if response.is_success:
        return
    await response.aread()
    if response.status_code == 429 or response.status_code >= 500:
        raise _Retry(response.status_code, parse_retry_after(response.headers.get("retry-after")))
    raise _rejected(response)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as file:
        while chunk := await file.read(CHUNK_BYTES):
            yield chunk


class ApiClient:
    """`async with ApiClient(settings) as api: await api.hello(...)`."""

    def __init__(self, settings: AgentSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        self._http = httpx.AsyncClient(
            base_url=settings.api_url + API_PREFIX,
            headers={"Authorization": f"Bearer {settings.token()}"},
            timeout=DEFAULT_TIMEOUT,
            transport=transport,
            follow_redirects=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # Retrying.

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        ceiling = min(self._settings.retry_max, self._settings.retry_initial * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # full jitter: a fleet of agents does not retry in step

    async def _retrying(
        self,
        what: str,
        attempt_once: Callable[[], Awaitable[T]],
        *,
        retry_for: float | None,
        attempts: int | None,
    ) -> T:
        deadline = None if retry_for is None else time.monotonic() + retry_for
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                return await attempt_once()
            except _Retry as error:
                last, retry_after = str(error), error.retry_after
            except RETRIED_TRANSPORT_ERRORS as error:
                last = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            delay = self._delay(attempt, retry_after)
            out_of_attempts = attempts is not None and attempt >= attempts
            if out_of_attempts or (deadline is not None and time.monotonic() + delay > deadline):
                raise ApiUnavailable(what, attempt, last)
            logger.warning("%s failed (%s); attempt %d, retrying in %.2f s", what, last, attempt, delay)
            await anyio.sleep(delay)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        http_timeout: httpx.Timeout | None = None,
        retry_for: float | None = None,
        attempts: int | None = None,
    ) -> httpx.Response:
        async def once() -> httpx.Response:
            response = await self._http.request(
                method, path, json=json, params=params, timeout=http_timeout or DEFAULT_TIMEOUT
            )
            await _check(response)
            return response

        return await self._retrying(f"{method} {path}", once, retry_for=retry_for, attempts=attempts)

    async def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        response = await self._call(method, path, **kwargs)
        return model.model_validate_json(response.content)

    # The routes.

    async def hello(
        self, hello: Hello, *, retry_for: float | None = None, attempts: int | None = None
    ) -> HelloReply:
        return await self._model(
            HelloReply,
            "POST",
            "/hello",
            json=hello.model_dump(mode="json"),
            retry_for=retry_for,
            attempts=attempts,
        )

    async def poll(
        self, wait: float, *, retry_for: float | None = None, attempts: int | None = None
    ) -> list[Command]:
        """Commands not yet acknowledged; with none, held by the API up to `wait` seconds."""
        response = await self._call(
            "GET",
            "/commands",
            params={"wait": wait},
            http_timeout=httpx.Timeout(DEFAULT_TIMEOUT.connect, read=wait + POLL_MARGIN_SECONDS),
            retry_for=retry_for,
            attempts=attempts,
        )
        return _COMMANDS.validate_json(response.content)

    async def ack(
        self, command_id: uuid.UUID, *, retry_for: float | None = None, attempts: int | None = None
    ) -> CommandAckReply:
        return await self._model(
            CommandAckReply, "POST", f"/commands/{command_id}/ack", retry_for=retry_for, attempts=attempts
        )

    async def report(
        self,
        run_id: uuid.UUID,
        event: AnyRunEvent,
        *,
        retry_for: float | None = None,
        attempts: int | None = None,
    ) -> RunEventReply:
        return await self._model(
            RunEventReply,
            "POST",
            f"/runs/{run_id}/events",
            json=event.model_dump(mode="json"),
            retry_for=retry_for,
            attempts=attempts,
        )

    async def telemetry(
        self,
        run_id: uuid.UUID,
        batch: TelemetryBatch,
        *,
        retry_for: float | None = None,
        attempts: int | None = None,
    ) -> TelemetryReply:
        """One batch of the run's metric points and log lines; a repeat of a seq is a no-op."""
        return await self._model(
            TelemetryReply,
            "POST",
            f"/runs/{run_id}/telemetry",
            json=batch.model_dump(mode="json"),
            retry_for=retry_for,
            attempts=attempts,
        )

    async def dataset_manifest(
        self,
        run_id: uuid.UUID,
        test: bool = False,
        *,
        retry_for: float | None = None,
        attempts: int | None = None,
    ) -> DatasetManifest:
        route = "test-dataset" if test else "dataset"
        return await self._model(
            DatasetManifest, "GET", f"/runs/{run_id}/{route}", retry_for=retry_for, attempts=attempts
        )

    async def upload_snapshot(
        self,
        run_id: uuid.UUID,
        snapshot: SnapshotUpload,
        *,
        retry_for: float | None = None,
        attempts: int | None = None,
    ) -> OutputReply:
        return await self._model(
            OutputReply,
            "PUT",
            f"/runs/{run_id}/outputs/snapshot",
            json=snapshot.model_dump(mode="json"),
            retry_for=retry_for,
            attempts=attempts,
        )

    async def upload_evaluation(
        self,
        run_id: uuid.UUID,
        evaluation: dict[str, Any],
        *,
        retry_for: float | None = None,
        attempts: int | None = None,
    ) -> OutputReply:
        return await self._model(
            OutputReply,
            "PUT",
            f"/runs/{run_id}/outputs/evaluation",
            json=evaluation,
            retry_for=retry_for,
            attempts=attempts,
        )

    # Streams.

    async def _download(
        self,
        path: str,
        dest_path: Path,
        expected_sha256: str | None,
        *,
        retry_for: float | None,
        attempts: int | None,
    ) -> str:
        """Stream `path` into a temporary file beside `dest_path`, verify its sha256 (the one expected,
        else the `ETag`), then rename it into place. Returns the sha256."""
        dest_path = Path(dest_path)

        async def once() -> str:
            partial = dest_path.with_name(f".{dest_path.name}.{uuid.uuid4().hex}.part")
            try:
                async with self._http.stream("GET", path) as response:
                    await _check(response)
                    etag = response.headers.get("etag", "").removeprefix("W/").strip('"')
                    expected = expected_sha256 or etag
                    digest = hashlib.sha256()
                    async with await anyio.open_file(partial, "wb") as file:
                        async for chunk in response.aiter_bytes(CHUNK_BYTES):
                            digest.update(chunk)
                            await file.write(chunk)
                actual = digest.hexdigest()
                if not expected:
                    raise ChecksumMismatch(f"GET {path}: the API sent no sha256 (ETag) to verify")
                if actual != expected.lower():
                    raise ChecksumMismatch(f"GET {path}: sha256 {actual} does not match {expected}")
                os.replace(partial, dest_path)
                return actual
            finally:
                partial.unlink(missing_ok=True)

        return await self._retrying(f"GET {path}", once, retry_for=retry_for, attempts=attempts)

    async def download_package(
        self,
        run_id: uuid.UUID,
        dest_path: Path,
        sha256: str | None = None,
        *,
        retry_for: float | None = None,
        attempts: int | None = None,
    ) -> str:
        """The run's package zip into `dest_path`, verified against `sha256` (else the ETag)."""
        return await self._download(
            f"/runs/{run_id}/package", dest_path, sha256, retry_for=retry_for, attempts=attempts
        )

    async def download_blob(
        self,
        run_id: uuid.UUID,
        sha256: str,
        dest_path: Path,
        *,
        retry_for: float | None = None,
        attempts: int | None = None,
    ) -> str:
        """One of the run's input files, by its hash, into `dest_path`."""
        return await self._download(
            f"/runs/{run_id}/blobs/{sha256}", dest_path, sha256, retry_for=retry_for, attempts=attempts
        )

    async def _upload(
        self,
        path: str,
        source: Path,
        content_type: str,
        *,
        retry_for: float | None,
        attempts: int | None,
    ) -> OutputReply:
        source = Path(source)

        async def once() -> OutputReply:
            size = (await anyio.Path(source).stat()).st_size
            response = await self._http.put(
                path,
                content=_file_chunks(source),  # opened afresh by each attempt
                headers={"Content-Type": content_type, "Content-Length": str(size)},
            )
            await _check(response)
            return OutputReply.model_validate_json(response.content)

        return await self._retrying(f"PUT {path}", once, retry_for=retry_for, attempts=attempts)

    async def upload_package(
        self,
        run_id: uuid.UUID,
        path: Path,
        *,
        retry_for: float | None = None,
        attempts: int | None = None,
    ) -> OutputReply:
        """The trained package folder, zipped at `path`, as the run's next version."""
        return await self._upload(
            f"/runs/{run_id}/outputs/package",
            path,
            "application/zip",
            retry_for=retry_for,
            attempts=attempts,
        )

    async def upload_artifact(
        self,
        run_id: uuid.UUID,
        relative_path: str,
        path: Path,
        *,
        retry_for: float | None = None,
        attempts: int | None = None,
    ) -> OutputReply:
        """One file of the run's `artifacts_directory`, under its relative path."""
        return await self._upload(
            f"/runs/{run_id}/outputs/artifacts/{quote(relative_path, safe='/')}",
            path,
            "application/octet-stream",
            retry_for=retry_for,
            attempts=attempts,
        )
