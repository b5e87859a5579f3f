"""The reference packages of examples/, run as the agent runs them: by agent/runtime/runner.py, in a
package folder of their own, with real torch and scikit-learn on the CPU."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agent.telemetry import read_spool

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PACKAGES = EXAMPLES / "packages"
RUNNER = ROOT / "agent" / "runtime" / "runner.py"


def load_module(path: Path, name: str) -> ModuleType:
    """Import `path` under `name` (its folder on sys.path meanwhile, for its sibling modules)."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


class PackageRun:
    """One run of a package folder through the runner, as the agent starts it."""

    def __init__(self, folder: Path, code: int) -> None:
        self.folder = folder
        self.code = code

    @property
    def outcome(self) -> dict[str, Any]:
        return json.loads((self.folder.parent / "outcome.json").read_text())  # type: ignore[no-any-return]

    @property
    def spool(self) -> list[dict[str, Any]]:
        return read_spool(self.folder.parent / "spool.jsonl")

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """The spool's records that carry metric series, in order."""
        return [record for record in self.spool if record["series"]]


def copy_package(source: Path, run_folder: Path) -> Path:
    """The package folder of a new run (the run's current directory, as the agent unpacks it)."""
    run_folder.mkdir(parents=True)
    return Path(shutil.copytree(source, run_folder / "package", ignore=shutil.ignore_patterns("__pycache__")))


def run_package(
    folder: Path,
    pipeline: str,
    *,
    data: Path,
    test_data: Path | None = None,
    parameters: dict[str, Any] | None = None,
    augmentation: str = "none",
) -> PackageRun:
    """Run the package in `folder` through the runner; parameters as the agent hands them over: each
    an environment variable (a string) and all of them in TRAINYARD_PARAMETERS_FILE."""
    run_folder = folder.parent
    parameters = parameters or {}
    parameters_file = run_folder / "parameters.json"
    parameters_file.write_text(json.dumps(parameters))
    inherited = {k: v for k, v in os.environ.items() if k not in ("RANK", "TRAINYARD_SPOOL", "PYTHONPATH")}
    env = {
        **inherited,
        **{
            name: str(value).lower() if isinstance(value, bool) else str(value)
            for name, value in parameters.items()
        },
        "data_directory": str(data),
        "artifacts_directory": str(run_folder / "artifacts"),
        "augmentation": augmentation,
        "save_training_data": "false",
        "TRAINYARD_PIPELINE": pipeline,
        "TRAINYARD_OUTCOME": str(run_folder / "outcome.json"),
        "TRAINYARD_SPOOL": str(run_folder / "spool.jsonl"),
        "TRAINYARD_PARAMETERS_FILE": str(parameters_file),
    }
    if test_data is not None:
        env["test_data_directory"] = str(test_data)
    completed = subprocess.run(
        [sys.executable, str(RUNNER)], cwd=folder, env=env, timeout=600, check=False, start_new_session=True
    )
    return PackageRun(folder, completed.returncode)


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits dataset as examples/export_digits.py writes it: train/ and test/, a folder per digit."""
    out = tmp_path_factory.mktemp("digits-data")
    export = load_module(EXAMPLES / "export_digits.py", "trainyard_example_export_digits")
    export.export(out)
    return out
