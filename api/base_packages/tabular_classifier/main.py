"""Serve the built-in tabular classifier: `Main().predict(input)` classifies rows (UiPath's shape).

`input` is one row as a JSON object (text, bytes or a dict: column -> value, the target column left
out) or a JSON array of them. The answer is a JSON string: for a row, {"label": "setosa",
"confidence": 0.97, "probabilities": {...}}; for an array, an array of those, in order.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from tabular_model import HERE, limit_threads, load_model
from torch.nn import functional


class Main:
    def __init__(self) -> None:
        limit_threads()
        self.model, self.encoder, self.description = load_model(HERE / "model.pt")
        self.classes: list[str] = list(self.description["classes"])

    def predict(self, input: Any) -> str:
        data = json.loads(input) if isinstance(input, str | bytes | bytearray) else input
        rows = data if isinstance(data, list) else [data]
        if not all(isinstance(row, dict) for row in rows):
            raise TypeError("predict takes a JSON object (column -> value) or an array of them")
        with torch.no_grad():
            probabilities = functional.softmax(self.model(self.encoder.encode(rows)), dim=1)
        answers = []
        for row in probabilities.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            answers.append(
                {
                    "label": self.classes[best],
                    "confidence": round(row[best], 6),
                    "probabilities": {name: round(p, 6) for name, p in zip(self.classes, row, strict=True)},
                }
            )
        return json.dumps(answers if isinstance(data, list) else answers[0])
