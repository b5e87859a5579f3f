"""A run's working folder and the blob cache, fed by the real API app in process."""

import asyncio
import hashlib
import os
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from agent.client import ApiClient
from agent.config import AgentSettings
from agent.workdir import PREPARED_MARKER, BlobCache, prepare_run
from shared.protocol import StartRunPayload
from tests.api.packages_kit import zip_bytes
from tests.api.world import World, agent_client, make_world, ok, start_run, take_commands

FILES = {
    "train/a.csv": b"x,y\n1,2\n",
    "train/deep/b.bin": bytes(range(256)) * 4,
    "test/c.txt": b"held out\n",
}


class Counting(httpx.AsyncBaseTransport):
    """Delegates every request, remembering its path."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self.inner.handle_async_request(request)

    def blobs(self) -> list[str]:
        return [path for path in self.paths if "/blobs/" in path]


async def _upload_dataset(client: AsyncClient, project: str, name: str, files: dict[str, bytes]) -> None:
    response = await client.post(
        f"/projects/{project}/datasets/{name}/versions",
        files={"file": ("data.zip", zip_bytes(files), "application/zip")},
    )
    ok(response, 201)


@pytest.fixture
async def world(client: AsyncClient) -> World:
    world = await make_world(client)
    await _upload_dataset(client, world.project, "digits", FILES)
    await _upload_dataset(client, world.project, "holdout", {"test/c.txt": FILES["test/c.txt"]})
    ok(
        await client.patch(
            f"/projects/{world.project}/templates/{world.template}", json={"dataset": "digits"}
        )
    )
    return world


@pytest.fixture
def agent_settings(world: World, tmp_path: Path) -> AgentSettings:
    return AgentSettings(
        api_url="http://trainyard.test",
        agent_token=world.agent_token,  # type: ignore[arg-type]
        agent_token_file=None,
        agent_work_dir=tmp_path / "agent",
        run_as="nobody",
        allow_insecure_http=True,  # the in-process app, or loopback: no network
        retry_initial=0.001,
        retry_max=0.002,
    )


@pytest.fixture
def counting(app: FastAPI) -> Counting:
    return Counting(ASGITransport(app=app))


@pytest.fixture
async def api(agent_settings: AgentSettings, counting: Counting) -> AsyncIterator[ApiClient]:
    async with ApiClient(agent_settings, transport=counting) as api:
        yield api


async def _start(client: AsyncClient, app: FastAPI, world: World) -> StartRunPayload:
    await start_run(client, world)
    async with agent_client(app, world.agent_token) as agent:
        [command] = await take_commands(agent, "start_run")
    payload: dict[str, Any] = command["payload"]["start"]
    return StartRunPayload.model_validate(payload)


async def _finish_run(app: FastAPI, world: World, run_id: uuid.UUID) -> None:
    """End the run as the agent would, so the process may start another."""
    async with agent_client(app, world.agent_token) as agent:
        for event in ({"type": "launched"}, {"type": "exited", "exit_code": 1}):
            ok(await agent.post(f"/runs/{run_id}/events", json=event))


def _read_only(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o222 == 0


def _files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()
    }


async def test_a_run_folder_holds_the_package_and_the_dataset(
    app: FastAPI,
    client: AsyncClient,
    world: World,
    api: ApiClient,
    agent_settings: AgentSettings,
    counting: Counting,
) -> None:
    payload = await _start(client, app, world)
    cache = BlobCache(agent_settings.agent_work_dir)
    run = await prepare_run(api, agent_settings, payload, cache=cache)

    assert run.root == agent_settings.agent_work_dir / "runs" / str(payload.run_id)
    assert (run.package / "train.py").is_file()
    assert _files(run.data) == FILES
    assert all(_read_only(path) for path in run.data.rglob("*") if path.is_file())
    assert run.test_data is None
    assert run.artifacts.is_dir() and not any(run.artifacts.iterdir())
    assert os.access(run.artifacts, os.W_OK)
    assert (run.outcome, run.spool) == (run.root / "outcome.json", run.root / "spool.jsonl")
    assert run.stdout.parent == run.stderr.parent == run.root and run.stdout != run.stderr
    assert (run.root / PREPARED_MARKER).is_file()
    assert sorted(p.name for p in run.root.iterdir()) == [PREPARED_MARKER, "artifacts", "data", "package"]
    assert len(counting.blobs()) == len(FILES)

    # The data are the cache's files, hard-linked, and the cache is read-only too.
    cached = cache.path_for(_sha_of(run.data / "train/a.csv"))
    assert cached.is_file() and _read_only(cached)
    assert cached.stat().st_ino == (run.data / "train/a.csv").stat().st_ino

    # Idempotent: a second call (an agent restart) finds it prepared and asks for nothing.
    before = len(counting.paths)
    again = await prepare_run(api, agent_settings, payload, cache=BlobCache(agent_settings.agent_work_dir))
    assert again == run and len(counting.paths) == before


def _sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_second_run_of_the_dataset_downloads_nothing_new(
    app: FastAPI,
    client: AsyncClient,
    world: World,
    api: ApiClient,
    agent_settings: AgentSettings,
    counting: Counting,
) -> None:
    cache = BlobCache(agent_settings.agent_work_dir)
    first_payload = await _start(client, app, world)
    first = await prepare_run(api, agent_settings, first_payload, cache=cache)
    await _finish_run(app, world, first_payload.run_id)
    assert len(counting.blobs()) == len(FILES)

    second_payload = await _start(client, app, world)
    assert second_payload.run_id != first_payload.run_id
    second = await prepare_run(
        api, agent_settings, second_payload, cache=BlobCache(agent_settings.agent_work_dir)
    )
    assert len(counting.blobs()) == len(FILES)  # every blob came from the cache
    assert _files(second.data) == FILES
    for name in FILES:
        assert (first.data / name).stat().st_ino == (second.data / name).stat().st_ino


async def test_an_interrupted_preparation_is_redone_and_leaves_no_marker(
    app: FastAPI, client: AsyncClient, world: World, api: ApiClient, agent_settings: AgentSettings
) -> None:
    payload = await _start(client, app, world)
    cache = BlobCache(agent_settings.agent_work_dir)

    class Broken(RuntimeError):
        pass

    original = cache.ensure
    calls = 0

    async def failing(*args: Any, **kwargs: Any) -> Path:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Broken
        return await original(*args, **kwargs)

    cache.ensure = failing  # type: ignore[method-assign]
    with pytest.raises(ExceptionGroup) as raised:
        await prepare_run(api, agent_settings, payload, cache=cache)
    assert raised.group_contains(Broken)
    root = agent_settings.agent_work_dir / "runs" / str(payload.run_id)
    # The package was whole and stays; the data folder never appeared; no marker, no temporaries.
    assert sorted(p.name for p in root.iterdir()) == ["package"]

    cache.ensure = original  # type: ignore[method-assign]
    run = await prepare_run(api, agent_settings, payload, cache=cache)
    assert _files(run.data) == FILES and (run.root / PREPARED_MARKER).is_file()


async def test_a_corrupted_cache_file_is_fetched_again(
    app: FastAPI,
    client: AsyncClient,
    world: World,
    api: ApiClient,
    agent_settings: AgentSettings,
    counting: Counting,
) -> None:
    payload = await _start(client, app, world)
    cache = BlobCache(agent_settings.agent_work_dir)
    first = await prepare_run(api, agent_settings, payload, cache=cache)
    await _finish_run(app, world, payload.run_id)
    cached = cache.path_for(_sha_of(first.data / "train/a.csv"))
    cached.chmod(0o644)
    cached.write_bytes(b"y,x\n9,9\n")  # the same size, other content
    downloaded = len(counting.blobs())

    second_payload = await _start(client, app, world)
    second = await prepare_run(api, agent_settings, second_payload, cache=cache)
    assert len(counting.blobs()) == downloaded + 1  # only the damaged one
    assert _files(second.data) == FILES
    assert cached.read_bytes() == FILES["train/a.csv"] and _read_only(cached)


async def test_the_test_dataset_lands_in_test_data(
    app: FastAPI, client: AsyncClient, world: World, api: ApiClient, agent_settings: AgentSettings
) -> None:
    template = f"/projects/{world.project}/templates/{world.template}"
    ok(await client.patch(template, json={"test_dataset": "holdout"}))
    payload = await _start(client, app, world)
    assert payload.test_dataset == "holdout"
    run = await prepare_run(api, agent_settings, payload, cache=BlobCache(agent_settings.agent_work_dir))
    assert run.test_data == run.root / "test_data"
    assert _files(run.test_data) == {"test/c.txt": FILES["test/c.txt"]}
    assert _files(run.data) == FILES


async def test_files_are_copied_when_a_hard_link_cannot_be_made(
    app: FastAPI,
    client: AsyncClient,
    world: World,
    api: ApiClient,
    agent_settings: AgentSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_link(source: Any, target: Any) -> None:
        raise OSError(18, "Invalid cross-device link")  # EXDEV

    monkeypatch.setattr(os, "link", no_link)
    payload = await _start(client, app, world)
    run = await prepare_run(api, agent_settings, payload, cache=BlobCache(agent_settings.agent_work_dir))
    assert _files(run.data) == FILES
    assert all(
        _read_only(path) and path.stat().st_nlink == 1 for path in run.data.rglob("*") if path.is_file()
    )


async def test_concurrent_needs_of_one_blob_fetch_it_once(
    app: FastAPI,
    client: AsyncClient,
    world: World,
    api: ApiClient,
    agent_settings: AgentSettings,
    counting: Counting,
) -> None:
    payload = await _start(client, app, world)
    content = FILES["train/a.csv"]
    sha = hashlib.sha256(content).hexdigest()
    cache = BlobCache(agent_settings.agent_work_dir)
    paths = await asyncio.gather(*(cache.ensure(api, payload.run_id, sha, len(content)) for _ in range(5)))
    assert set(paths) == {cache.path_for(sha)} and paths[0].read_bytes() == content
    assert len(counting.blobs()) == 1
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [sha]  # no temporary left


def _age(path: Path, seconds: float) -> None:
    """As if `path` was last used and written `seconds` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


async def test_the_cache_prunes_what_no_run_links_or_used_lately(
    app: FastAPI,
    client: AsyncClient,
    world: World,
    api: ApiClient,
    agent_settings: AgentSettings,
    counting: Counting,
) -> None:
    week = 7 * 24 * 3600.0
    payload = await _start(client, app, world)
    cache = BlobCache(agent_settings.agent_work_dir)
    run = await prepare_run(api, agent_settings, payload, cache=cache)
    await _finish_run(app, world, payload.run_id)
    shas = {name: hashlib.sha256(content).hexdigest() for name, content in FILES.items()}
    cached = {name: cache.path_for(sha) for name, sha in shas.items()}
    stale = cached["train/a.csv"].parent / f".{shas['train/a.csv']}.{uuid.uuid4().hex}.tmp"
    fresh = cached["train/a.csv"].parent / f".{shas['train/a.csv']}.{uuid.uuid4().hex}.tmp"
    stale.write_bytes(b"half a download")
    fresh.write_bytes(b"a download going on")
    for path in (*cached.values(), stale):
        _age(path, week + 3600)

    # Old, but hard-linked into a run folder: kept. Only the interrupted download's leftover goes.
    assert await cache.prune(week) == (0, 0)
    assert all(path.is_file() for path in cached.values())
    assert not stale.exists() and fresh.exists()

    shutil.rmtree(run.data)  # the run is done (as `Execution._done` clears it)
    assert all(path.stat().st_nlink == 1 for path in cached.values())
    # A run takes one of them just now: it is marked used, and stays.
    content = FILES["train/deep/b.bin"]
    await cache.ensure(api, payload.run_id, shas["train/deep/b.bin"], len(content))
    removed, freed = await cache.prune(week)
    assert (removed, freed) == (2, len(FILES["train/a.csv"]) + len(FILES["test/c.txt"]))
    assert [name for name, path in cached.items() if path.exists()] == ["train/deep/b.bin"]
    assert await cache.prune(week) == (0, 0)

    # The next run fetches again exactly what was pruned.
    downloaded = len(counting.blobs())
    second = await prepare_run(api, agent_settings, await _start(client, app, world), cache=cache)
    assert _files(second.data) == FILES
    assert len(counting.blobs()) == downloaded + 2
