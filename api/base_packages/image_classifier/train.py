"""Trainyard's built-in image classifier: train, evaluate and save from a folder-per-class dataset.

`train(data_directory)` reads one folder per class of images (or the `train/` folder inside
`data_directory` when it holds `train/` and `test/`), resizes each to `image_size` pixels a side
(colour, or gray with `grayscale`), and trains a small convolutional network for `epochs`, the
learning rate decaying by `learning_rate_decay` each epoch; it reports the learning rate, the
training loss and the test accuracy of every epoch. The test images are those of
`test_data_directory`, else the `test/` folder beside `train/`, else every tenth training image,
held out. `augmentation` (`none`, `rotations+exposure+noise`, ...) changes each training batch.
`evaluate(data_directory)` returns accuracy, per-class precision and recall, the confusion matrix,
the badcases and every sample's prediction (docs/evaluation.md). `save()` writes `model.pt` into
the package folder; `Main()` loads it when present, so training a trained version continues from its
weights. At the run's maximum duration `trainyard.should_stop()` turns true: training ends after the
epoch in hand and is saved.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
from image_model import (
    HERE,
    ImageNet,
    augment,
    build_model,
    limit_threads,
    load_images,
    load_parameters,
    parse_augmentation,
    split_folder,
)
from torch.nn import functional
from trainyard import report, should_stop

MODEL_FILE = HERE / "model.pt"
# The run's GPU when it was given one (the template's `gpus`: CUDA_VISIBLE_DEVICES), else the CPU.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HOLD_OUT_EVERY = 10  # without test images, every tenth training image is held out for the curve
EVAL_BATCH = 256


def _test_folder(data_directory: str) -> Path | None:
    given = os.environ.get("test_data_directory")  # noqa: SIM112 (UiPath's name)
    if given and Path(given).is_dir():
        return split_folder(given, "test")
    inner = Path(data_directory) / "test"
    return inner if inner.is_dir() and (Path(data_directory) / "train").is_dir() else None


class Main:
    def __init__(self) -> None:
        limit_threads()
        self.parameters = load_parameters()
        self.classes: list[str] = []
        self.model: ImageNet | None = None
        self.epochs_trained = 0
        # The images' shape: the parameters' for a new model, the saved model's once there is one.
        self.size, self.gray = int(self.parameters["image_size"]), bool(self.parameters["grayscale"])
        if MODEL_FILE.exists():
            checkpoint = torch.load(MODEL_FILE, map_location="cpu", weights_only=True)
            self.classes = list(checkpoint["classes"])
            self.model = build_model(checkpoint).to(DEVICE)
            self.size, self.gray = int(checkpoint["image_size"]), int(checkpoint["channels"]) == 1
            self.epochs_trained = int(checkpoint.get("epochs_trained", 0))

    def train(self, data_directory: str) -> None:
        parameters = self.parameters
        names = parse_augmentation(os.environ.get("augmentation", "none"))  # noqa: SIM112 (UiPath's name)
        torch.manual_seed(parameters["seed"])
        generator = torch.Generator().manual_seed(parameters["seed"])

        wanted = (int(parameters["image_size"]), bool(parameters["grayscale"]))
        if self.model is not None and (self.size, self.gray) != wanted:
            print("model.pt was trained on images of another size or colour: training from scratch")
            self.model = None
        self.size, self.gray = wanted
        _, labels, images = load_images(split_folder(data_directory, "train"), self.size, self.gray)
        test_folder = _test_folder(data_directory)
        if test_folder is not None:
            _, test_labels, test_images = load_images(test_folder, self.size, self.gray)
        else:
            print(f"no test images: every {HOLD_OUT_EVERY}th training image is held out for the accuracy")
            held = torch.zeros(len(labels), dtype=torch.bool)
            held[::HOLD_OUT_EVERY] = True
            test_labels = [label for label, out in zip(labels, held.tolist(), strict=True) if out]
            labels = [label for label, out in zip(labels, held.tolist(), strict=True) if not out]
            test_images, images = images[held], images[~held]

        classes = sorted(set(labels))
        if len(classes) < 2:
            raise ValueError(f"one class only ({classes}): a classifier needs two folders of images or more")
        if self.model is None or classes != self.classes:
            if self.model is not None:
                print(f"the classes changed ({self.classes} -> {classes}): training from scratch")
            self.classes, self.epochs_trained = classes, 0
            self.model = ImageNet(images.shape[1], len(classes))
        else:
            print(f"continuing from model.pt ({self.epochs_trained} epochs trained before)")
        model = self.model.to(DEVICE)
        index = {label: i for i, label in enumerate(classes)}
        targets = torch.tensor([index[label] for label in labels])
        optimizer = torch.optim.Adam(model.parameters(), lr=parameters["learning_rate"])
        epochs, batch_size = parameters["epochs"], parameters["batch_size"]
        history: list[dict[str, float]] = []
        for epoch in range(1, epochs + 1):
            learning_rate = parameters["learning_rate"] * parameters["learning_rate_decay"] ** (epoch - 1)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            model.train()
            order = torch.randperm(len(targets), generator=generator)
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                inputs = augment(images[batch], names, generator).to(DEVICE)
                loss = functional.cross_entropy(model(inputs), targets[batch].to(DEVICE))
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

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence, class index) of each image."""
        assert self.model is not None
        self.model.eval()
        device = next(self.model.parameters()).device
        with torch.no_grad():
            probabilities = torch.cat(
                [
                    functional.softmax(self.model(images[start : start + EVAL_BATCH].to(device)), dim=1).cpu()
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
        sample's prediction, paths relative to `data_directory` (so the API links each to its file)."""
        if self.model is None:
            raise RuntimeError("there is no model.pt to evaluate: train this package version first")
        folder = split_folder(data_directory, "test")
        prefix = folder.relative_to(Path(data_directory)).as_posix()
        paths, labels, images = load_images(folder, self.size, self.gray)
        confidence, predicted = self._predict(images)
        predictions = [self.classes[p] for p in predicted.tolist()]
        files = [path if prefix == "." else f"{prefix}/{path}" for path in paths]
        return classification_report(files, labels, predictions, [round(c, 6) for c in confidence.tolist()])

    def save(self) -> None:
        if self.model is None:
            raise RuntimeError("nothing to save: the model was never trained")
        torch.save(
            {
                "state_dict": {name: value.cpu() for name, value in self.model.state_dict().items()},
                "classes": self.classes,
                "image_size": self.size,
                "channels": 1 if self.gray else 3,
                "epochs_trained": self.epochs_trained,
            },
            MODEL_FILE,
        )


def classification_report(
    files: list[str], labels: list[str], predictions: list[str], confidences: list[float]
) -> dict[str, Any]:
    """The evaluation document (docs/evaluation.md) of one prediction per test file."""
    names = sorted(set(labels) | set(predictions))
    position = {name: i for i, name in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for label, prediction in zip(labels, predictions, strict=True):
        matrix[position[label]][position[prediction]] += 1
    per_class = {}
    for name, i in position.items():
        hits, predicted_as, support = matrix[i][i], sum(row[i] for row in matrix), sum(matrix[i])
        per_class[name] = {
            "precision": hits / predicted_as if predicted_as else 0.0,
            "recall": hits / support if support else 0.0,
            "support": support,
        }
    rows = list(zip(files, labels, predictions, confidences, strict=True))
    badcases = [
        {"path": file, "label": label, "prediction": prediction, "confidence": score}
        for file, label, prediction, score in rows
        if label != prediction
    ]
    badcases.sort(key=lambda case: (-case["confidence"], case["path"]))  # the surest mistakes first
    accuracy = (len(labels) - len(badcases)) / len(labels) if labels else 0.0
    return {
        "score": accuracy,
        "accuracy": accuracy,
        "samples": len(labels),
        "per_class": per_class,
        "confusion_matrix": {"labels": names, "matrix": matrix},
        "badcases": badcases,
        "predictions": [
            {"file": file, "true": label, "predicted": prediction, "confidence": score}
            for file, label, prediction, score in rows
        ],
    }


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
