"""GET runs/{run_id}/evaluation/samples: the test set a run evaluated, paged, each sample with its true
label (the prediction's own, the folder-per-class layout, or the test set's labels.csv) and the
package's prediction from the evaluation's `predictions` (issue 18 item 6; docs/evaluation.md)."""

from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.api.access_kit import member_token
from tests.api.packages_kit import zip_bytes
from tests.api.test_evaluation import _evaluated
from tests.api.world import World, make_world, ok, problem

FOLDERS = {
    "train/3/t.png": b"train three",
    "test/3/a.png": b"a",
    "test/3/b.png": b"b",
    "test/8/c.png": b"c",
    "test/8/d.png": b"d",
    "test/flat.png": b"flat",
}
PREDICTIONS: list[Any] = [
    {"file": "3/a.png", "predicted": 3, "confidence": 0.9},  # a number as a label, as badcases take it
    {"file": "3/b.png", "predicted": "8"},
    {"file": "8/c.png", "predicted": "8", "true": "9"},  # the sample's own true label beats its folder
    {"file": "8/gone.png", "predicted": "3"},  # the test set holds no such file
    {"file": "../../etc/passwd", "predicted": "3"},
    {"file": "/abs.png", "predicted": "3"},
    "not an object",
    {"file": "8/d.png"},  # no prediction
    {"file": "flat.png", "predicted": "3", "true": {"x": 1}},  # a true label that is not one
    {"file": "3/a.png", "predicted": "8"},  # a repeat: the first is kept
]


async def _world(client: AsyncClient, files: dict[str, bytes], suffix: str = "", **fields: Any) -> World:
    world = await make_world(client, suffix)
    upload = {"file": ("data.zip", zip_bytes(files), "application/zip")}
    ok(await client.post(f"/projects/{world.project}/datasets/data/versions", files=upload), 201)
    ok(await client.patch(f"/projects/{world.project}/templates/{world.template}", json=fields))
    return world


async def _folders_run(client: AsyncClient, app: FastAPI, document: dict[str, Any]) -> tuple[str, str]:
    world = await _world(
        client,
        FOLDERS,
        pipeline_type="full",
        dataset="data",
        dataset_path="train",
        test_dataset="data",
        test_dataset_path="test",
    )
    run_id = await _evaluated(client, app, world, document)
    return f"/projects/{world.project}/runs/{run_id}/evaluation/samples", world.project


def _rows(page: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(s["file"], s["true"], s["true_source"], s["predicted"], s["correct"]) for s in page["samples"]]


async def test_the_test_set_pages_with_true_and_predicted_labels(client: AsyncClient, app: FastAPI) -> None:
    route, project = await _folders_run(client, app, {"accuracy": 0.25, "predictions": PREDICTIONS})
    page = ok(await client.get(route))
    assert page["test_dataset"] == {"name": "data", "version": 1, "path": "test"}
    assert (page["labels_file"], page["prediction_count"], page["next_cursor"]) == (None, 4, None)
    assert _rows(page) == [
        ("3/a.png", "3", "folder", "3", True),
        ("3/b.png", "3", "folder", "8", False),
        ("8/c.png", "9", "prediction", "8", False),
        ("8/d.png", "8", "folder", None, None),
        ("flat.png", None, None, None, None),  # no class folder, no labels file, no prediction
    ]
    assert page["samples"][0]["confidence"] == 0.9 and page["samples"][0]["size"] == 1
    assert page["problems"] == [
        "5 predictions were left out: each is an object with a relative `file` inside the test set, "
        "a `predicted` label and optionally a `true` label",
        "1 predictions repeat a file; the first of each was kept",
    ]
    for sample in page["samples"]:  # every sample's link downloads its file
        download = await client.get(f"http://trainyard.test{sample['url']}")
        assert download.status_code == 200 and download.content == FOLDERS[f"test/{sample['file']}"]
    assert (
        page["samples"][0]["url"] == f"/api/v1/projects/{project}/datasets/data/versions/1/files/test/3/a.png"
    )

    # the evaluation itself does not spill the predictions into `extra`
    evaluation = ok(await client.get(route.removesuffix("/samples")))
    assert evaluation["extra"] == {} and evaluation["metrics"] == {"accuracy": 0.25}

    seen: list[str] = []
    cursor = None
    for _ in range(4):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        part = ok(await client.get(route, params=params))
        seen += [s["file"] for s in part["samples"]]
        cursor = part["next_cursor"]
        if cursor is None:
            break
    assert seen == ["3/a.png", "3/b.png", "8/c.png", "8/d.png", "flat.png"] and cursor is None

    def files(params: dict[str, Any]) -> Any:
        return client.get(route, params=params)

    assert [s["file"] for s in ok(await files({"wrong": True}))["samples"]] == ["3/b.png", "8/c.png"]
    assert [s["file"] for s in ok(await files({"wrong": False}))["samples"]] == ["3/a.png"]
    assert [s["file"] for s in ok(await files({"label": "8"}))["samples"]] == ["8/d.png"]
    assert [s["file"] for s in ok(await files({"label": "3", "wrong": True}))["samples"]] == ["3/b.png"]
    assert ok(await files({"label": "7"}))["samples"] == []

    first = ok(await files({"wrong": True, "limit": 1}))
    assert [s["file"] for s in first["samples"]] == ["3/b.png"] and first["next_cursor"]
    second = ok(await files({"wrong": True, "limit": 1, "cursor": first["next_cursor"]}))
    assert [s["file"] for s in second["samples"]] == ["8/c.png"] and second["next_cursor"]
    last = ok(await files({"wrong": True, "limit": 1, "cursor": second["next_cursor"]}))
    assert last["samples"] == [] and last["next_cursor"] is None  # 8/gone.png is no sample of the set


async def test_a_labels_file_labels_the_test_set(client: AsyncClient, app: FastAPI) -> None:
    labels = "file,label\nimg1.png,cat\nimg2.png,dog\nsub/img4.png,\n../bad.png,cat\nimg1.png,dup\n"
    files = {
        "labels.csv": labels.encode(),
        "img1.png": b"1",
        "img2.png": b"2",
        "img3.png": b"3",
        "sub/img4.png": b"4",
    }
    world = await _world(client, files, pipeline_type="evaluation", dataset="data")
    predictions = [
        {"file": "img1.png", "predicted": "cat"},
        {"file": "img2.png", "predicted": "cat"},
        {"file": "img3.png", "predicted": "dog"},
    ]
    run_id = await _evaluated(client, app, world, {"predictions": predictions})
    route = f"/projects/{world.project}/runs/{run_id}/evaluation/samples"
    page = ok(await client.get(route))
    assert page["labels_file"] == "labels.csv" and page["test_dataset"]["path"] is None
    assert _rows(page) == [  # labels.csv is no sample; with a labels file, a folder is no label
        ("img1.png", "cat", "labels_file", "cat", True),
        ("img2.png", "dog", "labels_file", "cat", False),
        ("img3.png", None, None, "dog", None),
        ("sub/img4.png", None, None, None, None),
    ]
    assert page["problems"] == ["3 rows of labels.csv were left out (no file, no label, or a repeat)"]
    assert [s["file"] for s in ok(await client.get(route, params={"wrong": True}))["samples"]] == ["img2.png"]

    # a labels file that is not one is named, and the folders label nothing then
    bad = {"labels.csv": b"path;class\nimg1.png;cat\n", "x/img1.png": b"1"}
    world = await _world(client, bad, "-2", pipeline_type="evaluation", dataset="data")
    run_id = await _evaluated(client, app, world, {"score": 1})
    page = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/evaluation/samples"))
    assert page["prediction_count"] is None and _rows(page) == [("x/img1.png", None, None, None, None)]
    assert page["problems"] == ["labels.csv does not start with the header `file,label`; it was not read"]
    assert page["labels_file"] == "labels.csv"


async def test_bad_requests_change_nothing_and_are_problems(client: AsyncClient, app: FastAPI) -> None:
    route, _ = await _folders_run(client, app, {"predictions": "not a list"})
    page = ok(await client.get(route))
    assert page["prediction_count"] == 0 and page["problems"] == ["predictions is not a list"]
    assert len(page["samples"]) == 5 and all(s["predicted"] is None for s in page["samples"])
    problem(await client.get(route, params={"cursor": "!!"}), 422, "invalid_cursor")
    problem(await client.get(route, params={"wrong": True, "cursor": "!!"}), 422, "invalid_cursor")
    for params in ({"limit": 0}, {"limit": 1001}, {"wrong": "maybe"}, {"label": "x" * 257}):
        problem(await client.get(route, params=params), 422, "validation_error")
    assert ok(await client.get(route)) == page

    world = await make_world(client, "-3")
    start = ok(await client.post(f"{world.process_path}/start"), 201)["latest_run"]
    missing = f"/projects/{world.project}/runs/{start['id']}/evaluation/samples"
    problem(await client.get(missing), 404, "evaluation_not_found")

    bare = await make_world(client, "-4", pipeline_type="evaluation")  # evaluated on no dataset at all
    run_id = await _evaluated(client, app, bare, {"score": 0.5})
    gone = f"/projects/{bare.project}/runs/{run_id}/evaluation/samples"
    problem(await client.get(gone), 404, "test_set_not_found")


async def test_it_needs_runs_view(client: AsyncClient, app: FastAPI) -> None:
    route, project = await _folders_run(client, app, {"predictions": PREDICTIONS})
    for name, permissions in (
        ("olga", ["projects.view", "models.view"]),
        ("rita", ["projects.view", "runs.view"]),
    ):
        ok(await client.post("/roles", json={"name": f"role-{name}", "permissions": permissions}), 201)
    olga = await member_token(client, project, "olga", "role-olga")
    rita = await member_token(client, project, "rita", "role-rita")
    headers = {"authorization": f"Bearer {olga}"}
    problem(await client.get(route, headers=headers), 403, "permission_denied")
    page = ok(await client.get(route, headers={"authorization": f"Bearer {rita}"}))
    assert len(page["samples"]) == 5
