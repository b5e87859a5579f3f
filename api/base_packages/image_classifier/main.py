"""Serve the built-in image classifier: `Main().predict(input)` classifies one image (UiPath's shape).

`input` is the image file's bytes (as a file-type ML skill sends it), a path to it, or a Pillow image.
The answer is a JSON string: {"label": "cat", "confidence": 0.98, "probabilities": {"cat": ..., ...}}.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import torch
from image_model import HERE, build_model, image_tensor, limit_threads
from PIL import Image
from torch.nn import functional


class Main:
    def __init__(self) -> None:
        limit_threads()
        checkpoint = torch.load(HERE / "model.pt", map_location="cpu", weights_only=True)
        self.classes: list[str] = list(checkpoint["classes"])
        self.size = int(checkpoint["image_size"])
        self.gray = int(checkpoint["channels"]) == 1
        self.model = build_model(checkpoint)

    def predict(self, input: Any) -> str:
        if isinstance(input, bytes | bytearray):
            with Image.open(io.BytesIO(input)) as image:
                pixels = image_tensor(image, self.size, self.gray)
        elif isinstance(input, str | os.PathLike):
            with Image.open(input) as image:
                pixels = image_tensor(image, self.size, self.gray)
        elif isinstance(input, Image.Image):
            pixels = image_tensor(input, self.size, self.gray)
        else:
            raise TypeError(f"predict takes an image's bytes, its path or a Pillow image, not {type(input)}")
        with torch.no_grad():
            probabilities = functional.softmax(self.model(pixels.unsqueeze(0)), dim=1)[0]
        best = int(probabilities.argmax())
        return json.dumps(
            {
                "label": self.classes[best],
                "confidence": round(float(probabilities[best]), 6),
                "probabilities": {
                    name: round(p, 6) for name, p in zip(self.classes, probabilities.tolist(), strict=True)
                },
            }
        )
