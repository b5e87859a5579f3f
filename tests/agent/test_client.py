"""The agent's API client against the real API app in process, and its retries."""

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from agent.client import (
    ApiClient,
    ApiRejected,
    ApiUnavailable,
    ChecksumMismatch,
    RetryPolicy,
    parse_retry_after,
)
from agent.config import AgentSettings
from shared.enums import CommandKind, CommandState, RunStatus
from shared.protocol import ExitedEvent, FinishedEvent, Hello, LaunchedEvent, StartRunPayload
from tests.api.world import BASE_PACKAGE_ZIP, World, get_run, make_world, start_run

SHA = hashlib.sha256(BASE_PACKAGE_ZIP).hexdigest()


class Flaky(httpx.AsyncBaseTransport):
    """Fails the first requests as listed ("connect", "timeout", or a status with an optional problem
    code: "503", "409 blob_gone"), then delegates."""

    def __init__(self, inner: httpx.AsyncBaseTransport, failures: list[str]) -> None:
        self.inner, self.failures = inner, list(failures)
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.failures:
            return await self.inner.handle_async_request(request)
        failure = self.failures.pop(0)
        self.bodies.append(await request.aread())  # the body is consumed, as a real send would
        if failure == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if failure == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        status, _, code = failure.partition(" ")
        return httpx.Response(int(status), headers={"Retry-After": "0"}, json={"code": code or "busy"})


def agent_settings(token: str, tmp_path: Path, *, direct_blobs: bool = True) -> AgentSettings:
    return AgentSettings(
        api_url="http://trainyard.test",
        agent_token=token,  # type: ignore[arg-type]
        agent_token_file=None,
        agent_work_dir=tmp_path / "agent",
        run_as="nobody",
        allow_insecure_http=True,  # the in-process app, or loopback: no network
        retry_initial=0.001,
        retry_max=0.002,
        direct_blobs=direct_blobs,
    )


@pytest.fixture
async def world(client: AsyncClient) -> World:
    return await make_world(client)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def flaky(app: FastAPI, failures: list[str]) -> Flaky:
    return Flaky(ASGITransport(app=app), failures)


@pytest.fixture
async def api(app: FastAPI, world: World, tmp_path: Path) -> AsyncIterator[ApiClient]:
    async with ApiClient(
        agent_settings(world.agent_token, tmp_path), transport=ASGITransport(app=app)
    ) as api:
        yield api


async def test_a_run_through_the_client(
    api: ApiClient, client: AsyncClient, world: World, tmp_path: Path
) -> None:
    reply = await api.hello(Hello(agent_version="0.1.0", hostname="gpu-1"))
    assert reply.machine == world.machine and reply.stop_runs == []
    assert await api.poll(wait=0) == []

    run = await start_run(client, world)
    run_id = uuid.UUID(run["id"])
    commands = await api.poll(wait=1)
    assert [(c.kind, c.run_id) for c in commands] == [(CommandKind.START_RUN, run_id)]
    payload = StartRunPayload.model_validate(commands[0].payload["start"])
    assert payload.package_sha256 == SHA
    assert (await api.ack(commands[0].id)).state == CommandState.ACKNOWLEDGED
    assert (await api.ack(commands[0].id)).state == CommandState.ACKNOWLEDGED  # a repeat is harmless

    assert (await api.report(run_id, LaunchedEvent(type="launched", pid=4242))).status == RunStatus.RUNNING

    folder = tmp_path / "downloads"
    folder.mkdir()
    package = folder / "package.zip"
    assert await api.download_package(run_id, package, payload.package_sha256) == SHA
    assert package.read_bytes() == BASE_PACKAGE_ZIP
    blob = folder / "blob"
    assert await api.download_blob(run_id, SHA, blob) == SHA  # the package is one of the run's inputs
    assert blob.read_bytes() == BASE_PACKAGE_ZIP
    assert names(folder) == ["blob", "package.zip"]  # no .part left

    trained = tmp_path / "trained.zip"
    trained.write_bytes(BASE_PACKAGE_ZIP)
    uploaded = await api.upload_package(run_id, trained)
    assert (uploaded.kind, uploaded.sha256, uploaded.size) == ("package", SHA, len(BASE_PACKAGE_ZIP))
    artifact = tmp_path / "confusion.txt"
    artifact.write_bytes(b"tp=3 fp=1\n")
    stored = await api.upload_artifact(run_id, "plots/confusion.txt", artifact)
    assert (stored.path, stored.size) == ("plots/confusion.txt", 10)

    assert (await api.report(run_id, ExitedEvent(type="exited", exit_code=0))).status == RunStatus.RUNNING
    finished = await api.report(run_id, FinishedEvent(type="finished"))
    assert finished.status == RunStatus.SUCCEEDED
    assert (await get_run(client, world, str(run_id)))["status"] == "succeeded"


async def test_download_verifies_the_sha256(
    api: ApiClient, client: AsyncClient, world: World, tmp_path: Path
) -> None:
    run_id = uuid.UUID((await start_run(client, world))["id"])
    folder = tmp_path / "downloads"
    folder.mkdir()
    with pytest.raises(ChecksumMismatch):
        await api.download_package(run_id, folder / "package.zip", "0" * 64)
    assert names(folder) == []  # neither the file nor its temporary part


async def test_rejections_are_not_retried(app: FastAPI, world: World, tmp_path: Path) -> None:
    transport = flaky(app, [])
    async with ApiClient(agent_settings(world.agent_token, tmp_path), transport=transport) as api:
        with pytest.raises(ApiRejected) as caught:
            await api.ack(uuid.uuid4())
        assert caught.value.status == 404 and caught.value.code
        assert len(transport.requests) == 1

        with pytest.raises(ApiRejected) as caught:
            await api.download_blob(uuid.uuid4(), "not-a-sha", tmp_path / "x")
        assert caught.value.status in (404, 422) and caught.value.code
        assert len(transport.requests) == 2

    async with ApiClient(agent_settings("ty_wrong_token", tmp_path), transport=flaky(app, [])) as api:
        with pytest.raises(ApiRejected) as caught:
            await api.hello(Hello(agent_version="0.1.0"))
        assert caught.value.status == 401


async def test_422_carries_the_problem_code(app: FastAPI, world: World, tmp_path: Path) -> None:
    transport = flaky(app, [])
    async with ApiClient(agent_settings(world.agent_token, tmp_path), transport=transport) as api:
        with pytest.raises(ApiRejected) as caught:
            await api.upload_evaluation(uuid.uuid4(), {"k": 1})
        assert caught.value.status == 404 and caught.value.code == "run_not_found"
        with pytest.raises(ApiRejected) as caught:
            await api.poll(wait=31)  # over the protocol's limit: refused by the API
        assert caught.value.status == 422 and caught.value.code
    assert len(transport.requests) == 2


@pytest.mark.parametrize("failures", [["connect", "timeout"], ["503", "429", "502"]])
async def test_transient_failures_are_retried(
    app: FastAPI, world: World, tmp_path: Path, failures: list[str]
) -> None:
    transport = flaky(app, failures)
    async with ApiClient(agent_settings(world.agent_token, tmp_path), transport=transport) as api:
        reply = await api.hello(Hello(agent_version="0.1.0"))
    assert reply.machine == world.machine
    assert len(transport.requests) == len(failures) + 1


async def test_an_upload_is_sent_whole_again_on_retry(
    app: FastAPI, client: AsyncClient, world: World, tmp_path: Path
) -> None:
    run_id = uuid.UUID((await start_run(client, world))["id"])
    transport = flaky(app, [])
    # An agent that sends its outputs through the API (else, content already stored goes by reference).
    settings = agent_settings(world.agent_token, tmp_path, direct_blobs=False)
    async with ApiClient(settings, transport=transport) as api:
        await api.ack((await api.poll(wait=0))[0].id)
        await api.report(run_id, LaunchedEvent(type="launched"))
        trained = tmp_path / "trained.zip"
        trained.write_bytes(BASE_PACKAGE_ZIP)
        transport.failures = ["503", "connect"]
        uploaded = await api.upload_package(run_id, trained)
    assert uploaded.sha256 == SHA
    assert transport.bodies == [BASE_PACKAGE_ZIP, BASE_PACKAGE_ZIP]
    assert [r.method for r in transport.requests[-3:]] == ["PUT"] * 3


async def test_an_upload_refused_as_gone_is_sent_again(
    app: FastAPI, client: AsyncClient, world: World, tmp_path: Path
) -> None:
    """409 `blob_gone`: the API's collector removed the stored content this upload found (docs/storage.md).
    The client sends the file again, as for a 503; another 409 is still a rejection at once."""
    run_id = uuid.UUID((await start_run(client, world))["id"])
    transport = flaky(app, [])
    settings = agent_settings(world.agent_token, tmp_path, direct_blobs=False)
    async with ApiClient(settings, transport=transport) as api:
        await api.ack((await api.poll(wait=0))[0].id)
        await api.report(run_id, LaunchedEvent(type="launched"))
        trained = tmp_path / "trained.zip"
        trained.write_bytes(BASE_PACKAGE_ZIP)
        transport.failures = ["409 blob_gone"]
        uploaded = await api.upload_package(run_id, trained)
        assert uploaded.sha256 == SHA
        assert transport.bodies == [BASE_PACKAGE_ZIP]
        assert [r.method for r in transport.requests[-2:]] == ["PUT", "PUT"]
        transport.failures = ["409 run_not_receiving"]
        with pytest.raises(ApiRejected) as refused:
            await api.upload_package(run_id, trained)
    assert refused.value.code == "run_not_receiving"


async def test_giving_up(app: FastAPI, world: World, tmp_path: Path) -> None:
    transport = flaky(app, ["503"] * 100)
    async with ApiClient(agent_settings(world.agent_token, tmp_path), transport=transport) as api:
        with pytest.raises(ApiUnavailable) as caught:
            await api.hello(Hello(agent_version="0.1.0"), retry=api.retry.limited(attempts=3))
        assert caught.value.attempts == 3 and len(transport.requests) == 3
        transport.failures = ["connect"] * 10_000
        with pytest.raises(ApiUnavailable):
            await api.poll(wait=0, retry=api.retry.limited(retry_for=0))
        assert len(transport.requests) == 4  # retry_for=0: the first attempt only


def test_the_token_is_only_in_the_header(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = agent_settings("ty_abc_secret-value", tmp_path)
    assert "secret-value" not in repr(settings) and "secret-value" not in str(settings.model_dump())
    assert settings.token() == "ty_abc_secret-value"


async def test_retries_are_logged_without_the_token(
    app: FastAPI, world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    transport = flaky(app, ["connect", "503"])
    async with ApiClient(agent_settings(world.agent_token, tmp_path), transport=transport) as api:
        with caplog.at_level("WARNING", logger="agent.client"):
            await api.hello(Hello(agent_version="0.1.0"))
    messages = [r.getMessage() for r in caplog.records if r.name == "agent.client"]
    assert len(messages) == 2 and "attempt 1" in messages[0] and "attempt 2" in messages[1]
    assert all(world.agent_token not in m for m in messages)
    for request in transport.requests:
        assert request.headers["authorization"] == f"Bearer {world.agent_token}"
        assert world.agent_token not in str(request.url)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("0", 0.0),
        ("7", 7.0),
        ("99999", 600.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now) == seconds


def test_one_retry_policy_says_what_is_retried_and_how_long_to_wait(tmp_path: Path) -> None:
    policy = RetryPolicy.from_settings(agent_settings("ty_x", tmp_path))
    assert (policy.initial, policy.maximum, policy.attempts, policy.retry_for) == (0.001, 0.002, None, None)
    policy = RetryPolicy(initial=1.0, maximum=4.0)
    assert policy.retries(429) and policy.retries(500) and policy.retries(503)
    assert not any(policy.retries(status) for status in (400, 401, 404, 409, 422))
    assert policy.delay(1, retry_after=7.0) == 7.0  # the API's Retry-After, as it said
    for attempt in range(1, 8):
        delays = [policy.delay(attempt, None) for _ in range(200)]
        assert all(0 <= d <= min(4.0, 2 ** (attempt - 1)) for d in delays) and len(set(delays)) > 1
    limited = policy.limited(attempts=3)
    assert (limited.attempts, limited.retry_for, limited.initial) == (3, None, 1.0)
