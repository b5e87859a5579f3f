"""The agent's typed client for `/api/v1/agent/...`, with retries.

Every route follows one `RetryPolicy`: transport errors (connect errors, timeouts, remote
disconnects), 429 and 5xx are retried with full-jitter exponential backoff, honouring `Retry-After`,
and so is a 409 `blob_gone` (the API's blob collector took stored content this upload relied on:
sent again, it is stored anew; docs/storage.md); any other 4xx raises `ApiRejected` at once. The
client's policy (from the settings) retries until the API answers, as the agent's loops must survive
an outage of the API; a call may pass a policy of its own that gives up
(`policy.limited(retry_for=..., attempts=...)`). The token travels only in the `Authorization` header
and is never logged.
"""

import hashlib
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
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
from shared.direct_blobs import BLOB_REFERENCE_TYPE, DIRECT_BLOBS, BlobReference, UploadTicket
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
    ServiceEvent,
    ServiceEventReply,
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
# A direct upload in parts (docs/storage.md): two parts on the wire at a time (a part is read from the
# file a chunk at a time as it goes, so memory stays a few chunks), each tried this often on its own.
PARTS_IN_FLIGHT = 2
PART_ATTEMPTS = 4
# The refusal of an upload whose stored content the API's collector removed meanwhile: send it again.
BLOB_GONE = "blob_gone"

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


@dataclass(frozen=True)
class RetryPolicy:
    """When a call is tried again, after how long, and when it gives up: one object for every route.

    A status in `statuses` or any 5xx is worth another attempt (as are the transport errors in
    `RETRIED_TRANSPORT_ERRORS`); the wait before attempt n+1 is the API's `Retry-After` when it sent
    one, else uniform in [0, min(`maximum`, `initial` * 2**(n-1))] (full jitter: a fleet of agents
    does not retry in step). With neither `attempts` nor `retry_for` it never gives up."""

    initial: float = 0.5
    maximum: float = 30.0
    statuses: frozenset[int] = frozenset({429})
    attempts: int | None = None  # give up after this many attempts
    retry_for: float | None = None  # give up when the next attempt would start past this many seconds

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> "RetryPolicy":
        return cls(initial=settings.retry_initial, maximum=settings.retry_max)

    def limited(self, *, attempts: int | None = None, retry_for: float | None = None) -> "RetryPolicy":
        """This policy, giving up after `attempts` or `retry_for` seconds."""
        return replace(self, attempts=attempts, retry_for=retry_for)

    def retries(self, status: int) -> bool:
        return status in self.statuses or status >= 500

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        return random.uniform(0, min(self.maximum, self.initial * 2 ** (attempt - 1)))


async def _check(response: httpx.Response, policy: RetryPolicy) -> None:
    """Raise `_Retry` or `ApiRejected` for an answer that is not a success."""
    if response.is_success:
        return
    await response.aread()
    if policy.retries(response.status_code):
        raise _Retry(response.status_code, parse_retry_after(response.headers.get("retry-after")))
    rejected = _rejected(response)
    if rejected.code == BLOB_GONE:
        raise _Retry(response.status_code, None)
    raise rejected


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as file:
        while chunk := await file.read(CHUNK_BYTES):
            yield chunk


async def _file_range(path: Path, offset: int, length: int) -> AsyncIterator[bytes]:
    """`length` bytes of `path` from `offset`, a chunk at a time."""
    async with await anyio.open_file(path, "rb") as file:
        await file.seek(offset)
        while length > 0 and (chunk := await file.read(min(CHUNK_BYTES, length))):
            length -= len(chunk)
            yield chunk


async def _check_store(response: httpx.Response, policy: RetryPolicy, what: str) -> None:
    """A presigned request's answer from the blob store: 5xx and 429 retried (the next attempt gets a
    new URL from the API), any other refusal (an expired or forged URL: 403) raised as `ApiRejected`."""
    if response.is_success:
        return
    await response.aread()
    if policy.retries(response.status_code):
        raise _Retry(response.status_code, parse_retry_after(response.headers.get("retry-after")))
    raise ApiRejected(response.status_code, "blob_store_refused", f"{what}: {response.text[:300]}")


async def _save(response: httpx.Response, partial: Path) -> str:
    """A response's body into `partial`; its sha256."""
    digest = hashlib.sha256()
    async with await anyio.open_file(partial, "wb") as file:
        async for chunk in response.aiter_bytes(CHUNK_BYTES):
            digest.update(chunk)
            await file.write(chunk)
    return digest.hexdigest()


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ApiClient:
    """`async with ApiClient(settings) as api: await api.hello(...)`."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy.from_settings(settings)
        self.direct_blobs = settings.direct_blobs
        self._http = httpx.AsyncClient(
            base_url=settings.api_url + API_PREFIX,
            headers={"Authorization": f"Bearer {settings.token()}"},
            timeout=DEFAULT_TIMEOUT,
            transport=transport,
            follow_redirects=False,
        )
        # Presigned URLs of the blob store (docs/storage.md): never the token, never a second redirect.
        self._direct = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, follow_redirects=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._direct.aclose()

    # Retrying.

    async def _retrying(
        self, what: str, attempt_once: Callable[[RetryPolicy], Awaitable[T]], retry: RetryPolicy | None
    ) -> T:
        policy = retry or self.retry
        deadline = None if policy.retry_for is None else time.monotonic() + policy.retry_for
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                return await attempt_once(policy)
            except _Retry as error:
                last, retry_after = str(error), error.retry_after
            except RETRIED_TRANSPORT_ERRORS as error:
                last = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            delay = policy.delay(attempt, retry_after)
            out_of_attempts = policy.attempts is not None and attempt >= policy.attempts
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
        retry: RetryPolicy | None = None,
    ) -> httpx.Response:
        async def once(policy: RetryPolicy) -> httpx.Response:
            response = await self._http.request(
                method, path, json=json, params=params, timeout=http_timeout or DEFAULT_TIMEOUT
            )
            await _check(response, policy)
            return response

        return await self._retrying(f"{method} {path}", once, retry)

    async def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        response = await self._call(method, path, **kwargs)
        return model.model_validate_json(response.content)

    # The routes.

    async def hello(self, hello: Hello, *, retry: RetryPolicy | None = None) -> HelloReply:
        if self.direct_blobs:
            hello = hello.model_copy(update={"capabilities": sorted({*hello.capabilities, DIRECT_BLOBS})})
        return await self._model(
            HelloReply,
            "POST",
            "/hello",
            json=hello.model_dump(mode="json"),
            retry=retry,
        )

    async def poll(self, wait: float, *, retry: RetryPolicy | None = None) -> list[Command]:
        """Commands not yet acknowledged; with none, held by the API up to `wait` seconds."""
        response = await self._call(
            "GET",
            "/commands",
            params={"wait": wait},
            http_timeout=httpx.Timeout(DEFAULT_TIMEOUT.connect, read=wait + POLL_MARGIN_SECONDS),
            retry=retry,
        )
        return _COMMANDS.validate_json(response.content)

    async def ack(self, command_id: uuid.UUID, *, retry: RetryPolicy | None = None) -> CommandAckReply:
        return await self._model(CommandAckReply, "POST", f"/commands/{command_id}/ack", retry=retry)

    async def report(
        self,
        run_id: uuid.UUID,
        event: AnyRunEvent,
        *,
        retry: RetryPolicy | None = None,
    ) -> RunEventReply:
        return await self._model(
            RunEventReply,
            "POST",
            f"/runs/{run_id}/events",
            json=event.model_dump(mode="json"),
            retry=retry,
        )

    async def telemetry(
        self,
        run_id: uuid.UUID,
        batch: TelemetryBatch,
        *,
        retry: RetryPolicy | None = None,
    ) -> TelemetryReply:
        """One batch of the run's metric points and log lines; a repeat of a seq is a no-op."""
        return await self._model(
            TelemetryReply,
            "POST",
            f"/runs/{run_id}/telemetry",
            json=batch.model_dump(mode="json"),
            retry=retry,
        )

    async def dataset_manifest(
        self,
        run_id: uuid.UUID,
        test: bool = False,
        *,
        retry: RetryPolicy | None = None,
    ) -> DatasetManifest:
        route = "test-dataset" if test else "dataset"
        return await self._model(DatasetManifest, "GET", f"/runs/{run_id}/{route}", retry=retry)

    async def upload_snapshot(
        self,
        run_id: uuid.UUID,
        snapshot: SnapshotUpload,
        *,
        retry: RetryPolicy | None = None,
    ) -> OutputReply:
        return await self._model(
            OutputReply,
            "PUT",
            f"/runs/{run_id}/outputs/snapshot",
            json=snapshot.model_dump(mode="json"),
            retry=retry,
        )

    async def upload_evaluation(
        self,
        run_id: uuid.UUID,
        evaluation: dict[str, Any],
        *,
        retry: RetryPolicy | None = None,
    ) -> OutputReply:
        return await self._model(
            OutputReply,
            "PUT",
            f"/runs/{run_id}/outputs/evaluation",
            json=evaluation,
            retry=retry,
        )

    # Streams.

    async def _download(
        self,
        path: str,
        dest_path: Path,
        expected_sha256: str | None,
        *,
        retry: RetryPolicy | None,
    ) -> str:
        """Stream `path` into a temporary file beside `dest_path`, verify its sha256 (the one expected,
        else the `ETag`), then rename it into place. Returns the sha256."""
        dest_path = Path(dest_path)

        async def once(policy: RetryPolicy) -> str:
            partial = dest_path.with_name(f".{dest_path.name}.{uuid.uuid4().hex}.part")
            try:
                async with self._http.stream("GET", path) as response:
                    presigned = self._presigned(response)
                    if presigned is None:
                        await _check(response, policy)
                        actual = await _save(response, partial)
                    etag = response.headers.get("etag", "").removeprefix("W/").strip('"')
                if presigned is not None:
                    # Each attempt asks the API again, so a retry never reuses an old URL.
                    async with self._direct.stream("GET", presigned) as stored:
                        await _check_store(stored, policy, f"GET {path}")
                        actual = await _save(stored, partial)
                    logger.debug("GET %s: fetched from the blob store directly", path)
                expected = expected_sha256 or etag
                if not expected:
                    raise ChecksumMismatch(f"GET {path}: the API sent no sha256 (ETag) to verify")
                if actual != expected.lower():
                    raise ChecksumMismatch(f"GET {path}: sha256 {actual} does not match {expected}")
                os.replace(partial, dest_path)
                return actual
            finally:
                partial.unlink(missing_ok=True)

        return await self._retrying(f"GET {path}", once, retry)

    async def download_package(
        self,
        run_id: uuid.UUID,
        dest_path: Path,
        sha256: str | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> str:
        """The run's package zip into `dest_path`, verified against `sha256` (else the ETag)."""
        return await self._download(f"/runs/{run_id}/package", dest_path, sha256, retry=retry)

    async def download_blob(
        self,
        run_id: uuid.UUID,
        sha256: str,
        dest_path: Path,
        *,
        retry: RetryPolicy | None = None,
    ) -> str:
        """One of the run's input files, by its hash, into `dest_path`."""
        return await self._download(f"/runs/{run_id}/blobs/{sha256}", dest_path, sha256, retry=retry)

    def _presigned(self, response: httpx.Response) -> str | None:
        """The presigned URL of a 307 the API answers an agent that said `direct_blobs`, else None."""
        if response.status_code != 307 or not self.direct_blobs:
            return None
        location: str = response.headers.get("location", "")
        if not location.startswith(("https://", "http://")):
            raise ApiRejected(307, "bad_redirect", "the API redirected to no http(s) URL")
        return location

    async def _upload(
        self,
        run_id: uuid.UUID,
        path: str,
        source: Path,
        content_type: str,
        *,
        retry: RetryPolicy | None,
    ) -> OutputReply:
        source = Path(source)
        reference = None
        if self.direct_blobs:
            sha256, size = await anyio.to_thread.run_sync(_hash_file, source)
            reference = BlobReference(sha256=sha256, size=size)

        async def once(policy: RetryPolicy) -> OutputReply:
            sent = None if reference is None else await self._send_direct(run_id, source, reference, policy)
            if sent is not None:
                # Fields left unset are left out: an API of before forbids the ones it does not know.
                response = await self._http.put(
                    path,
                    content=sent.model_dump_json(exclude_none=True),
                    headers={"Content-Type": BLOB_REFERENCE_TYPE},
                )
                await _check(response, policy)
                return OutputReply.model_validate_json(response.content)
            size = (await anyio.Path(source).stat()).st_size
            response = await self._http.put(
                path,
                content=_file_chunks(source),  # opened afresh by each attempt
                headers={"Content-Type": content_type, "Content-Length": str(size)},
            )
            await _check(response, policy)
            return OutputReply.model_validate_json(response.content)

        return await self._retrying(f"PUT {path}", once, retry)

    async def _send_direct(
        self, run_id: uuid.UUID, source: Path, reference: BlobReference, policy: RetryPolicy
    ) -> BlobReference | None:
        """Put `source` in the blob store past the API when the API offers it (docs/storage.md): the
        reference to report when it is there (already, or sent now: in parts, with their ETags), None
        to send it through the API instead."""
        response = await self._http.post(
            f"/runs/{run_id}/outputs/uploads", json=reference.model_dump(mode="json", exclude_none=True)
        )
        await _check(response, policy)
        ticket = UploadTicket.model_validate_json(response.content)
        if ticket.stored:
            return reference
        if ticket.parts and ticket.upload_id and ticket.part_bytes:
            etags = await self._send_parts(source, reference.size, ticket.parts, ticket.part_bytes, policy)
            logger.debug("PUT %s: sent to the blob store in %d parts", source.name, len(etags))
            return reference.model_copy(update={"upload_id": ticket.upload_id, "etags": etags})
        if ticket.url is None:
            return None
        sent = await self._direct.put(
            ticket.url,
            content=_file_chunks(source),
            headers={"Content-Length": str(reference.size)},
        )
        await _check_store(sent, policy, f"PUT {source.name}")
        logger.debug("PUT %s: sent to the blob store directly (%d bytes)", source.name, reference.size)
        return reference

    async def _send_parts(
        self, source: Path, size: int, urls: list[str], part_bytes: int, policy: RetryPolicy
    ) -> list[str]:
        """Each part of `source` to its URL, `PARTS_IN_FLIGHT` at a time, each read from the file as it
        goes (never a whole part in memory); the ETags the store answered, in order. A part is tried
        `PART_ATTEMPTS` times on a network error or a 5xx; past that the whole upload is tried again
        with a new ticket (the parts sent are left to the API's collector), as a single PUT is."""
        if not (len(urls) - 1) * part_bytes < size <= len(urls) * part_bytes:
            raise ApiRejected(
                200, "bad_ticket", f"{len(urls)} parts of {part_bytes} bytes do not hold {size}"
            )
        etags = [""] * len(urls)
        limiter = anyio.CapacityLimiter(PARTS_IN_FLIGHT)

        async def send(index: int, url: str) -> None:
            offset = index * part_bytes
            length = min(part_bytes, size - offset)
            what = f"PUT {source.name} part {index + 1}"

            async def once(_: RetryPolicy) -> str:
                sent = await self._direct.put(
                    url, content=_file_range(source, offset, length), headers={"Content-Length": str(length)}
                )
                await _check_store(sent, policy, what)
                etag = sent.headers.get("etag")
                if not etag:
                    raise ApiRejected(
                        sent.status_code, "blob_store_refused", f"{what}: no ETag in the answer"
                    )
                return str(etag)

            async with limiter:
                try:
                    etags[index] = await self._retrying(what, once, policy.limited(attempts=PART_ATTEMPTS))
                except ApiUnavailable as error:
                    raise _Retry(503, None) from error

        try:
            async with anyio.create_task_group() as group:
                for index, url in enumerate(urls):
                    group.start_soon(send, index, url)
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first part that failed: the others were cancelled
        return etags

    async def upload_package(
        self,
        run_id: uuid.UUID,
        path: Path,
        *,
        retry: RetryPolicy | None = None,
    ) -> OutputReply:
        """The trained package folder, zipped at `path`, as the run's next version."""
        return await self._upload(
            run_id,
            f"/runs/{run_id}/outputs/package",
            path,
            "application/zip",
            retry=retry,
        )

    async def upload_artifact(
        self,
        run_id: uuid.UUID,
        relative_path: str,
        path: Path,
        *,
        retry: RetryPolicy | None = None,
    ) -> OutputReply:
        """One file of the run's `artifacts_directory`, under its relative path."""
        return await self._upload(
            run_id,
            f"/runs/{run_id}/outputs/artifacts/{quote(relative_path, safe='/')}",
            path,
            "application/octet-stream",
            retry=retry,
        )

    async def upload_checkpoint(
        self,
        run_id: uuid.UUID,
        path: Path,
        *,
        retry: RetryPolicy | None = None,
    ) -> OutputReply:
        """The run's checkpoint folder, zipped at `path`: what a restart of the run resumes from."""
        return await self._upload(
            run_id, f"/runs/{run_id}/outputs/checkpoint", path, "application/zip", retry=retry
        )

    async def download_checkpoint(
        self,
        run_id: uuid.UUID,
        dest_path: Path,
        sha256: str,
        *,
        retry: RetryPolicy | None = None,
    ) -> str:
        """The checkpoint this run resumes from (a zip) into `dest_path`, verified against `sha256`."""
        return await self._download(f"/runs/{run_id}/checkpoint", dest_path, sha256, retry=retry)

    # Services (docs/serving.md).

    async def report_service(
        self,
        service_id: uuid.UUID,
        event: ServiceEvent,
        *,
        retry: RetryPolicy | None = None,
    ) -> ServiceEventReply:
        """One fact about one instance of a service; `stop` in the answer: stop serving it."""
        return await self._model(
            ServiceEventReply,
            "POST",
            f"/services/{service_id}/events",
            json=event.model_dump(mode="json"),
            retry=retry,
        )

    async def download_service_package(
        self,
        service_id: uuid.UUID,
        dest_path: Path,
        sha256: str,
        *,
        retry: RetryPolicy | None = None,
    ) -> str:
        """The served package version's zip into `dest_path`, verified against `sha256`."""
        return await self._download(f"/services/{service_id}/package", dest_path, sha256, retry=retry)
