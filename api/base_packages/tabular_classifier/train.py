"""Trainyard's built-in tabular classifier: train, evaluate and save from CSV files with a target column.

`train(data_directory)` reads every `*.csv` in `data_directory` (or in its `train/` folder when it
holds `train/` and `test/`), all with one header row. `target_column` names the column to predict
(empty: the last one); every other column is an input: numbers are standardised (a missing one counts
as the mean), any other column is text whose most frequent values are one-hot inputs. A network with
one hidden layer of `hidden_units` (0: a logistic regression) trains for `epochs` full-batch steps of
Adam, reporting the loss and the test accuracy of each. The test rows are those of
`test_data_directory`, else of the `test/` folder beside `train/`, else every fifth training row,
held out. `evaluate(data_directory)` returns accuracy, per-class precision and recall, the confusion
matrix and the badcases (each with its CSV file as `path` and its `row`). `save()` writes `model.pt`;
`Main()` loads it when present, so training a trained version continues from its weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from tabular_model import (
    HERE,
    Encoder,
    Table,
    limit_threads,
    load_model,
    load_parameters,
    network,
    read_table,
    save_model,
    split_folder,
    target_of,
)
from torch import nn
from torch.nn import functional
from trainyard import report, should_stop

MODEL_FILE = HERE / "model.pt"
HOLD_OUT_EVERY = 5


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
        self.model: nn.Module | None = None
        self.encoder: Encoder | None = None
        self.description: dict[str, Any] = {}
        if MODEL_FILE.exists():
            self.model, self.encoder, self.description = load_model(MODEL_FILE)

    def train(self, data_directory: str) -> None:
        parameters = self.parameters
        torch.manual_seed(parameters["seed"])
        table = read_table(split_folder(data_directory, "train"))
        target = target_of(table.columns, parameters["target_column"])
        rows = table.rows
        test_folder = _test_folder(data_directory)
        if test_folder is not None:
            test_rows = read_table(test_folder).rows
        else:
            print(f"no test rows: every {HOLD_OUT_EVERY}th training row is held out for the accuracy")
            test_rows = rows[::HOLD_OUT_EVERY]
            rows = [row for i, row in enumerate(rows) if i % HOLD_OUT_EVERY]
        classes = sorted({row[target] for row in rows})
        if len(classes) < 2:
            raise ValueError(f"column {target!r} holds one class only ({classes}): a classifier needs two")
        features = [column for column in table.columns if column != target]
        hidden = int(parameters["hidden_units"])
        same = self.description.get("target") == target and self.description.get("classes") == classes
        if (
            self.model is None
            or self.encoder is None
            or not same
            or sorted(features) != sorted(self.description.get("features", []))
        ):
            if self.model is not None:
                print("model.pt predicts another column or other classes: training from scratch")
            self.encoder = Encoder.fit(rows, features)
            self.model = network(self.encoder.width, hidden, len(classes))
            self.description = {"target": target, "classes": classes, "features": features}
            self.description["hidden_units"] = hidden
        else:
            print("continuing from model.pt")
        model, encoder = self.model, self.encoder
        inputs = encoder.encode(rows)
        index = {label: i for i, label in enumerate(classes)}
        targets = torch.tensor([index[row[target]] for row in rows])
        test_inputs = encoder.encode(test_rows)
        test_targets = [row.get(target, "") for row in test_rows]
        optimizer = torch.optim.Adam(
            model.parameters(), lr=parameters["learning_rate"], weight_decay=parameters["weight_decay"]
        )
        epochs = parameters["epochs"]
        for epoch in range(1, epochs + 1):
            model.train()
            loss = functional.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            accuracy = self._accuracy(test_inputs, test_targets)
            report(
                epoch=epoch,
                total_epochs=epochs,
                learning_rate=parameters["learning_rate"],
                loss=loss.item(),
                accuracy=accuracy,
                stage="training",
            )
            if epoch == epochs or epoch % 50 == 0:
                print(f"epoch {epoch}/{epochs}: loss {loss.item():.4f} acc {accuracy:.4f}")
            if should_stop():  # the maximum duration came: save() keeps the model as it is now
                print(f"asked to finish: stopping after epoch {epoch} of {epochs}")
                break

    def _predict(self, inputs: torch.Tensor) -> tuple[list[str], list[float]]:
        assert self.model is not None
        self.model.eval()
        with torch.no_grad():
            probabilities = functional.softmax(self.model(inputs), dim=1)
        confidence, predicted = probabilities.max(dim=1)
        classes = self.description["classes"]
        return [classes[i] for i in predicted.tolist()], [round(c, 6) for c in confidence.tolist()]

    def _accuracy(self, inputs: torch.Tensor, labels: list[str]) -> float:
        if not labels:
            return 0.0
        predicted, _ = self._predict(inputs)
        return sum(p == label for p, label in zip(predicted, labels, strict=True)) / len(labels)

    def evaluate(self, data_directory: str) -> dict[str, Any]:
        """Accuracy, per-class precision and recall, the confusion matrix and the badcases, each naming
        its CSV file (relative to `data_directory`, so the API links it) and its row."""
        if self.model is None or self.encoder is None:
            raise RuntimeError("there is no model.pt to evaluate: train this package version first")
        folder = split_folder(data_directory, "test")
        prefix = folder.relative_to(Path(data_directory)).as_posix()
        table: Table = read_table(folder)
        target = self.description["target"]
        if target not in table.columns:
            raise ValueError(f"the test CSV files have no column {target!r} to compare the predictions with")
        labels = [row[target] for row in table.rows]
        predictions, confidences = self._predict(self.encoder.encode(table.rows))
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
        badcases = [
            {
                "path": file if prefix == "." else f"{prefix}/{file}",
                "row": number,
                "label": label,
                "prediction": prediction,
                "confidence": score,
            }
            for (file, number), label, prediction, score in zip(
                table.origins, labels, predictions, confidences, strict=True
            )
            if label != prediction
        ]
        badcases.sort(key=lambda case: (-case["confidence"], case["path"], case["row"]))
        accuracy = (len(labels) - len(badcases)) / len(labels)
        return {
            "score": accuracy,
            "accuracy": accuracy,
            "samples": len(labels),
            "per_class": per_class,
            "confusion_matrix": {"labels": names, "matrix": matrix},
            "badcases": badcases,
        }

    def save(self) -> None:
        if self.model is None or self.encoder is None:
            raise RuntimeError("nothing to save: the model was never trained")
        save_model(MODEL_FILE, self.model, self.encoder, self.description)
