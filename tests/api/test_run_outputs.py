"""A run's inputs and outputs through the agent routes, and the commit on `finished`: the new version,
its lineage and `_results.json` in one transaction (issue: packages, datasets and lineage)."""

import asyncio
import hashlib
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.api.packages_kit import upload_package, valid_package, zip_bytes
from tests.api.world import (
    BASE_PACKAGE_ZIP,
    World,
    add_process,
    agent_client,
    get_run,
    make_machine,
    make_world,
    ok,
    problem,
    report,
    start_run,
    take_commands,
)

DIGITS = {"train/0/a.png": b"zero", "train/1/b.png": b"one", "test/0/c.png": b"zero", "README": b"digits"}


async def _upload_dataset(
    client: AsyncClient, project: str, name: str, files: dict[str, bytes]
) -> dict[str, Any]:
    response = await client.post(
        f"/projects/{project}/datasets/{name}/versions",
        files={"file": ("data.zip", zip_bytes(files), "application/zip")},
    )
    return ok(response, 201)  # type: ignore[no-any-return]


async def _world_with_digits(client: AsyncClient, **template_fields: Any) -> World:
    """A world whose template reads the `digits` dataset (uploaded first: templates name what exists)."""
    world = await make_world(client)
    await _upload_dataset(client, world.project, "digits", DIGITS)
    template = f"/projects/{world.project}/templates/{world.template}"
    ok(await client.patch(template, json={"dataset": "digits", **template_fields}))
    return world


async def _running(client: AsyncClient, agent: AsyncClient, world: World) -> dict[str, Any]:
    run = await start_run(client, world)
    await take_commands(agent, "start_run")
    await report(agent, run["id"], "launched")
    return run


async def _finish(agent: AsyncClient, run_id: str) -> dict[str, Any]:
    await report(agent, run_id, "exited", exit_code=0)
    return await report(agent, run_id, "finished")


async def test_inputs_are_served_to_the_runs_machine_only(client: AsyncClient, app: FastAPI) -> None:
    world = await _world_with_digits(client, dataset_path="train")
    _, other_token = await make_machine(client, "elsewhere")
    async with agent_client(app, world.agent_token) as agent, agent_client(app, other_token) as other:
        run = await _running(client, agent, world)
        assert run["config"]["dataset_version"] == 1  # `latest`, resolved at the start and recorded
        package = await agent.get(f"/runs/{run['id']}/package")
        assert package.content == BASE_PACKAGE_ZIP
        assert package.headers["etag"] == f'"{hashlib.sha256(BASE_PACKAGE_ZIP).hexdigest()}"'
        manifest = ok(await agent.get(f"/runs/{run['id']}/dataset"))
        assert (manifest["dataset"], manifest["version"], manifest["path"]) == ("digits", 1, "train")
        assert sorted(f["path"] for f in manifest["files"]) == ["0/a.png", "1/b.png"]
        for file in manifest["files"]:
            blob = await agent.get(f"/runs/{run['id']}/blobs/{file['sha256']}")
            assert blob.status_code == 200 and hashlib.sha256(blob.content).hexdigest() == file["sha256"]
        # A file of the run's dataset version outside its sub-folder is still one of its inputs...
        outside = hashlib.sha256(b"digits").hexdigest()
        assert (await agent.get(f"/runs/{run['id']}/blobs/{outside}")).status_code == 200
        # ...a hash of nothing the run reads is not.
        problem(await agent.get(f"/runs/{run['id']}/blobs/{'0' * 64}"), 404, "blob_not_found")
        problem(await agent.get(f"/runs/{run['id']}/blobs/not-a-hash"), 422, "invalid_sha256")
        problem(await other.get(f"/runs/{run['id']}/package"), 404, "run_not_found")
        problem(await other.get(f"/runs/{run['id']}/dataset"), 404, "run_not_found")


async def test_a_training_run_makes_the_next_minor_version_with_its_lineage(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await _world_with_digits(client, save_training_data=True)
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        manifest = ok(await agent.get(f"/runs/{run['id']}/dataset"))
        snapshot = {"files": manifest["files"]}
        ok(await agent.put(f"/runs/{run['id']}/outputs/snapshot", json=snapshot))
        ok(await agent.put(f"/runs/{run['id']}/outputs/artifacts/plots/loss.txt", content=b"1.0 0.5 0.2"))
        assert (await _finish(agent, run["id"]))["status"] == "succeeded"
    version = ok(await client.get(f"/projects/{world.project}/packages/pkg/versions/1.1"))
    lineage = version["lineage"]
    assert lineage["dataset"]["name"] == "digits" and lineage["dataset"]["version"] == 1
    assert lineage["snapshot"]["files"] == len(DIGITS)
    assert lineage["parent_version"] == "1.0" and lineage["run_number"] == 1
    results = ok(await client.get(f"/projects/{world.project}/runs/{run['id']}/results"))
    outputs = results["run_summary"]["outputs"]
    assert outputs == {
        "train_data": "digits",
        "artifacts_data": "artifacts",
        "package": "pkg",
        "version": "1.1",
    }
    artifacts = ok(await client.get(f"/projects/{world.project}/runs/{run['id']}/artifacts"))
    assert [a["path"] for a in artifacts] == ["plots/loss.txt"]
    download = await client.get(f"/projects/{world.project}/runs/{run['id']}/artifacts/plots/loss.txt")
    assert download.content == b"1.0 0.5 0.2"
    tree = ok(await client.get(f"/projects/{world.project}/packages/pkg/versions/1.0/lineage"))
    assert [node["version"] for node in tree["descendants"]] == ["1.1"]
    assert (
        ok(await client.get(f"/projects/{world.project}/packages/pkg/versions/1.1/lineage"))["ancestors"][0][
            "version"
        ]
        == "1.0"
    )


async def test_two_runs_of_one_base_version_finishing_at_once_get_distinct_minors(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    second = await add_process(client, world)
    async with agent_client(app, world.agent_token) as agent:
        runs = [await _running(client, agent, w) for w in (world, second)]
        for run in runs:
            await report(agent, run["id"], "exited", exit_code=0)
            ok(await agent.put(f"/runs/{run['id']}/outputs/package", content=BASE_PACKAGE_ZIP))
        replies = await asyncio.gather(
            *(agent.post(f"/runs/{run['id']}/events", json={"type": "finished"}) for run in runs)
        )
    assert [ok(reply)["status"] for reply in replies] == ["succeeded", "succeeded"]
    made = []
    for run in runs:
        results = ok(await client.get(f"/projects/{world.project}/runs/{run['id']}/results"))
        made.append(results["run_summary"]["outputs"]["version"])
    made.sort()
    assert made == ["1.1", "1.2"]


async def test_finished_without_the_promised_outputs_fails_the_run(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        await report(agent, run["id"], "exited", exit_code=0)
        reply = ok(await agent.post(f"/runs/{run['id']}/events", json={"type": "finished"}))
        assert reply["status"] == "failed"
        # An ended run takes no outputs.
        problem(
            await agent.put(f"/runs/{run['id']}/outputs/package", content=BASE_PACKAGE_ZIP),
            409,
            "run_not_receiving",
        )
    found = await get_run(client, world, run["id"])
    assert (found["status"], found["reason_code"]) == ("failed", "missing_outputs")
    assert "trained package" in found["detail"]
    problem(await client.get(f"/projects/{world.project}/runs/{run['id']}/results"), 404, "results_not_found")
    problem(
        await client.get(f"/projects/{world.project}/packages/pkg/versions/1.1"),
        404,
        "package_version_not_found",
    )


async def test_an_evaluation_run_needs_its_evaluation_and_makes_no_version(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client, pipeline_type="evaluation")
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        ok(await agent.put(f"/runs/{run['id']}/outputs/evaluation", json={"accuracy": 0.93}))
        assert (await _finish(agent, run["id"]))["status"] == "succeeded"
    evaluation = ok(await client.get(f"/projects/{world.project}/runs/{run['id']}/evaluation"))
    assert (evaluation["accuracy"], evaluation["metrics"]) == (0.93, {"accuracy": 0.93})
    results = ok(await client.get(f"/projects/{world.project}/runs/{run['id']}/results"))
    assert results["run_summary"]["outputs"]["version"] is None
    assert ok(await client.get(f"/projects/{world.project}/models"))["items"] == []


async def test_hostile_outputs_are_refused(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        problem(await agent.put(f"/runs/{run['id']}/outputs/package", content=b"not a zip"), 422, "not_a_zip")
        no_main = zip_bytes({"train.py": "x = 1\n"})
        problem(
            await agent.put(f"/runs/{run['id']}/outputs/package", content=no_main), 422, "missing_main_class"
        )
        problem(
            await agent.put(f"/runs/{run['id']}/outputs/artifacts/..%2Fescape", content=b"x"),
            422,
            "invalid_path",
        )
        unknown = {"files": [{"path": "a", "sha256": "1" * 64, "size": 1}]}
        problem(
            await agent.put(f"/runs/{run['id']}/outputs/snapshot", json=unknown),
            422,
            "snapshot_not_run_input",
        )
        assert app.state.blobs.temp_dir.exists() and list(app.state.blobs.temp_dir.iterdir()) == []


async def test_a_snapshot_holds_only_the_runs_own_dataset_files(client: AsyncClient, app: FastAPI) -> None:
    """Not any blob of the store: one the API holds but the run was not given (another project's data,
    the run's package, a file of its dataset outside the template's sub-folder) is refused exactly as
    a blob nobody holds is, so the answer tells nothing of what the store holds."""
    world = await _world_with_digits(client, dataset_path="train", save_training_data=True)
    secret = b"another project's data"
    other = ok(await client.post("/projects", json={"name": "other"}), 201)["name"]
    await _upload_dataset(client, other, "secrets", {"secret.txt": secret})

    def file(path: str, content: bytes) -> dict[str, Any]:
        return {"path": path, "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}

    async with agent_client(app, world.agent_token) as agent:
        run = await _running(client, agent, world)
        url = f"/runs/{run['id']}/outputs/snapshot"
        given = ok(await agent.get(f"/runs/{run['id']}/dataset"))["files"]
        refused = {
            "another project's blob": file("secret.txt", secret),
            "the run's package": file("pkg.zip", BASE_PACKAGE_ZIP),
            "outside the sub-folder": file("README", b"digits"),
            "a blob nobody holds": file("x.png", b"nothing stored"),
            "a given file under another path": {**given[0], "path": "elsewhere.png"},
            "a given file with another size": {**given[0], "size": given[0]["size"] + 1},
        }
        details = set()
        for item in refused.values():
            body = problem(
                await agent.put(url, json={"files": [*given, item]}), 422, "snapshot_not_run_input"
            )
            assert body["field"] == "files"
            details.add(body["detail"].replace(repr(item["path"]), "PATH"))
        assert len(details) == 1, details  # the same words whether the blob exists or not
        # The files it was given, or some of them, are a snapshot.
        assert ok(await agent.put(url, json={"files": given[:1]}))["size"] == 1
        assert ok(await agent.put(url, json={"files": given}))["size"] == len(given)
        assert (await _finish(agent, run["id"]))["status"] == "succeeded"
    version = ok(await client.get(f"/projects/{world.project}/packages/pkg/versions/1.1"))
    assert version["lineage"]["snapshot"]["files"] == len(given)


async def test_templates_are_checked_against_the_package_and_datasets(client: AsyncClient) -> None:
    world = await make_world(client)
    templates = f"/projects/{world.project}/templates"
    ok(await upload_package(client, world.project, "declared", zip_bytes(valid_package())), 201)
    base = {"model_type": world.model_type, "base_package": "declared"}
    created = ok(await client.post(templates, json={"name": "t1", **base, "parameters": {"epochs": 3}}), 201)
    assert created["base_version"] == "1.0"
    assert created["parameters"] == {
        "epochs": 3,
        "learning_rate": 0.001,
        "optimizer": "adam",
        "augment": False,
    }
    problem(
        await client.post(templates, json={"name": "t2", **base, "parameters": {"epoch": 3}}),
        422,
        "unknown_parameter",
    )
    problem(
        await client.post(templates, json={"name": "t3", **base, "parameters": {"epochs": "many"}}),
        422,
        "invalid_parameter",
    )
    problem(
        await client.post(templates, json={"name": "t4", **base, "base_version": "7.0"}),
        404,
        "package_version_not_found",
    )
    problem(
        await client.post(
            templates, json={"name": "t5", "model_type": world.model_type, "base_package": "nope"}
        ),
        404,
        "package_not_found",
    )
    problem(
        await client.post(templates, json={"name": "t6", **base, "dataset": "nope"}), 404, "dataset_not_found"
    )
    names = [t["name"] for t in ok(await client.get(templates))["items"]]
    assert names == ["tpl", "t1"]


async def test_a_start_whose_dataset_is_empty_is_refused_and_changes_nothing(client: AsyncClient) -> None:
    world = await make_world(client)
    response = await client.post(
        f"/projects/{world.project}/datasets/later/versions",
        files={"file": ("d.zip", zip_bytes({"a.txt": b"a"}), "application/zip")},
    )
    ok(response, 201)
    assert (await client.delete(f"/projects/{world.project}/datasets/later/versions/1")).status_code == 204
    ok(await client.patch(f"/projects/{world.project}/templates/{world.template}", json={"dataset": "later"}))
    problem(await client.post(f"{world.process_path}/start"), 409, "dataset_empty")
    process = ok(await client.get(world.process_path))
    assert (process["status"], process["run_count"]) == ("created", 0)
