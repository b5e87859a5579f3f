"""The reference packages of examples/ through the real API and the real agent process (issue 6).

One stack for the module: digits 1.0 trains to 1.1 (the full pipeline, seed 0, rotations+exposure+
noise) while iris trains beside it; then 1.1 trains on to 1.2 while an evaluation template evaluates
1.1. The fixture records what the API answered; each test checks one claim.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.api.world import ok
from tests.e2e.harness import PROJECT, Stack, stack
from tests.examples.conftest import EXAMPLES, PACKAGES, load_module

EPOCHS = 5  # the package's author: seed 0, five epochs, >= 0.90 on the test set
SECOND_EPOCHS = 1  # enough to see it start from 1.1's weights
DIGITS = "digits-classifier"
IRIS = "iris-sklearn"
SERIES = ("learning_rate", "loss", "accuracy")
ENDED = ("succeeded", "failed", "stopped")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Facts:
    """What the runs left, as the API answered it."""

    data: Path
    dataset_hash: str = ""
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    lineage_of_1_0: dict[str, Any] = field(default_factory=dict)
    badcase_downloads: list[tuple[dict[str, Any], int, bytes]] = field(default_factory=list)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)  # the test set, one 1000-sample page
    logs: str = ""


async def _upload(s: Stack, kind: str, name: str, data: bytes) -> dict[str, Any]:
    files = {"file": (f"{name}.zip", data, "application/zip")}
    body: dict[str, Any] = ok(
        await s.admin.post(f"/projects/{PROJECT}/{kind}/{name}/versions", files=files), 201
    )
    return body


async def _process(s: Stack, name: str, **template: Any) -> str:
    fields = {"name": name, "model_type": "classifier", **template}
    ok(await s.admin.post(f"/projects/{PROJECT}/templates", json=fields), 201)
    created = ok(
        await s.admin.post(f"/projects/{PROJECT}/templates/{name}/processes", json={"machine": "local"}), 201
    )
    return f"/projects/{PROJECT}/processes/{created['id']}"


async def _record(s: Stack, facts: Facts, key: str, run_id: str) -> None:
    run = await s.wait_run(run_id, *ENDED)
    facts.runs[key] = run
    base = f"/projects/{PROJECT}/runs/{run_id}"
    params = [("series", name) for name in SERIES]
    metrics = ok(await s.admin.get(f"{base}/metrics", params=params))
    facts.metrics[key] = {series["name"]: series for series in metrics["series"]}
    evaluation = await s.admin.get(f"{base}/evaluation", params={"badcases_limit": 1000})
    if evaluation.status_code == 200:
        facts.evaluations[key] = evaluation.json()
        facts.samples[key] = ok(await s.admin.get(f"{base}/evaluation/samples", params={"limit": 1000}))
    results = await s.admin.get(f"{base}/results")
    if results.status_code == 200:
        facts.results[key] = results.json()


async def _versions(s: Stack, package: str) -> dict[str, dict[str, Any]]:
    listed = ok(await s.admin.get(f"/projects/{PROJECT}/packages/{package}/versions"))
    return {version["version"]: version for version in listed["items"]}


async def _scenario(facts: Facts) -> None:
    zip_folder = load_module(EXAMPLES / "zip_package.py", "zip_package").zip_folder
    export_digits = load_module(EXAMPLES / "export_digits.py", "export_digits").export
    export_iris = load_module(EXAMPLES / "export_iris.py", "export_iris").export
    await asyncio.gather(
        asyncio.to_thread(export_digits, facts.data / "digits"),
        asyncio.to_thread(export_iris, facts.data / "iris"),
    )
    async with stack() as s:
        s.start_agent()
        try:
            await _upload(s, "packages", DIGITS, zip_folder(PACKAGES / DIGITS))
            await _upload(s, "packages", IRIS, zip_folder(PACKAGES / IRIS))
            dataset = await _upload(s, "datasets", "digits", zip_folder(facts.data / "digits"))
            facts.dataset_hash = dataset["content_hash"]
            await _upload(s, "datasets", "iris", zip_folder(facts.data / "iris"))
            splits = {"dataset_path": "train", "test_dataset_path": "test", "pipeline_type": "full"}
            digits = {"base_package": DIGITS, "dataset": "digits", "test_dataset": "digits", **splits}
            augmented = {"augmentation": "rotations+exposure+noise"}
            first = await _process(
                s, "digits", **digits, **augmented, parameters={"epochs": EPOCHS, "seed": 0}
            )
            iris = await _process(s, "iris", base_package=IRIS, dataset="iris", test_dataset="iris", **splits)
            first_run, iris_run = await s.start(first), await s.start(iris)
            await _record(s, facts, "first", first_run["id"])
            await _record(s, facts, "iris", iris_run["id"])
            assert facts.runs["first"]["status"] == "succeeded", (facts.runs["first"], s.logs())

            onward = {"epochs": SECOND_EPOCHS, "seed": 0}
            second = await _process(
                s, "digits-onward", **digits, **augmented, base_version="1.1", parameters=onward
            )
            evaluation = await _process(
                s,
                "digits-evaluation",
                pipeline_type="evaluation",
                base_package=DIGITS,
                base_version="1.1",
                dataset="digits",
                dataset_path="test",
            )
            second_run, evaluation_run = await s.start(second), await s.start(evaluation)
            await _record(s, facts, "second", second_run["id"])
            await _record(s, facts, "evaluation", evaluation_run["id"])

            facts.versions = {package: await _versions(s, package) for package in (DIGITS, IRIS)}
            lineage = f"/projects/{PROJECT}/packages/{DIGITS}/versions/1.0/lineage"
            facts.lineage_of_1_0 = ok(await s.admin.get(lineage))
            for case in facts.evaluations.get("first", {}).get("badcases", []):
                if case["url"] is None:
                    facts.badcase_downloads.append((case, 0, b""))
                    continue
                got = await s.admin.get(f"{s.api_url}{case['url']}")
                facts.badcase_downloads.append((case, got.status_code, got.content))
        finally:
            facts.logs = s.logs()


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> Facts:
    found = Facts(tmp_path_factory.mktemp("e2e-examples"))
    asyncio.run(_scenario(found))
    return found


def _succeeded(facts: Facts, key: str) -> dict[str, Any]:
    run = facts.runs[key]
    assert (run["status"], run["reason_code"]) == ("succeeded", "completed"), (run, facts.logs)
    return run


def test_digits_trains_version_1_1_with_lineage_to_1_0_and_the_dataset(facts: Facts) -> None:
    run = _succeeded(facts, "first")
    version = facts.versions[DIGITS]["1.1"]
    assert (version["origin"], version["parent_version"], version["run_id"]) == ("trained", "1.0", run["id"])
    lineage = version["lineage"]
    assert lineage["parent_version"] == "1.0" and lineage["run_id"] == run["id"]
    assert lineage["dataset"]["content_hash"] == facts.dataset_hash
    assert (lineage["dataset"]["name"], lineage["dataset"]["path"]) == ("digits", "train")
    assert lineage["test_dataset"]["content_hash"] == facts.dataset_hash
    assert lineage["parameters"]["epochs"] == EPOCHS and lineage["augmentation"] == "rotations+exposure+noise"
    # The final value of each curve the run reported travels with the version it made.
    assert {"learning_rate", "loss", "accuracy"} <= set(lineage["metrics"]), lineage["metrics"]
    assert lineage["metrics"]["accuracy"] >= 0.90
    assert facts.results["first"]["run_summary"]["outputs"]["version"] == "1.1"
    children = [node["version"] for node in facts.lineage_of_1_0["descendants"]]
    assert children == ["1.1"], facts.lineage_of_1_0


def test_the_three_curves_have_one_point_per_epoch_and_reach_ninety_percent(facts: Facts) -> None:
    _succeeded(facts, "first")
    series = facts.metrics["first"]
    assert sorted(series) == sorted(SERIES), series
    for name in SERIES:
        assert series[name]["count"] == EPOCHS, series[name]
        assert series[name]["step"] == list(range(1, EPOCHS + 1)), series[name]
    rates = series["learning_rate"]["value"]
    assert rates == sorted(rates, reverse=True) and rates[0] > rates[-1]
    assert series["accuracy"]["latest"]["value"] >= 0.90, series["accuracy"]


def test_the_evaluation_has_per_class_metrics_and_every_badcase_downloads(facts: Facts) -> None:
    _succeeded(facts, "first")
    evaluation = facts.evaluations["first"]
    assert evaluation["accuracy"] >= 0.90 and evaluation["samples"] == 364, evaluation
    assert evaluation["test_dataset"] == {"name": "digits", "version": 1, "path": "test"}
    assert sorted(c["label"] for c in evaluation["per_class"]) == [str(digit) for digit in range(10)]
    for metrics in evaluation["per_class"]:
        assert 0.0 <= metrics["precision"] <= 1.0 and 0.0 <= metrics["recall"] <= 1.0, metrics
    assert evaluation["badcase_count"] == len(evaluation["badcases"]) == len(facts.badcase_downloads) >= 1
    for case, status, content in facts.badcase_downloads:
        assert status == 200 and content.startswith(PNG_MAGIC), (case, status)
        assert content == (facts.data / "digits" / "test" / case["path"]).read_bytes(), case


def test_the_test_set_pages_with_true_and_predicted_labels(facts: Facts) -> None:
    _succeeded(facts, "first")
    page = facts.samples["first"]
    assert (page["prediction_count"], page["next_cursor"], page["problems"]) == (364, None, []), page
    samples = page["samples"]
    assert len(samples) == 364 and all(s["predicted"] is not None for s in samples)
    # the package's own true label is its class folder's name
    assert all((s["true"], s["true_source"]) == (s["file"].split("/")[0], "prediction") for s in samples)
    wrong = {s["file"] for s in samples if s["correct"] is False}
    assert wrong == {case["path"] for case in facts.evaluations["first"]["badcases"]}


def test_training_1_1_again_makes_1_2_from_its_weights(facts: Facts) -> None:
    run = _succeeded(facts, "second")
    version = facts.versions[DIGITS]["1.2"]
    assert (version["parent_version"], version["run_id"]) == ("1.1", run["id"])
    assert facts.metrics["second"]["loss"]["step"] == list(range(1, SECOND_EPOCHS + 1))
    first_loss = facts.metrics["first"]["loss"]["value"][0]
    onward_loss = facts.metrics["second"]["loss"]["value"][0]
    assert onward_loss < first_loss, (onward_loss, first_loss)  # it started from 1.1's weights


def test_the_sklearn_package_makes_a_version_and_a_score(facts: Facts) -> None:
    run = _succeeded(facts, "iris")
    assert sorted(facts.versions[IRIS]) == ["1.0", "1.1"]
    assert facts.versions[IRIS]["1.1"]["run_id"] == run["id"]
    evaluation = facts.evaluations["iris"]
    assert evaluation["score"] is not None and evaluation["score"] >= 0.8, evaluation
    assert facts.results["iris"]["run_summary"]["outputs"]["version"] == "1.1"


def test_an_evaluation_template_makes_metrics_and_no_version(facts: Facts) -> None:
    _succeeded(facts, "evaluation")
    evaluation = facts.evaluations["evaluation"]
    assert evaluation["accuracy"] >= 0.90 and evaluation["metrics"]["accuracy"] == evaluation["accuracy"]
    assert evaluation["samples"] == 364 and len(evaluation["per_class"]) == 10
    assert facts.results["evaluation"]["run_summary"]["outputs"]["version"] is None
    assert sorted(facts.versions[DIGITS]) == ["1.0", "1.1", "1.2"]  # the second training's 1.2 only
