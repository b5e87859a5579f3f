"""Train, evaluate and save a handwritten-digit classifier: a Trainyard (UiPath AI Center) package.

`Main().train(data_directory)` reads one folder per class of images (or the `train/` folder inside
`data_directory`, as examples/export_digits.py writes it), trains for `epochs` with a learning rate
decaying by `learning_rate_decay` each epoch, and reports the learning rate, the training loss and
the test accuracy of every epoch (Primo's three curves). The test images are those of
`test_data_directory`, else of the `test/` folder beside `train/`, else every tenth training image,
held out. `augmentation` (`none`, `rotations+exposure+noise`, ...) changes each training batch.
`evaluate(data_directory)` returns accuracy, per-class precision and recall, the confusion matrix and
the badcases (docs/evaluation.md). `save()` writes `model.pt` into the package folder, and `Main()`
loads it when present, so training version 1.1 continues from 1.1's weights. Each epoch ends with a
checkpoint in `trainyard.checkpoint_directory()` (weights, optimiser, random state, curves): a restart
of a failed or stopped run resumes after the last epoch it finished, and its epochs count on.
At the run's maximum duration `trainyard.should_stop()` turns true: training ends after the epoch in
hand and is saved.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import torch
from digits_model import DigitNet, augment, limit_threads, load_images, parse_augmentation
from torch.nn import functional
from trainyard import checkpoint_directory, report, should_stop

HERE = Path(__file__).resolve().parent
MODEL_FILE = HERE / "model.pt"
HOLD_OUT_EVERY = 10  # without test images, every tenth training image is held out for the curve
CHECKPOINT_NAME = "digits-checkpoint.pt"
EVAL_BATCH = 512


# -- parameters: declared in parameters.json, given as environment variables and a JSON file ---------------


def _convert(name: str, value: Any, kind: str) -> Any:
    """`value` (typed from the JSON file, or a string from the environment) as the declared type."""
    text = value.strip() if isinstance(value, str) else value
    try:
        if kind == "bool":
            if isinstance(text, bool):
                return text
            if str(text).lower() in ("true", "1", "yes", "on"):
                return True
            if str(text).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if isinstance(text, bool):
            raise ValueError
        if kind == "int":
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind == "float":
            return float(text)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name} is {value!r}, which is not a {kind}") from None


def load_parameters() -> dict[str, Any]:
    """The declared parameters: from TRAINYARD_PARAMETERS_FILE, else the environment, else the default."""
    declared = json.loads((HERE / "parameters.json").read_text())
    if isinstance(declared, dict):
        declared = declared["parameters"]
    given: dict[str, Any] = {}
    path = os.environ.get("TRAINYARD_PARAMETERS_FILE")
    if path and os.path.isfile(path):
        with open(path) as file:
            loaded = json.load(file)
        given = loaded if isinstance(loaded, dict) else {}
    values: dict[str, Any] = {}
    for item in declared:
        name = item["name"]
        raw = given.get(name, os.environ.get(name, item.get("default")))
        values[name] = _convert(name, raw, item["type"])
    if values["epochs"] < 0 or values["batch_size"] < 1 or values["learning_rate"] <= 0:
        raise ValueError(f"parameters out of range: {values}")
    return values


# -- data ----------------------------------------------------------------------------------------------


def split_folder(directory: str | os.PathLike[str], split: str) -> Path:
    """`directory/split` when the dataset holds both splits (train/ and test/), else `directory`."""
    folder = Path(directory)
    other = "test" if split == "train" else "train"
    return folder / split if (folder / split).is_dir() and (folder / other).is_dir() else folder


def _test_folder(data_directory: str) -> Path | None:
    given = os.environ.get("test_data_directory")  # noqa: SIM112 (UiPath's name)
    if given and Path(given).is_dir():
        return split_folder(given, "test")
    inner = Path(data_directory) / "test"
    return inner if inner.is_dir() and (Path(data_directory) / "train").is_dir() else None


# -- the package -----------------------------------------------------------------------------------------


class Main:
    def __init__(self) -> None:
        limit_threads()
        self.parameters = load_parameters()
        self.classes: list[str] = []
        self.model: DigitNet | None = None
        self.epochs_trained = 0
        if MODEL_FILE.exists():
            checkpoint = torch.load(MODEL_FILE, map_location="cpu", weights_only=True)
            self.classes = list(checkpoint["classes"])
            self.model = DigitNet(len(self.classes))
            self.model.load_state_dict(checkpoint["state_dict"])
            self.epochs_trained = int(checkpoint.get("epochs_trained", 0))

    def train(self, data_directory: str) -> None:
        parameters = self.parameters
        augmentation = os.environ.get("augmentation", "none")  # noqa: SIM112 (UiPath's name)
        parse_augmentation(augmentation)  # a typo fails now, not after the first epoch
        torch.manual_seed(parameters["seed"])
        generator = torch.Generator().manual_seed(parameters["seed"])

        _, labels, images = load_images(split_folder(data_directory, "train"))
        test_folder = _test_folder(data_directory)
        if test_folder is not None:
            _, test_labels, test_images = load_images(test_folder)
        else:
            print(f"no test images: every {HOLD_OUT_EVERY}th training image is held out for the accuracy")
            held = torch.zeros(len(labels), dtype=torch.bool)
            held[::HOLD_OUT_EVERY] = True
            test_labels = [label for label, out in zip(labels, held.tolist(), strict=True) if out]
            labels = [label for label, out in zip(labels, held.tolist(), strict=True) if not out]
            test_images, images = images[held], images[~held]

        classes = sorted(set(labels))
        if self.model is None or classes != self.classes:
            if self.model is not None:
                print(f"the classes changed ({self.classes} -> {classes}): training from scratch")
            self.classes, self.model, self.epochs_trained = classes, DigitNet(len(classes)), 0
        else:
            print(f"continuing from model.pt ({self.epochs_trained} epochs trained before)")
        model = self.model
        index = {label: i for i, label in enumerate(classes)}
        targets = torch.tensor([index[label] for label in labels])
        optimizer = torch.optim.Adam(model.parameters(), lr=parameters["learning_rate"])
        epochs, batch_size = parameters["epochs"], parameters["batch_size"]
        history: list[dict[str, float]] = []
        folder = checkpoint_directory()
        checkpoint = Path(folder) / CHECKPOINT_NAME if folder else None
        first = 1
        if checkpoint is not None and checkpoint.is_file():
            first = self._resume(checkpoint, optimizer, generator, history)
        for epoch in range(first, epochs + 1):
            learning_rate = parameters["learning_rate"] * parameters["learning_rate_decay"] ** (epoch - 1)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            model.train()
            order = torch.randperm(len(targets), generator=generator)
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                inputs = augment(images[batch], augmentation, generator)
                loss = functional.cross_entropy(model(inputs), targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            loss_mean = total / max(1, len(targets))
            accuracy = self._accuracy(test_images, test_labels)
            self.epochs_trained += 1
            history.append(
                {"epoch": epoch, "learning_rate": learning_rate, "loss": loss_mean, "accuracy": accuracy}
            )
            if checkpoint is not None:
                self._checkpoint(checkpoint, epoch, optimizer, generator, history)
            report(
                epoch=epoch,
                total_epochs=epochs,
                learning_rate=learning_rate,
                loss=loss_mean,
                accuracy=accuracy,
                stage="training",
            )
            print(f"epoch {epoch}/{epochs}: lr {learning_rate:.5f} loss {loss_mean:.4f} acc {accuracy:.4f}")
            if should_stop():  # the maximum duration came: save() keeps the model as it is now
                print(f"asked to finish: stopping after epoch {epoch} of {epochs}")
                break
        _write_curves(history)

    def _checkpoint(
        self,
        path: Path,
        epoch: int,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        history: list[dict[str, float]],
    ) -> None:
        """Everything the next epoch needs, written whole (a temporary file, then a rename), so a stop
        in the middle of the write leaves the checkpoint before it."""
        assert self.model is not None
        state = {
            "epoch": epoch,
            "classes": self.classes,
            "epochs_trained": self.epochs_trained,
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "rng": torch.get_rng_state(),
            "history": history,
        }
        temporary = path.with_name(f".{path.name}.tmp")
        torch.save(state, temporary)
        os.replace(temporary, path)

    def _resume(
        self,
        path: Path,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        history: list[dict[str, float]],
    ) -> int:
        """Load the checkpoint a restart handed back; the first epoch left to train (1: start over,
        when it was made for other classes)."""
        assert self.model is not None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if list(state["classes"]) != self.classes:
            print(f"the checkpoint is for other classes ({state['classes']}): training from the start")
            return 1
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        history.extend(state["history"])
        self.epochs_trained = int(state["epochs_trained"])
        print(f"resuming from the checkpoint of epoch {state['epoch']}")
        return int(state["epoch"]) + 1

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence, class index) of each image."""
        assert self.model is not None
        self.model.eval()
        with torch.no_grad():
            probabilities = torch.cat(
                [
                    functional.softmax(self.model(images[start : start + EVAL_BATCH]), dim=1)
                    for start in range(0, len(images), EVAL_BATCH)
                ]
            )
        confidence, predicted = probabilities.max(dim=1)
        return confidence, predicted

    def _accuracy(self, images: torch.Tensor, labels: list[str]) -> float:
        if not labels:
            return 0.0
        _, predicted = self._predict(images)
        hits = sum(self.classes[p] == label for p, label in zip(predicted.tolist(), labels, strict=True))
        return hits / len(labels)

    def evaluate(self, data_directory: str) -> dict[str, Any]:
        """Accuracy, per-class precision and recall, the confusion matrix, the badcases and every
        sample's prediction, whose paths are relative to `data_directory` (so the API can link each to
        its file in the test dataset)."""
        if self.model is None:
            raise RuntimeError("there is no model.pt to evaluate: train this package version first")
        folder = split_folder(data_directory, "test")
        prefix = folder.relative_to(Path(data_directory)).as_posix()
        paths, labels, images = load_images(folder)
        confidence, predicted = self._predict(images)
        predictions = [self.classes[p] for p in predicted.tolist()]
        names = sorted(set(self.classes) | set(labels))
        position = {name: i for i, name in enumerate(names)}
        matrix = [[0] * len(names) for _ in names]
        for label, prediction in zip(labels, predictions, strict=True):
            matrix[position[label]][position[prediction]] += 1
        per_class = {}
        for name, i in position.items():
            hits = matrix[i][i]
            predicted_as = sum(row[i] for row in matrix)
            support = sum(matrix[i])
            per_class[name] = {
                "precision": hits / predicted_as if predicted_as else 0.0,
                "recall": hits / support if support else 0.0,
                "support": support,
            }
        badcases = [
            {
                "path": path if prefix == "." else f"{prefix}/{path}",
                "label": label,
                "prediction": prediction,
                "confidence": round(score, 6),
            }
            for path, label, prediction, score in zip(
                paths, labels, predictions, confidence.tolist(), strict=True
            )
            if label != prediction
        ]
        badcases.sort(key=lambda case: (-case["confidence"], case["path"]))  # the surest mistakes first
        # every sample's prediction, so the test set can be browsed with its true and predicted labels
        every = [
            {
                "file": path if prefix == "." else f"{prefix}/{path}",
                "true": label,
                "predicted": prediction,
                "confidence": round(score, 6),
            }
            for path, label, prediction, score in zip(
                paths, labels, predictions, confidence.tolist(), strict=True
            )
        ]
        accuracy = (len(labels) - len(badcases)) / len(labels)
        return {
            "score": accuracy,
            "accuracy": accuracy,
            "samples": len(labels),
            "per_class": per_class,
            "confusion_matrix": {"labels": names, "matrix": matrix},
            "badcases": badcases,
            "predictions": every,
        }

    def save(self) -> None:
        if self.model is None:
            raise RuntimeError("nothing to save: the model was never trained")
        torch.save(
            {
                "state_dict": self.model.state_dict(),
                "classes": self.classes,
                "epochs_trained": self.epochs_trained,
            },
            MODEL_FILE,
        )


def _write_curves(history: list[dict[str, float]]) -> None:
    """The three curves as a CSV artifact (uploaded with the run), when the run has an artifacts folder."""
    folder = os.environ.get("artifacts_directory")  # noqa: SIM112 (UiPath's name)
    if not folder or not history:
        return
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "curves.csv"), "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
