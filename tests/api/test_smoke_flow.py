"""The Primo flow end to end through the API and the agent routes: create, start, run, succeed."""

from fastapi import FastAPI
from httpx import AsyncClient

from tests.api.world import BASE_PACKAGE_ZIP, agent_client, make_world, ok


async def test_primo_flow_to_success(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    process = ok(await client.get(world.process_path))
    assert process["status"] == "created" and process["latest_run"] is None

    started = ok(await client.post(f"{world.process_path}/start"), 201)
    run = started["latest_run"]
    assert started["status"] == "starting" and run["number"] == 1

    async with agent_client(app, world.agent_token) as agent:
        commands = ok(await agent.get("/commands"))
        assert [c["kind"] for c in commands] == ["start_run"]
        assert commands[0]["payload"]["start"]["parameters"] == {"epochs": 2}
        ack = ok(await agent.post(f"/commands/{commands[0]['id']}/ack"))
        assert ack["state"] == "acknowledged"
        assert ok(await agent.get("/commands")) == []
        reply = ok(await agent.post(f"/runs/{run['id']}/events", json={"type": "launched"}))
        assert reply["status"] == "running" and reply["stop"] is False
        ok(
            await agent.post(
                f"/runs/{run['id']}/events", json={"type": "stage", "stage": "training", "progress": 0.5}
            )
        )
        ok(await agent.post(f"/runs/{run['id']}/events", json={"type": "exited", "exit_code": 0}))
        ok(await agent.put(f"/runs/{run['id']}/outputs/package", content=BASE_PACKAGE_ZIP))
        reply = ok(await agent.post(f"/runs/{run['id']}/events", json={"type": "finished"}))
        assert reply["status"] == "succeeded"

    final = ok(await client.get(f"/projects/{world.project}/runs/{run['id']}"))
    assert final["status"] == "succeeded" and final["reason_code"] == "completed"
    assert final["elapsed_seconds"] is not None and final["progress"] == 1.0
    events = ok(await client.get(f"/projects/{world.project}/runs/{run['id']}/events"))["items"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "starting"),
        ("starting", "running"),
        ("running", "succeeded"),
    ]
    assert ok(await client.get(world.process_path))["status"] == "succeeded"

    # UiPath: the run made version 1.1 of the base package, with _results.json and its lineage.
    results = ok(await client.get(f"/projects/{world.project}/runs/{run['id']}/results"))
    assert results["parameters"]["inputs"] == {
        "package": "pkg",
        "version": "1.0",
        "train_data": None,
        "gpu": "False",
    }
    assert results["parameters"]["env"] == {"epochs": "2"}
    assert results["run_summary"]["outputs"]["package"] == "pkg"
    assert results["run_summary"]["outputs"]["version"] == "1.1"
    assert results["run_summary"]["execution_time"] >= 0
    trained = ok(await client.get(f"/projects/{world.project}/packages/pkg/versions/1.1"))
    assert (
        trained["origin"] == "trained"
        and trained["parent_version"] == "1.0"
        and trained["run_id"] == run["id"]
    )
    assert trained["lineage"]["template"] == world.template and trained["lineage"]["parameters"] == {
        "epochs": 2
    }
    models = ok(await client.get(f"/projects/{world.project}/models"))["items"]
    assert [(m["package"], m["version"]) for m in models] == [("pkg", "1.1")]
