"""examples/packages/digits-classifier: a real PyTorch classifier, trained on the CPU through the runner.

It is trained once for the module (seed 0, five epochs, the full pipeline: train, evaluate on the test
set, save); the tests read that run's outcome, spool and package folder.
"""

import json
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from api.templates.schemas import Augmentation
from tests.examples.conftest import PACKAGES, PackageRun, copy_package, load_module, run_package

DIGITS = PACKAGES / "digits-classifier"
EPOCHS = 5


@pytest.fixture(scope="module")
def trained(digits_data: Path, tmp_path_factory: pytest.TempPathFactory) -> PackageRun:
    folder = copy_package(DIGITS, tmp_path_factory.mktemp("digits-run") / "run")
    run = run_package(
        folder,
        "full",
        data=digits_data / "train",
        test_data=digits_data / "test",
        parameters={"epochs": EPOCHS, "seed": 0},
    )
    assert run.code == 0, run.outcome["detail"]
    return run


@pytest.fixture(scope="module")
def evaluation(trained: PackageRun) -> dict[str, Any]:
    result: dict[str, Any] = trained.outcome["evaluation"]
    return result


def test_five_epochs_reach_ninety_percent_on_the_test_set(
    trained: PackageRun, evaluation: dict[str, Any]
) -> None:
    assert trained.outcome["status"] == "succeeded"
    assert list(trained.outcome["stage_times"]) == ["training", "evaluation", "saving"]
    assert evaluation["accuracy"] >= 0.90
    assert evaluation["score"] == evaluation["accuracy"]
    assert (trained.folder / "model.pt").is_file()


def test_every_epoch_reports_the_three_curves(trained: PackageRun, evaluation: dict[str, Any]) -> None:
    epochs = trained.epochs
    assert [record["epoch"] for record in epochs] == list(range(1, EPOCHS + 1))
    assert all(record["total_epochs"] == EPOCHS and record["stage"] == "training" for record in epochs)
    assert all(set(record["series"]) == {"learning_rate", "loss", "accuracy"} for record in epochs)
    rates = [record["series"]["learning_rate"] for record in epochs]
    assert rates == sorted(rates, reverse=True) and rates[0] > rates[-1]  # the schedule decays
    losses = [record["series"]["loss"] for record in epochs]
    assert losses[-1] < losses[0]
    # The last epoch's curve point is the evaluation's accuracy: both are on the test set.
    assert epochs[-1]["series"]["accuracy"] == pytest.approx(evaluation["accuracy"])
    curves = (trained.folder.parent / "artifacts" / "curves.csv").read_text().splitlines()
    assert curves[0] == "epoch,learning_rate,loss,accuracy" and len(curves) == EPOCHS + 1


def test_the_evaluation_has_per_class_metrics_a_confusion_matrix_and_badcases(
    digits_data: Path, evaluation: dict[str, Any]
) -> None:
    test_data = digits_data / "test"
    samples = len(list(test_data.rglob("*.png")))
    labels = [str(digit) for digit in range(10)]
    assert evaluation["samples"] == samples
    assert sorted(evaluation["per_class"]) == labels
    for metrics in evaluation["per_class"].values():
        assert 0.0 <= metrics["precision"] <= 1.0 and 0.0 <= metrics["recall"] <= 1.0
    assert sum(metrics["support"] for metrics in evaluation["per_class"].values()) == samples
    matrix = evaluation["confusion_matrix"]
    assert matrix["labels"] == labels
    assert sum(map(sum, matrix["matrix"])) == samples
    diagonal = sum(matrix["matrix"][i][i] for i in range(10))
    badcases = evaluation["badcases"]
    assert len(badcases) == samples - diagonal == round(samples * (1 - evaluation["accuracy"]))
    for case in badcases:
        # The path is relative to the test data directory and names an image of the labelled class.
        assert (test_data / case["path"]).is_file() and case["path"].split("/")[0] == case["label"]
        assert case["prediction"] != case["label"] and 0.0 < case["confidence"] <= 1.0
    confidences = [case["confidence"] for case in badcases]
    assert confidences == sorted(confidences, reverse=True)  # the surest mistakes first
    # Every sample's prediction (the test set browsed with its labels): the wrong ones are the badcases.
    predictions = evaluation["predictions"]
    assert sorted(p["file"] for p in predictions) == sorted(
        path.relative_to(test_data).as_posix() for path in test_data.rglob("*.png")
    )
    assert all(p["true"] == p["file"].split("/")[0] and 0.0 < p["confidence"] <= 1.0 for p in predictions)
    assert {p["file"] for p in predictions if p["predicted"] != p["true"]} == {c["path"] for c in badcases}


def test_a_run_from_the_trained_folder_starts_from_its_weights(
    trained: PackageRun, digits_data: Path, tmp_path: Path
) -> None:
    # Version 1.1 is the folder the first run saved; training it makes 1.2, from 1.1's weights.
    folder = copy_package(trained.folder, tmp_path / "run")
    run = run_package(folder, "training", data=digits_data, parameters={"epochs": 1, "seed": 0})
    assert run.code == 0, run.outcome["detail"]
    [first] = run.epochs
    assert first["series"]["loss"] < trained.epochs[0]["series"]["loss"]
    assert first["series"]["accuracy"] >= 0.90  # the test/ folder beside train/ is found by itself
    saved = torch.load(folder / "model.pt", weights_only=True)
    assert saved["epochs_trained"] == EPOCHS + 1


def test_predict_classifies_an_image(
    trained: PackageRun, digits_data: Path, evaluation: dict[str, Any]
) -> None:
    main = load_module(trained.folder / "main.py", "trainyard_example_digits_main")
    wrong = {case["path"] for case in evaluation["badcases"]}
    path, label = next(
        (p, p.parent.name)
        for p in sorted((digits_data / "test").rglob("*.png"))
        if p.relative_to(digits_data / "test").as_posix() not in wrong
    )
    model = main.Main()
    answer = json.loads(model.predict(path.read_bytes()))
    assert answer["label"] == label
    assert sorted(answer["probabilities"]) == [str(d) for d in range(10)]
    assert answer["confidence"] == max(answer["probabilities"].values())
    assert json.loads(model.predict(str(path)))["label"] == label
    # The same image as 64 numbers 0..16 (scikit-learn's scale, what a JSON request to a service
    # brings), as 8 rows of 8, and as JSON text: the same answer as its PNG.
    with Image.open(path) as image:
        numbers = [round(value * 16 / 255) for value in image.convert("L").tobytes()]
    by_numbers = json.loads(model.predict(numbers))
    assert by_numbers == answer
    assert json.loads(model.predict([numbers[row * 8 : row * 8 + 8] for row in range(8)])) == answer
    assert json.loads(model.predict(json.dumps(numbers).encode())) == answer
    with pytest.raises(ValueError, match="64 numbers"):
        model.predict([1, 2, 3])


def test_augmentation_none_leaves_a_batch_unchanged_and_every_other_value_changes_it(
    digits_data: Path,
) -> None:
    model = load_module(DIGITS / "digits_model.py", "trainyard_example_digits_model")
    _, _, images = model.load_images(digits_data / "test")
    batch = images[:64]
    original = batch.clone()
    generator = torch.Generator().manual_seed(0)
    assert model.augment(batch, "none", generator) is batch
    assert torch.equal(batch, original)
    values = [value for value in typing.get_args(Augmentation) if value != "none"]  # what templates accept
    assert len(values) == 7
    for value in values:
        changed = model.augment(batch, value, generator)
        assert changed.shape == batch.shape and not torch.equal(changed, original), value
        assert float(changed.min()) >= 0.0 and float(changed.max()) <= 1.0
        assert torch.equal(batch, original), f"{value} changed the batch in place"
    with pytest.raises(ValueError, match="unknown augmentation"):
        model.augment(batch, "rotations+blur", generator)
