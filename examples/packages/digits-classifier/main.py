"""Serve the digit classifier: `Main().predict(input)` classifies one image (UiPath's serving shape).

`input` is the image file's bytes (as a file-type ML skill sends it: PNG, or any format Pillow reads),
a path to it, a Pillow image, or the image as numbers: 64 of them, or 8 rows of 8, each 0 (white) to
16 (black) as in scikit-learn's `load_digits()` (what a JSON request to a service brings; the same
list as JSON text, as a JSON-type ML skill sends it, works too).
The answer is a JSON string: {"label": "3", "confidence": 0.98, "probabilities": {"0": ..., ...}}.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from digits_model import IMAGE_SIZE, DigitNet, image_tensor, limit_threads
from PIL import Image
from torch.nn import functional

HERE = Path(__file__).resolve().parent
MAX_PIXEL = 16  # scikit-learn's digits: 0..16


def numbers_tensor(values: object) -> torch.Tensor:
    """An 8x8 image given as 64 numbers (or 8 rows of 8) in 0..16, as a (1, 8, 8) tensor in [0, 1],
    rounded as the exported PNGs are (0..16 -> 0..255), so both inputs give the same answer."""
    if not isinstance(values, list):
        raise TypeError(f"an image as numbers is a list, not {type(values).__name__}")
    rows = values if values and all(isinstance(row, list) for row in values) else [values]
    flat = [value for row in rows for value in row]
    count = IMAGE_SIZE * IMAGE_SIZE
    if len(flat) != count or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise ValueError(
            f"an {IMAGE_SIZE}x{IMAGE_SIZE} image is {count} numbers (0..{MAX_PIXEL}, as scikit-learn's "
            f"digits), or {IMAGE_SIZE} rows of {IMAGE_SIZE}; got {len(flat)} values"
        )
    pixels = torch.tensor(flat, dtype=torch.float32).clamp(0, MAX_PIXEL)
    pixels = torch.round(pixels * (255.0 / MAX_PIXEL)) / 255.0
    return pixels.reshape(1, IMAGE_SIZE, IMAGE_SIZE)


def _looks_like_json(text: str | bytes | bytearray) -> bool:
    return text.lstrip()[:1] in ("[", b"[")


class Main:
    def __init__(self) -> None:
        limit_threads()
        checkpoint = torch.load(HERE / "model.pt", map_location="cpu", weights_only=True)
        self.classes: list[str] = list(checkpoint["classes"])
        self.model = DigitNet(len(self.classes))
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.eval()

    def predict(self, input: Any) -> str:
        if isinstance(input, str | bytes | bytearray) and _looks_like_json(input):
            input = json.loads(input)
        if isinstance(input, list):
            pixels = numbers_tensor(input)
        elif isinstance(input, bytes | bytearray):
            with Image.open(io.BytesIO(input)) as image:
                pixels = image_tensor(image)
        elif isinstance(input, str | os.PathLike):
            with Image.open(input) as image:
                pixels = image_tensor(image)
        elif isinstance(input, Image.Image):
            pixels = image_tensor(input)
        else:
            raise TypeError(
                f"predict takes an image's bytes, its path, a Pillow image or 64 numbers, not {type(input)}"
            )
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
