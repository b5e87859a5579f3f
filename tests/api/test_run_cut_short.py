"""A run cut short by its maximum duration keeps its model (issue 18, item 1); a failed or stopped run
keeps its artifacts, and a training snapshot is a dataset version of its own (item 4): the agent's
facts through the real app, on SQLite and PostgreSQL."""

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.api import test_sweeper
from tests.api.packages_kit import zip_bytes
from tests.api.test_sweeper import SweeperFactory
from tests.api.world import (
    BASE_PACKAGE_ZIP,
    World,
    agent_client,
    get_run,
    make_world,
    ok,
    problem,
    report,
    run_events,
    start_run,
    take_commands,
    transitions,
)

# The sweeper's fixtures: a Sweeper on the app's database, and its clock moved ahead.
make_sweeper = test_sweeper.make_sweeper
shift_clock = test_sweeper.shift_clock


async def _running(client: AsyncClient, agent: AsyncClient, world: World) -> dict[str, Any]:
    run = await start_run(client, world)
    await take_commands(agent, "start_run")
    await report(agent, run["id"], "launched")
    return run


async def _kept(client: AsyncClient, world: World, run_id: str) -> dict[str, Any]:
    """The run, checked to have ended `stopped`/`max_duration` with version 1.1 marked cut short."""
    found = await get_run(client, world, run_id)
    assert (found["status"], found["reason_code"], found["exit_code"]) == ("stopped", "max_duration", 0)
    version = ok(await client.get(f"/projects/{world.project}/packages/pkg/versions/1.1"))
    assert version["lineage"]["cut_short"] == "max_duration"
    assert version["lineage"]["run_id"] == run_id
    results = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/results"))
    assert results["run_summary"]["cut_short"] == "max_duration"
    assert results["run_summary"]["outputs"]["version"] == "1.1"
    return found


async def test_the_agents_own_limit_with_a_save_keeps_the_version_marked(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        ok(await agent.put(f"/runs/{run['id']}/outputs/package", content=BASE_PACKAGE_ZIP))
        exited = await report(agent, run["id"], "exited", exit_code=0, reason_code="max_duration", saved=True)
        # Not ended yet: `finished` is the commit point, as for a success.
        assert exited == {"run_id": run["id"], "status": "stopping", "stop": True}
        finished = await report(agent, run["id"], "finished")
    assert finished == {"run_id": run["id"], "status": "stopped", "stop": True}
    await _kept(client, world, run["id"])
    assert transitions(await run_events(client, world, run["id"]))[-2:] == [
        ("agent", "running", "stopping", "max_duration"),
        ("agent", "stopping", "stopped", "max_duration"),
    ]
    # The process is free again, as after any end.
    assert ok(await client.get(world.process_path))["status"] == "stopped"


async def test_the_sweepers_limit_with_a_save_keeps_the_version_marked(
    client: AsyncClient, app: FastAPI, make_sweeper: SweeperFactory, shift_clock: Callable[[float], None]
) -> None:
    world = await make_world(client, max_duration_seconds=60)
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        shift_clock(61)
        await make_sweeper().sweep_once()
        assert (await get_run(client, world, run["id"]))["status"] == "stopping"
        assert [c["kind"] for c in await take_commands(agent)] == ["stop_run"]
        ok(await agent.put(f"/runs/{run['id']}/outputs/package", content=BASE_PACKAGE_ZIP))
        exited = await report(agent, run["id"], "exited", exit_code=0, reason_code="max_duration", saved=True)
        assert exited["status"] == "stopping"
        assert (await report(agent, run["id"], "finished"))["status"] == "stopped"
    await _kept(client, world, run["id"])


async def test_a_limit_without_a_save_keeps_nothing_as_before(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        # An exit of 0 that did not save (an older agent, an evaluation) ends the run at once.
        reply = await report(agent, run["id"], "exited", exit_code=0, reason_code="max_duration")
        assert reply == {"run_id": run["id"], "status": "stopped", "stop": True}
        # A late `finished` changes nothing and makes no version.
        assert (await report(agent, run["id"], "finished"))["status"] == "stopped"
    versions = ok(await client.get(f"/projects/{world.project}/packages/pkg/versions"))
    assert [v["version"] for v in versions["items"]] == ["1.0"]
    assert (await get_run(client, world, run["id"]))["reason_code"] == "max_duration"


async def test_a_person_stopping_first_keeps_nothing_even_if_the_agent_saved(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        ok(await client.post(f"{world.process_path}/stop"), 202)
        reply = await report(agent, run["id"], "exited", exit_code=0, reason_code="max_duration", saved=True)
        assert reply == {"run_id": run["id"], "status": "stopped", "stop": True}
    assert (await get_run(client, world, run["id"]))["reason_code"] == "user_stop"
    versions = ok(await client.get(f"/projects/{world.project}/packages/pkg/versions"))
    assert [v["version"] for v in versions["items"]] == ["1.0"]


async def test_a_failed_or_stopped_run_takes_artifacts_and_nothing_else(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        failed = await _running(client, agent, world)
        ok(await agent.put(f"/runs/{failed['id']}/outputs/artifacts/debug/before.txt", content=b"before"))
        await report(agent, failed["id"], "exited", exit_code=1, error_tail="ValueError")
        assert (await get_run(client, world, failed["id"]))["status"] == "failed"
        # After its end too (an agent back after the run was declared lost): artifacts only.
        ok(await agent.put(f"/runs/{failed['id']}/outputs/artifacts/debug/after.txt", content=b"after"))
        problem(
            await agent.put(f"/runs/{failed['id']}/outputs/package", content=BASE_PACKAGE_ZIP),
            409,
            "run_not_receiving",
        )
        problem(
            await agent.put(f"/runs/{failed['id']}/outputs/evaluation", json={"score": 1}),
            409,
            "run_not_receiving",
        )

        stopped = await _running(client, agent, world)
        ok(await client.post(f"{world.process_path}/stop"), 202)
        await report(agent, stopped["id"], "exited", signal=15)
        ok(await agent.put(f"/runs/{stopped['id']}/outputs/artifacts/last.log", content=b"stopped here"))

        succeeded = await _running(client, agent, world)
        await report(agent, succeeded["id"], "exited", exit_code=0)
        await report(agent, succeeded["id"], "finished")
        # A succeeded run's outputs are committed: nothing more is taken.
        problem(
            await agent.put(f"/runs/{succeeded['id']}/outputs/artifacts/late.txt", content=b"late"),
            409,
            "run_not_receiving",
        )

    listed = ok(await client.get(f"/projects/{world.project}/runs/{failed['id']}/artifacts"))
    assert [a["path"] for a in listed] == ["debug/after.txt", "debug/before.txt"]
    download = await client.get(f"/projects/{world.project}/runs/{failed['id']}/artifacts/debug/after.txt")
    assert download.content == b"after"
    listed = ok(await client.get(f"/projects/{world.project}/runs/{stopped['id']}/artifacts"))
    assert [a["path"] for a in listed] == ["last.log"]
    versions = ok(await client.get(f"/projects/{world.project}/packages/pkg/versions"))
    assert [v["version"] for v in versions["items"]] == ["1.0", "1.1"]  # the succeeded run's only


DIGITS = {"train/0/a.png": b"zero", "train/1/b.png": b"one", "test/0/c.png": b"zero"}


async def test_a_training_snapshot_is_a_dataset_version_of_its_own(client: AsyncClient, app: FastAPI) -> None:
    """`save_training_data`: the files the run trained on become a version of `<dataset>-snapshots`,
    listed and browsable as any dataset version, named by the lineage; the same content again reuses it."""
    world = await make_world(client)
    uploaded = await client.post(
        f"/projects/{world.project}/datasets/digits/versions",
        files={"file": ("data.zip", zip_bytes(DIGITS), "application/zip")},
    )
    ok(uploaded, 201)
    template = f"/projects/{world.project}/templates/{world.template}"
    ok(
        await client.patch(
            template, json={"dataset": "digits", "dataset_path": "train", "save_training_data": True}
        )
    )
    async with agent_client(app, world.agent_token) as agent:
        for _ in range(2):
            run = await _running(client, agent, world)
            manifest = ok(await agent.get(f"/runs/{run['id']}/dataset"))
            ok(await agent.put(f"/runs/{run['id']}/outputs/snapshot", json={"files": manifest["files"]}))
            await report(agent, run["id"], "exited", exit_code=0)
            assert (await report(agent, run["id"], "finished"))["status"] == "succeeded"

    for number in ("1.1", "1.2"):
        version = ok(await client.get(f"/projects/{world.project}/packages/pkg/versions/{number}"))
        snapshot = version["lineage"]["snapshot"]
        assert (snapshot["dataset"], snapshot["version"], snapshot["files"]) == ("digits-snapshots", 1, 2)
    versions = ok(await client.get(f"/projects/{world.project}/datasets/digits-snapshots/versions"))
    assert [v["number"] for v in versions["items"]] == [1]  # the second run's snapshot is the same
    files = ok(await client.get(f"/projects/{world.project}/datasets/digits-snapshots/versions/1/files"))
    assert [f["path"] for f in files["items"]] == ["0/a.png", "1/b.png"]
    download = await client.get(
        f"/projects/{world.project}/datasets/digits-snapshots/versions/1/files/1/b.png"
    )
    assert download.status_code == 200 and download.content == b"one"
    listed = ok(await client.get(f"/projects/{world.project}/datasets"))
    assert sorted(d["name"] for d in listed["items"]) == ["digits", "digits-snapshots"]
