"""GET runs/{run_id}/evaluation: TI-ONE's evaluation (when, how long, samples, badcases, per-class
precision and recall) read leniently from what the package returned, each badcase linked to its file
in the run's test dataset (issue 6; the document's shape is docs/evaluation.md)."""

from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.api.packages_kit import zip_bytes
from tests.api.world import World, agent_client, make_world, ok, problem, report, start_run, take_commands

# A digits-shaped dataset: the images' bytes stand for PNGs; what matters is that each link serves them.
DIGITS = {
    "train/3/0001.png": b"three",
    "train/8/0002.png": b"eight",
    "test/3/0003.png": b"test three",
    "test/8/0004.png": b"test eight",
    "test/8/0005.png": b"another eight",
}

EVALUATION = {
    "score": 0.6,
    "accuracy": 0.6,
    "samples": 5,
    "duration_seconds": 0.25,
    "per_class": {
        "3": {"precision": 0.5, "recall": 1.0, "support": 1},
        "8": {"precision": 1.0, "recall": 0.5, "support": 4},
    },
    "confusion_matrix": {"labels": ["3", "8"], "matrix": [[1, 0], [2, 2]]},
    "badcases": [
        {"path": "8/0004.png", "label": "8", "prediction": "3", "confidence": 0.91},
        {"path": "8/0005.png", "label": "8", "prediction": "3", "confidence": 0.55},
        {"path": "8/gone.png", "label": "8", "prediction": "3", "confidence": 0.5},
    ],
    "model": "DigitNet",
}


async def _digits_world(client: AsyncClient, **template_fields: Any) -> World:
    world = await make_world(client)
    ok(
        await client.post(
            f"/projects/{world.project}/datasets/digits/versions",
            files={"file": ("digits.zip", zip_bytes(DIGITS), "application/zip")},
        ),
        201,
    )
    template = f"/projects/{world.project}/templates/{world.template}"
    ok(await client.patch(template, json=template_fields))
    return world


async def _evaluated(client: AsyncClient, app: FastAPI, world: World, document: dict[str, Any]) -> str:
    """Start the world's process and play the agent: launched, the evaluation uploaded, finished."""
    async with agent_client(app, world.agent_token) as agent:
        run = await start_run(client, world)
        await take_commands(agent, "start_run")
        await report(agent, run["id"], "launched")
        ok(await agent.put(f"/runs/{run['id']}/outputs/evaluation", json=document))
        await report(agent, run["id"], "exited", exit_code=0)
        assert (await report(agent, run["id"], "finished"))["status"] == "succeeded"
    return str(run["id"])


async def test_the_evaluation_links_every_badcase_to_its_test_file(client: AsyncClient, app: FastAPI) -> None:
    world = await _digits_world(
        client,
        pipeline_type="full",
        dataset="digits",
        dataset_path="train",
        test_dataset="digits",
        test_dataset_path="test",
    )
    run_id = await _evaluated(client, app, world, EVALUATION)
    evaluation = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/evaluation"))
    assert evaluation["evaluated_at"] and evaluation["duration_seconds"] == 0.25
    assert evaluation["test_dataset"] == {"name": "digits", "version": 1, "path": "test"}
    assert (evaluation["samples"], evaluation["badcase_count"]) == (5, 3)
    assert (evaluation["score"], evaluation["accuracy"]) == (0.6, 0.6)
    assert evaluation["metrics"] == {"score": 0.6, "accuracy": 0.6, "samples": 5, "duration_seconds": 0.25}
    assert evaluation["per_class"] == [
        {"label": "3", "precision": 0.5, "recall": 1.0, "support": 1},
        {"label": "8", "precision": 1.0, "recall": 0.5, "support": 4},
    ]
    assert evaluation["confusion_matrix"] == EVALUATION["confusion_matrix"]
    assert evaluation["extra"] == {"model": "DigitNet"} and evaluation["problems"] == []

    cases = evaluation["badcases"]
    assert [(c["path"], c["label"], c["prediction"], c["confidence"]) for c in cases] == [
        (c["path"], c["label"], c["prediction"], c["confidence"]) for c in EVALUATION["badcases"]
    ]
    base = f"/api/v1/projects/{world.project}/datasets/digits/versions/1/files/test/"
    assert [c["url"] for c in cases] == [f"{base}8/0004.png", f"{base}8/0005.png", None]  # no such file
    for case in cases[:2]:
        download = await client.get(f"http://trainyard.test{case['url']}")
        assert download.status_code == 200 and download.content == DIGITS[f"test/{case['path']}"]

    page = ok(
        await client.get(
            f"/projects/{world.project}/runs/{run_id}/evaluation",
            params={"badcases_offset": 1, "badcases_limit": 1},
        )
    )
    assert [c["path"] for c in page["badcases"]] == ["8/0005.png"] and page["badcase_count"] == 3


async def test_without_a_test_dataset_badcases_link_into_the_training_data(
    client: AsyncClient, app: FastAPI
) -> None:
    # The runner evaluates `data_directory` when the run has no test dataset: the links follow it.
    world = await _digits_world(client, pipeline_type="evaluation", dataset="digits")
    document = {"accuracy": 0.5, "badcases": [{"path": "test/8/0004.png", "label": 8, "prediction": 3}]}
    run_id = await _evaluated(client, app, world, document)
    evaluation = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/evaluation"))
    assert evaluation["test_dataset"] == {"name": "digits", "version": 1, "path": None}
    [case] = evaluation["badcases"]
    assert (case["label"], case["prediction"], case["confidence"]) == ("8", "3", None)  # numbers as labels
    download = await client.get(f"http://trainyard.test{case['url']}")
    assert download.content == DIGITS["test/8/0004.png"]


async def test_a_bare_score_and_a_malformed_document_still_read(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client, pipeline_type="evaluation")
    run_id = await _evaluated(client, app, world, {"score": 0.875})  # what the runner makes of `return 0.875`
    evaluation = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/evaluation"))
    assert (evaluation["score"], evaluation["accuracy"], evaluation["samples"]) == (0.875, None, None)
    assert (evaluation["badcase_count"], evaluation["badcases"], evaluation["per_class"]) == (None, [], [])
    assert (evaluation["test_dataset"], evaluation["confusion_matrix"], evaluation["problems"]) == (
        None,
        None,
        [],
    )

    world = await make_world(client, "-2", pipeline_type="evaluation")
    malformed = {
        "accuracy": "high",
        "per_class": [{"label": "3", "precision": "x", "recall": 0.5}, {"precision": 1.0}, 7],
        "confusion_matrix": {"labels": ["3"], "matrix": [[1, 2]]},
        "badcases": [{"path": "../../etc/passwd", "label": "3"}, "not a case"],
    }
    run_id = await _evaluated(client, app, world, malformed)
    evaluation = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/evaluation"))
    assert (evaluation["score"], evaluation["accuracy"]) == (None, None)
    assert evaluation["per_class"] == [{"label": "3", "precision": None, "recall": 0.5, "support": None}]
    assert evaluation["confusion_matrix"] is None
    assert evaluation["badcase_count"] == 2
    assert evaluation["badcases"] == [
        {"path": None, "label": "3", "prediction": None, "confidence": None, "url": None}
    ]
    assert evaluation["extra"] == {}
    assert len(evaluation["problems"]) == 4 and "accuracy is not a number" in evaluation["problems"]


async def test_a_run_without_an_evaluation_says_so(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    run = await start_run(client, world)
    problem(
        await client.get(f"/projects/{world.project}/runs/{run['id']}/evaluation"),
        404,
        "evaluation_not_found",
    )
