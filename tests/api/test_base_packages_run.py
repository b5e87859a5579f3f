"""The built-in base packages' code (api/base_packages/), run as the agent runs a package: by
agent/runtime/runner.py in a package folder of its own, real torch and Pillow on the CPU. Then
`Main().predict` of main.py in process, as a service would call it. Small images, few epochs."""

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from api.base_packages.catalogue import HERE
from tests.examples.conftest import EXAMPLES, copy_package, load_module, run_package

IMAGE = HERE / "image_classifier"
TABULAR = HERE / "tabular_classifier"
SMALL = {"epochs": 2, "image_size": 8, "grayscale": True}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's digits as PNG files, a folder per class: train/ and test/ (no download)."""
    out = tmp_path_factory.mktemp("digits")
    load_module(EXAMPLES / "export_digits.py", "trainyard_base_export_digits").export(out)
    return out


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's iris as CSV files: train/iris.csv and test/iris.csv, the species in column y."""
    out = tmp_path_factory.mktemp("iris")
    load_module(EXAMPLES / "export_iris.py", "trainyard_base_export_iris").export(out)
    return out


def _main(folder: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """main.py's Main(), imported from the trained package folder as a service would."""
    monkeypatch.chdir(folder)
    for module in ("image_model", "tabular_model"):
        sys.modules.pop(module, None)  # each package folder's own helper module
    main = load_module(folder / "main.py", name)
    return main.Main()


@pytest.fixture(scope="module")
def trained_image(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The image classifier's full pipeline on the digits, once for the module: (its folder, the run)."""
    folder = copy_package(IMAGE, tmp_path_factory.mktemp("image") / "run")
    return folder, run_package(
        folder, "full", data=digits / "train", test_data=digits / "test", parameters=SMALL
    )


def test_the_image_classifier_trains_evaluates_and_predicts(
    digits: Path, trained_image: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, run = trained_image
    assert run.code == 0, run.outcome["detail"]
    evaluation = run.outcome["evaluation"]
    assert evaluation["samples"] == 364 and evaluation["accuracy"] >= 0.8, evaluation["accuracy"]
    assert sorted(evaluation["per_class"]) == [str(digit) for digit in range(10)]
    assert sum(c["support"] for c in evaluation["per_class"].values()) == 364
    assert len(evaluation["confusion_matrix"]["matrix"]) == 10
    wrong = [p for p in evaluation["predictions"] if p["true"] != p["predicted"]]
    assert len(evaluation["predictions"]) == 364 and len(wrong) == len(evaluation["badcases"])
    for case in evaluation["badcases"]:
        assert case["label"] != case["prediction"] and (digits / "test" / case["path"]).is_file(), case
    assert [record["series"]["loss"] for record in run.epochs if "loss" in record["series"]]
    assert (folder / "model.pt").is_file() and (folder.parent / "artifacts" / "curves.csv").is_file()

    main = _main(folder, "trainyard_base_image_main", monkeypatch)
    sample = next(iter(sorted((digits / "test" / "3").iterdir())))
    by_bytes = json.loads(main.predict(sample.read_bytes()))
    assert by_bytes == json.loads(main.predict(str(sample)))
    assert by_bytes["label"] in [str(digit) for digit in range(10)]
    assert sorted(by_bytes["probabilities"]) == sorted(str(digit) for digit in range(10))
    assert abs(sum(by_bytes["probabilities"].values()) - 1.0) < 1e-3
    with pytest.raises(TypeError):
        main.predict(3)


def test_a_trained_image_version_evaluates_at_its_own_size(
    digits: Path, trained_image: tuple[Path, Any], tmp_path: Path
) -> None:
    """An evaluation template fills the declared defaults (image_size 32): the saved model's size wins."""
    trained, _ = trained_image
    folder = copy_package(trained, tmp_path / "evaluation")
    run = run_package(folder, "evaluation", data=digits / "test", test_data=digits / "test")
    assert run.code == 0, run.outcome["detail"]
    assert run.outcome["evaluation"]["samples"] == 364 and run.outcome["evaluation"]["accuracy"] >= 0.8


def _image(colour: tuple[int, int, int], size: int, fmt: str, alpha: bool) -> bytes:
    image = Image.new("RGBA" if alpha else "RGB", (size, size), (*colour, 255) if alpha else colour)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_colour_images_of_any_size_and_format_with_a_held_out_tenth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test set: every tenth image is held out; JPEG and transparent PNG of other sizes are read."""
    data = tmp_path / "data"
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    for name, colour in colours.items():
        (data / name).mkdir(parents=True)
        for i in range(12):
            shade = tuple(max(0, c - 4 * i) for c in colour)
            (data / name / f"{i}.jpg").write_bytes(_image(shade, 10 + i, "JPEG", alpha=False))  # type: ignore[arg-type]
            (data / name / f"{i}.png").write_bytes(_image(shade, 20, "PNG", alpha=True))  # type: ignore[arg-type]
    folder = copy_package(IMAGE, tmp_path / "run")
    run = run_package(folder, "training", data=data, parameters={"epochs": 3, "image_size": 8})
    assert run.code == 0, run.outcome["detail"]
    main = _main(folder, "trainyard_base_colour_main", monkeypatch)
    assert json.loads(main.predict(_image((200, 20, 20), 16, "PNG", alpha=False)))["label"] == "red"
    assert json.loads(main.predict(_image((20, 20, 200), 16, "JPEG", alpha=False)))["label"] == "blue"


def test_the_tabular_classifier_trains_evaluates_and_predicts(
    iris: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_package(TABULAR, tmp_path / "run")
    run = run_package(
        folder, "full", data=iris / "train", test_data=iris / "test", parameters={"target_column": "y"}
    )
    assert run.code == 0, run.outcome["detail"]
    evaluation = run.outcome["evaluation"]
    assert evaluation["samples"] == 30 and evaluation["accuracy"] >= 0.9, evaluation
    assert sorted(evaluation["per_class"]) == ["setosa", "versicolor", "virginica"]
    for case in evaluation["badcases"]:
        assert case["path"] == "iris.csv" and case["row"] >= 1 and case["label"] != case["prediction"], case

    main = _main(folder, "trainyard_base_tabular_main", monkeypatch)
    setosa = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    virginica = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
    assert json.loads(main.predict(json.dumps(setosa)))["label"] == "setosa"
    both = json.loads(main.predict(json.dumps([setosa, virginica]).encode()))
    assert [answer["label"] for answer in both] == ["setosa", "virginica"]
    assert json.loads(main.predict(virginica))["label"] == "virginica"
    with pytest.raises(TypeError):
        main.predict("[1, 2]")


def test_tabular_text_columns_missing_values_and_the_last_column_by_default(tmp_path: Path) -> None:
    """No target_column: the last column; a text column is one-hot; an empty cell is the mean."""
    data = tmp_path / "data"
    data.mkdir()
    with (data / "weather.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["outlook", "temperature", "play"])
        for i in range(60):
            outlook = ("sunny", "rainy", "overcast")[i % 3]
            writer.writerow(
                [outlook, "" if i % 7 == 0 else 10 + i % 20, "no" if outlook == "rainy" else "yes"]
            )
    folder = copy_package(TABULAR, tmp_path / "run")
    run = run_package(folder, "full", data=data, parameters={"epochs": 100})
    assert run.code == 0, run.outcome["detail"]
    assert run.outcome["evaluation"]["accuracy"] == 1.0
    assert sorted(run.outcome["evaluation"]["per_class"]) == ["no", "yes"]


def test_a_target_column_the_csv_lacks_fails_the_run_saying_so(iris: Path, tmp_path: Path) -> None:
    folder = copy_package(TABULAR, tmp_path / "run")
    run = run_package(folder, "training", data=iris / "train", parameters={"target_column": "species"})
    assert run.code != 0
    assert "target_column 'species' is not a column" in run.outcome["detail"]
