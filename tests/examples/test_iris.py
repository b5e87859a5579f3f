"""examples/packages/iris-sklearn: a scikit-learn package written as UiPath's documentation shows runs
unchanged: train, evaluate to a bare score, save ./model.pkl with joblib, predict."""

import json
from pathlib import Path

import pytest

from tests.examples.conftest import EXAMPLES, PACKAGES, copy_package, load_module, run_package


@pytest.fixture(scope="module")
def iris_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iris-data")
    export = load_module(EXAMPLES / "export_iris.py", "trainyard_example_export_iris")
    assert export.export(out) == {"train": 120, "test": 30}
    return out


def test_the_iris_package_trains_evaluates_to_a_score_and_saves_its_model(
    iris_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_package(PACKAGES / "iris-sklearn", tmp_path / "run")
    run = run_package(folder, "full", data=iris_data / "train", test_data=iris_data / "test")
    assert run.code == 0, run.outcome["detail"]
    outcome = run.outcome
    assert list(outcome["evaluation"]) == ["score"]  # the runner's shape for a bare number
    assert outcome["evaluation"]["score"] >= 0.9
    assert (folder / "model.pkl").is_file()

    monkeypatch.chdir(folder)  # UiPath's packages load ./model.pkl from their current directory
    main = load_module(folder / "main.py", "trainyard_example_iris_main")
    model = main.Main()
    assert json.loads(model.predict("[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]")) == [
        "setosa",
        "virginica",
    ]
    # As a service hands it over (docs/serving.md): a JSON request's value already parsed, or its bytes;
    # one flower is its four numbers.
    assert json.loads(model.predict([5.1, 3.5, 1.4, 0.2])) == ["setosa"]
    assert json.loads(model.predict([[6.7, 3.0, 5.2, 2.3]])) == ["virginica"]
    assert json.loads(model.predict(b"[6.7, 3.0, 5.2, 2.3]")) == ["virginica"]


def test_an_evaluation_run_of_the_trained_version_scores_it(iris_data: Path, tmp_path: Path) -> None:
    trained = copy_package(PACKAGES / "iris-sklearn", tmp_path / "first")
    assert run_package(trained, "training", data=iris_data / "train").code == 0
    folder = copy_package(trained, tmp_path / "evaluation")
    run = run_package(folder, "evaluation", data=iris_data / "train", test_data=iris_data / "test")
    assert run.code == 0, run.outcome["detail"]
    assert run.outcome["evaluation"]["score"] >= 0.9
    assert list(run.outcome["stage_times"]) == ["evaluation"]
