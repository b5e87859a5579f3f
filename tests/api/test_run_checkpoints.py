"""A run's checkpoint through the agent routes, and the restart that hands it back (issue 18, item 2)."""

from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.api.packages_kit import zip_bytes
from tests.api.world import (
    World,
    agent_client,
    get_run,
    make_machine,
    make_world,
    ok,
    problem,
    report,
    take_commands,
)

CHECKPOINT = zip_bytes({"epoch-3.pt": "weights after epoch 3", "optimizer/state.pt": "moments"})


async def _launched(agent: AsyncClient) -> dict[str, Any]:
    """The run of the start command the agent takes now, launched."""
    [command] = await take_commands(agent, "start_run")
    run_id = command["payload"]["start"]["run_id"]
    await report(agent, run_id, "launched")
    return command["payload"]["start"]  # type: ignore[no-any-return]


async def _restart(client: AsyncClient, world: World) -> None:
    response = await client.post(f"{world.process_path}/restart")
    assert response.status_code in (201, 202), response.text


async def test_a_restart_of_a_stopped_run_hands_its_checkpoint_to_the_next(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    _, other_token = await make_machine(client, "elsewhere")
    async with agent_client(app, world.agent_token) as agent, agent_client(app, other_token) as other:
        ok(await client.post(f"{world.process_path}/start"), 201)
        first = await _launched(agent)
        assert first["checkpoint_sha256"] is None and first["resumed_from"] is None
        problem(await agent.get(f"/runs/{first['run_id']}/checkpoint"), 404, "checkpoint_not_found")
        kept = ok(await agent.put(f"/runs/{first['run_id']}/outputs/checkpoint", content=CHECKPOINT))
        assert (kept["kind"], kept["size"]) == ("checkpoint", len(CHECKPOINT))
        problem(
            await other.put(f"/runs/{first['run_id']}/outputs/checkpoint", content=CHECKPOINT),
            404,
            "run_not_found",
        )

        await _restart(client, world)  # the run is active: stopped first, the next one starts after
        await take_commands(agent, "stop_run")
        await report(agent, first["run_id"], "exited", signal=15)
        assert (await get_run(client, world, first["run_id"]))["status"] == "stopped"
        # An ended run takes no checkpoint any more.
        problem(
            await agent.put(f"/runs/{first['run_id']}/outputs/checkpoint", content=CHECKPOINT),
            409,
            "run_not_receiving",
        )

        second = await _launched(agent)
        assert second["resumed_from"] == first["run_id"], second
        assert (second["checkpoint_sha256"], second["checkpoint_size"]) == (kept["sha256"], len(CHECKPOINT))
        handed = await agent.get(f"/runs/{second['run_id']}/checkpoint")
        assert handed.status_code == 200 and handed.content == CHECKPOINT
        assert handed.headers["etag"] == f'"{kept["sha256"]}"'
        problem(await other.get(f"/runs/{second['run_id']}/checkpoint"), 404, "run_not_found")
        run = await get_run(client, world, second["run_id"])
        assert run["config"]["resumed_from"] == first["run_id"]  # people see where it resumed from

        # Stopped before writing a checkpoint of its own: a restart hands on the one it was given.
        ok(await client.post(f"{world.process_path}/stop"), 202)
        await take_commands(agent, "stop_run")
        await report(agent, second["run_id"], "exited", signal=15)
        await _restart(client, world)
        third = await _launched(agent)
        assert (third["checkpoint_sha256"], third["resumed_from"]) == (kept["sha256"], first["run_id"])

        # A start is not a restart: it starts over.
        ok(await client.post(f"{world.process_path}/stop"), 202)
        await take_commands(agent, "stop_run")
        await report(agent, third["run_id"], "exited", signal=15)
        ok(await client.post(f"{world.process_path}/start"), 201)
        fourth = await _launched(agent)
        assert fourth["checkpoint_sha256"] is None and fourth["resumed_from"] is None


async def test_a_restart_after_a_success_starts_over(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        ok(await client.post(f"{world.process_path}/start"), 201)
        first = await _launched(agent)
        ok(await agent.put(f"/runs/{first['run_id']}/outputs/checkpoint", content=CHECKPOINT))
        ok(
            await agent.put(
                f"/runs/{first['run_id']}/outputs/package", content=zip_bytes({"train.py": TRAIN})
            )
        )
        await report(agent, first["run_id"], "exited", exit_code=0)
        await report(agent, first["run_id"], "finished")
        assert (await get_run(client, world, first["run_id"]))["status"] == "succeeded"
        await _restart(client, world)
        second = await _launched(agent)
        assert second["checkpoint_sha256"] is None and second["resumed_from"] is None


async def test_a_checkpoint_that_is_not_a_safe_zip_is_refused_and_changes_nothing(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        ok(await client.post(f"{world.process_path}/start"), 201)
        first = await _launched(agent)
        problem(
            await agent.put(f"/runs/{first['run_id']}/outputs/checkpoint", content=b"not a zip"),
            422,
            "not_a_zip",
        )
        assert list(app.state.blobs.temp_dir.iterdir()) == []
        await _restart(client, world)
        await take_commands(agent, "stop_run")
        await report(agent, first["run_id"], "exited", signal=15)
        second = await _launched(agent)
        assert second["checkpoint_sha256"] is None  # nothing was kept: the restart starts over


TRAIN = (
    "class Main:\n    def train(self, data_directory):\n        pass\n\n    def save(self):\n        pass\n"
)
