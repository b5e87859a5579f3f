"""Training with no code of one's own (issue 18 item 5) through the real API and a real agent process.

A person holds only data: scikit-learn's digits written as PNG files, a folder per class, and its
iris flowers as CSV files. `trainyard-api migrate` installed the built-in base packages; they upload
the datasets, write templates naming `image-classifier` and `tabular-classifier` (no package
uploaded), run them, and get trained, evaluated versions (per-class metrics, badcases whose files
download). The trained image version, downloaded, answers `Main().predict` in process; both trained
versions, published as services on the machine, answer `predict` through the API.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import zipfile
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.run_process import command_lines
from tests.api.world import ok
from tests.e2e.harness import PROJECT, Stack, stack
from tests.e2e.test_serving import agent_settings, wait_service
from tests.examples.conftest import EXAMPLES, load_module

IMAGE = "image-classifier"
TABULAR = "tabular-classifier"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPLITS = {"dataset_path": "train", "test_dataset_path": "test", "pipeline_type": "full"}


@dataclass
class Facts:
    data: Path
    catalogue: dict[str, Any] = field(default_factory=dict)  # the project's packages before any template
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)  # the test set, one page
    versions: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    badcase_downloads: list[tuple[dict[str, Any], int, bytes]] = field(default_factory=list)
    trained_zip: bytes = b""
    served: dict[str, Any] = field(default_factory=dict)  # what each service's predict answered
    logs: str = ""


async def _upload_dataset(s: Stack, name: str, folder: Path) -> None:
    zip_folder = load_module(EXAMPLES / "zip_package.py", "zip_package").zip_folder
    files = {"file": (f"{name}.zip", zip_folder(folder), "application/zip")}
    ok(await s.admin.post(f"/projects/{PROJECT}/datasets/{name}/versions", files=files), 201)


async def _run(s: Stack, facts: Facts, name: str, **template: Any) -> None:
    created = ok(await s.admin.post(f"/projects/{PROJECT}/templates", json={"name": name, **template}), 201)
    facts.templates[name] = created
    process = ok(
        await s.admin.post(f"/projects/{PROJECT}/templates/{name}/processes", json={"machine": "local"}), 201
    )
    run = await s.start(f"/projects/{PROJECT}/processes/{process['id']}")
    facts.runs[name] = await s.wait_succeeded(run["id"])
    evaluation = f"/projects/{PROJECT}/runs/{run['id']}/evaluation"
    facts.evaluations[name] = ok(await s.admin.get(evaluation, params={"badcases_limit": 1000}))
    facts.samples[name] = ok(await s.admin.get(f"{evaluation}/samples", params={"limit": 1000}))


async def _scenario(facts: Facts) -> None:
    export_digits = load_module(EXAMPLES / "export_digits.py", "export_digits").export
    export_iris = load_module(EXAMPLES / "export_iris.py", "export_iris").export
    await asyncio.gather(
        asyncio.to_thread(export_digits, facts.data / "digits"),
        asyncio.to_thread(export_iris, facts.data / "iris"),
    )
    async with stack() as s:
        s.start_agent((), **agent_settings())
        try:
            facts.catalogue = ok(await s.admin.get(f"/projects/{PROJECT}/packages"))
            await _upload_dataset(s, "digits", facts.data / "digits")
            await _upload_dataset(s, "iris", facts.data / "iris")
            await asyncio.gather(
                _run(
                    s,
                    facts,
                    "digits",
                    model_type="image-classification",
                    base_package=IMAGE,
                    dataset="digits",
                    test_dataset="digits",
                    parameters={"epochs": 2, "image_size": 8, "grayscale": True},
                    **SPLITS,
                ),
                _run(
                    s,
                    facts,
                    "iris",
                    model_type="tabular-classification",
                    base_package=TABULAR,
                    dataset="iris",
                    test_dataset="iris",
                    parameters={"target_column": "y", "epochs": 150},
                    **SPLITS,
                ),
            )
            for package in (IMAGE, TABULAR):
                listed = ok(await s.admin.get(f"/projects/{PROJECT}/packages/{package}/versions"))
                facts.versions[package] = {item["version"]: item for item in listed["items"]}
            facts.models = ok(await s.admin.get(f"/projects/{PROJECT}/models"))["items"]
            for case in facts.evaluations["digits"]["badcases"]:
                got = await s.admin.get(f"{s.api_url}{case['url']}") if case["url"] else None
                facts.badcase_downloads.append(
                    (case, 0 if got is None else got.status_code, b"" if got is None else got.content)
                )
            download = f"/projects/{PROJECT}/packages/{IMAGE}/versions/1.1/download"
            facts.trained_zip = (await s.admin.get(download)).content
            await _serve(s, facts)
        finally:
            facts.logs = s.logs()
            for pid, cmdline in command_lines():  # no serving process is left behind
                if str(s.work_dir).encode() in cmdline and b"server.py" in cmdline:
                    with suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)


async def _serve(s: Stack, facts: Facts) -> None:
    """Both trained versions published on the machine, asked to predict through the API, stopped."""
    paths = {}
    for name, package in (("digits", IMAGE), ("iris", TABULAR)):
        created = {"name": name, "package": package, "version": "1.1", "machine": "local"}
        ok(await s.admin.post(f"/projects/{PROJECT}/services", json=created), 201)
        paths[name] = f"/projects/{PROJECT}/services/{name}"
        ok(await s.admin.post(f"{paths[name]}/start"), 202)
    for path in paths.values():
        await wait_service(s, path, "serving")
    seven = sorted((facts.data / "digits" / "test" / "7").iterdir())[0]
    image = await s.admin.post(
        f"{paths['digits']}/predict", content=seven.read_bytes(), headers={"Content-Type": "image/png"}
    )
    flower = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
    row = await s.admin.post(f"{paths['iris']}/predict", json=flower)
    facts.served = {"digits": (image.status_code, image.text), "iris": (row.status_code, row.text)}
    for path in paths.values():
        ok(await s.admin.post(f"{path}/stop"), 202)
    for path in paths.values():
        await wait_service(s, path, "stopped", "failed")


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> Facts:
    found = Facts(tmp_path_factory.mktemp("e2e-base-packages"))
    asyncio.run(_scenario(found))
    return found


def test_nothing_is_uploaded_but_data(facts: Facts) -> None:
    assert facts.catalogue["items"] == [], facts.catalogue  # the project holds no package of its own
    for name, package in (("digits", IMAGE), ("iris", TABULAR)):
        assert (facts.templates[name]["base_package"], facts.templates[name]["base_version"]) == (
            package,
            "1.0",
        )


@pytest.mark.parametrize(("name", "package"), [("digits", IMAGE), ("iris", TABULAR)])
def test_each_run_trains_a_new_version_from_the_built_in_one(facts: Facts, name: str, package: str) -> None:
    run = facts.runs[name]
    assert (run["status"], run["reason_code"]) == ("succeeded", "completed"), facts.logs
    versions = facts.versions[package]
    assert sorted(versions) == ["1.0", "1.1"]
    assert versions["1.0"]["origin"] == "builtin"
    trained = versions["1.1"]
    assert (trained["origin"], trained["parent_version"], trained["run_id"]) == ("trained", "1.0", run["id"])
    assert any(model["package"] == package and model["version"] == "1.1" for model in facts.models)


def test_the_image_evaluation_has_per_class_metrics_and_badcases_that_download(facts: Facts) -> None:
    evaluation = facts.evaluations["digits"]
    assert evaluation["samples"] == 364 and evaluation["accuracy"] >= 0.8, evaluation
    assert sorted(c["label"] for c in evaluation["per_class"]) == [str(digit) for digit in range(10)]
    assert evaluation["badcase_count"] == len(evaluation["badcases"]) == len(facts.badcase_downloads)
    for case, status, content in facts.badcase_downloads:
        assert status == 200 and content.startswith(PNG_MAGIC), case
        assert content == (facts.data / "digits" / "test" / case["path"]).read_bytes(), case


def test_the_image_test_set_pages_with_true_and_predicted_labels(facts: Facts) -> None:
    page = facts.samples["digits"]
    assert (page["prediction_count"], page["problems"]) == (364, []), page
    assert all(sample["true"] == sample["file"].split("/")[0] for sample in page["samples"])
    wrong = {sample["file"] for sample in page["samples"] if sample["correct"] is False}
    assert wrong == {case["path"] for case in facts.evaluations["digits"]["badcases"]}


def test_the_tabular_evaluation_has_per_class_metrics(facts: Facts) -> None:
    evaluation = facts.evaluations["iris"]
    assert evaluation["samples"] == 30 and evaluation["accuracy"] >= 0.9, evaluation
    assert sorted(c["label"] for c in evaluation["per_class"]) == ["setosa", "versicolor", "virginica"]
    assert all(case["path"] == "iris.csv" for case in evaluation["badcases"])


def test_the_trained_image_version_predicts_in_process(
    facts: Facts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "served"
    with zipfile.ZipFile(io.BytesIO(facts.trained_zip)) as archive:
        archive.extractall(folder)
    assert (folder / "model.pt").is_file()
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("image_model", None)
    main = load_module(folder / "main.py", "trainyard_e2e_image_main").Main()
    images = sorted((facts.data / "digits" / "test" / "7").iterdir())[:5]
    answers = [json.loads(main.predict(image.read_bytes())) for image in images]
    assert all(answer["label"] in [str(digit) for digit in range(10)] for answer in answers), answers
    assert sum(answer["label"] == "7" for answer in answers) >= 3, answers


def test_both_trained_versions_answer_predict_as_services(facts: Facts) -> None:
    status, text = facts.served["digits"]
    assert status == 200, text
    answer = json.loads(text)
    assert answer["label"] in [str(digit) for digit in range(10)], answer
    status, text = facts.served["iris"]
    assert status == 200, text
    assert json.loads(text)["label"] == "virginica", text
