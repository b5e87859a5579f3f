"""UiPath's full pipeline, exactly, through the real API and a real agent (issue 18, item 3).

The package is written the way UiPath AI Center's guide writes one: `class Main` with `__init__`,
`process_data(input_directory)` splitting the input into the folders named by the environment
variables `training_data_directory` and `test_data_directory`, `train(training_directory)`,
`evaluate(evaluation_directory)` and `save()`. It runs unchanged: without a test dataset `evaluate`
gets the split `process_data` wrote, with one it gets the given data, and the split never ships in
the trained version's zip.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from typing import Any

from tests.api.packages_kit import zip_bytes
from tests.api.world import ok
from tests.e2e.harness import PROJECT, Stack, package, stack

# As in UiPath's guide: standard library only, nothing of Trainyard's imported.
UIPATH_PACKAGE = package(
    """
    import json
    import os


    def _values(directory):
        with open(os.path.join(directory, "rows.csv")) as f:
            return [float(line) for line in f.read().split()]


    def _note(step, directory, values):
        # What each step was handed, left as an artifact for the test to read.
        with open(os.path.join(os.environ["artifacts_directory"], step + ".json"), "w") as f:
            json.dump({"directory": directory, "rows": len(values), "cwd": os.getcwd()}, f)


    class Main(object):
        def __init__(self):
            self.mean = None

        def process_data(self, input_directory):
            with open(os.path.join(input_directory, "rows.csv")) as f:
                rows = f.read().split()
            cut = len(rows) * 4 // 5
            with open(os.path.join(os.environ["training_data_directory"], "rows.csv"), "w") as f:
                f.write("\\n".join(rows[:cut]) + "\\n")
            test_directory = os.environ["test_data_directory"]
            if not os.listdir(test_directory):  # no evaluation dataset was chosen: hold some out
                with open(os.path.join(test_directory, "rows.csv"), "w") as f:
                    f.write("\\n".join(rows[cut:]) + "\\n")

        def train(self, training_directory):
            values = _values(training_directory)
            _note("train", training_directory, values)
            self.mean = sum(values) / len(values)

        def evaluate(self, evaluation_directory):
            values = _values(evaluation_directory)
            _note("evaluate", evaluation_directory, values)
            error = sum(abs(value - self.mean) for value in values) / len(values)
            return {"score": 1.0 / (1.0 + error), "samples": len(values)}

        def save(self):
            with open("model.json", "w") as f:
                json.dump({"mean": self.mean}, f)
    """
)
ROWS = "\n".join(str(n) for n in range(1, 11)) + "\n"  # ten rows: eight to train, two held out
HOLDOUT = "100\n200\n300\n"


async def _dataset(s: Stack, name: str, rows: str) -> None:
    files = {"file": (f"{name}.zip", zip_bytes({"rows.csv": rows}), "application/zip")}
    ok(await s.admin.post(f"/projects/{PROJECT}/datasets/{name}/versions", files=files), 201)


async def _artifact(s: Stack, run_id: str, name: str) -> dict[str, Any]:
    response = await s.admin.get(f"/projects/{PROJECT}/runs/{run_id}/artifacts/{name}")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = json.loads(response.content)
    return document


async def _trained_files(s: Stack, package_name: str) -> set[str]:
    download = await s.admin.get(f"/projects/{PROJECT}/packages/{package_name}/versions/1.1/download")
    assert download.status_code == 200, download.text
    return set(zipfile.ZipFile(io.BytesIO(download.content)).namelist())


async def test_a_uipath_package_runs_its_full_pipeline_unchanged() -> None:
    async with stack() as s:
        await _dataset(s, "rows", ROWS)
        await _dataset(s, "holdout", HOLDOUT)
        split_by_package = await s.deploy(UIPATH_PACKAGE, pipeline_type="full", dataset="rows")
        given_test_set = await s.deploy(
            UIPATH_PACKAGE, pipeline_type="full", dataset="rows", test_dataset="holdout"
        )
        s.start_agent()
        first, second = await s.start(split_by_package), await s.start(given_test_set)
        await asyncio.gather(s.wait_succeeded(first["id"]), s.wait_succeeded(second["id"]))

        # Without a test dataset: train gets the training split, evaluate the held-out split, both
        # folders of the run outside its package.
        trained, evaluated = (
            await _artifact(s, first["id"], "train.json"),
            await _artifact(s, first["id"], "evaluate.json"),
        )
        assert trained["rows"] == 8 and trained["directory"].endswith("/split/training"), trained
        assert evaluated["rows"] == 2 and evaluated["directory"].endswith("/split/test"), evaluated
        for seen in (trained, evaluated):
            assert not seen["directory"].startswith(seen["cwd"] + "/"), seen
        evaluation = ok(await s.admin.get(f"/projects/{PROJECT}/runs/{first['id']}/evaluation"))
        assert evaluation["samples"] == 2, evaluation

        # With one: evaluate gets the given data, and train still gets the split process_data wrote.
        trained, evaluated = (
            await _artifact(s, second["id"], "train.json"),
            await _artifact(s, second["id"], "evaluate.json"),
        )
        assert trained["rows"] == 8 and trained["directory"].endswith("/split/training"), trained
        assert evaluated["rows"] == 3 and evaluated["directory"].endswith("/test_data"), evaluated
        evaluation = ok(await s.admin.get(f"/projects/{PROJECT}/runs/{second['id']}/evaluation"))
        assert evaluation["samples"] == 3, evaluation

        # The split never ships: the trained versions hold the package and its model, no data.
        for package_name in ("p1", "p2"):
            assert await _trained_files(s, package_name) == {"train.py", "e2e_helpers.py", "model.json"}
