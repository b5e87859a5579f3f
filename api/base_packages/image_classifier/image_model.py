"""What train.py and main.py share: the parameters, the network, reading images, the augmentations.

Torch and Pillow only (no torchvision): the agent's machines carry both (the `agent` extra).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.nn import functional

HERE = Path(__file__).resolve().parent
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AUGMENTATIONS = ("rotations", "exposure", "noise")
MAX_ROTATION_DEGREES = 15.0
BRIGHTNESS = 0.15  # added, uniform in [-BRIGHTNESS, BRIGHTNESS]
CONTRAST = (0.75, 1.25)  # the factor around each image's mean
NOISE_STD = 0.05
IMAGE_SIZES = (4, 256)


def limit_threads() -> None:
    """A few threads: a run shares its machine, and small images gain little from more."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))


# -- parameters: declared in parameters.json, given as a JSON file and as environment variables -----------


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
    declared = json.loads((HERE / "parameters.json").read_text())["parameters"]
    given: dict[str, Any] = {}
    path = os.environ.get("TRAINYARD_PARAMETERS_FILE")
    if path and os.path.isfile(path):
        with open(path) as file:
            loaded = json.load(file)
        given = loaded if isinstance(loaded, dict) else {}
    values = {
        item["name"]: _convert(
            item["name"], given.get(item["name"], os.environ.get(item["name"], item["default"])), item["type"]
        )
        for item in declared
    }
    low, high = IMAGE_SIZES
    if values["epochs"] < 0 or values["batch_size"] < 1 or values["learning_rate"] <= 0:
        raise ValueError(f"parameters out of range: {values}")
    if not low <= values["image_size"] <= high:
        raise ValueError(f"image_size is {values['image_size']}: it must be {low} to {high}")
    return values


# -- the network ---------------------------------------------------------------------------------------


class ImageNet(nn.Module):
    """A small convolutional network; the adaptive pooling lets one shape serve every image size."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))  # type: ignore[no-any-return]


def build_model(checkpoint: dict[str, Any]) -> ImageNet:
    """The network a saved model.pt describes, its weights loaded, in evaluation mode."""
    model = ImageNet(int(checkpoint["channels"]), len(checkpoint["classes"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model


# -- images --------------------------------------------------------------------------------------------


def image_tensor(image: Image.Image, size: int, grayscale: bool) -> torch.Tensor:
    """One image as a (channels, size, size) float tensor in [0, 1] (transparency on white)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    converted = image.convert("L" if grayscale else "RGB")
    if converted.size != (size, size):
        converted = converted.resize((size, size), Image.Resampling.BILINEAR)
    channels = 1 if grayscale else 3
    pixels = torch.frombuffer(bytearray(converted.tobytes()), dtype=torch.uint8)
    return pixels.reshape(size, size, channels).permute(2, 0, 1).float() / 255.0


def read_image(path: str | os.PathLike[str], size: int, grayscale: bool) -> torch.Tensor:
    with Image.open(path) as image:
        return image_tensor(image, size, grayscale)


def image_files(folder: Path) -> list[tuple[str, str]]:
    """(path relative to `folder`, label) of every image in `folder/<label>/`, sorted."""
    found: list[tuple[str, str]] = []
    for class_folder in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_folder.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
                found.append((file.relative_to(folder).as_posix(), class_folder.name))
    return found


def load_images(folder: Path, size: int, grayscale: bool) -> tuple[list[str], list[str], torch.Tensor]:
    """The relative paths, labels and stacked images (N, C, size, size) of a folder-per-class dataset."""
    files = image_files(folder)
    if not files:
        raise ValueError(f"no images in {folder}: expected one folder per class holding image files")
    images = torch.stack([read_image(folder / path, size, grayscale) for path, _ in files])
    return [path for path, _ in files], [label for _, label in files], images


def split_folder(directory: str | os.PathLike[str], split: str) -> Path:
    """`directory/split` when the dataset holds both splits (train/ and test/), else `directory`."""
    folder = Path(directory)
    other = "test" if split == "train" else "train"
    return folder / split if (folder / split).is_dir() and (folder / other).is_dir() else folder


# -- augmentation ---------------------------------------------------------------------------------------


def parse_augmentation(augmentation: str | None) -> tuple[str, ...]:
    """`none`, '' or e.g. `rotations+exposure+noise` -> the augmentations named; unknown names refused."""
    text = (augmentation or "none").strip().lower()
    if text == "none":
        return ()
    names = tuple(part.strip() for part in text.split("+") if part.strip())
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown augmentation {', '.join(unknown)} in {augmentation!r}: "
            f"use none or a +-joined choice of {', '.join(AUGMENTATIONS)}"
        )
    return names


def augment(images: torch.Tensor, names: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """A randomly changed copy of a batch (N, C, H, W) in [0, 1]; with no names, the batch itself."""
    if not names:
        return images
    batch = images.shape[0]
    out = images
    if "rotations" in names:
        angles = (torch.rand(batch, generator=generator) * 2 - 1) * torch.deg2rad(
            torch.tensor(MAX_ROTATION_DEGREES)
        )
        cos, sin = torch.cos(angles), torch.sin(angles)
        zeros = torch.zeros_like(angles)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
        grid = functional.affine_grid(theta, list(out.shape), align_corners=False)
        out = functional.grid_sample(out, grid, padding_mode="border", align_corners=False)
    if "exposure" in names:
        shape = (batch, 1, 1, 1)
        brightness = (torch.rand(shape, generator=generator) * 2 - 1) * BRIGHTNESS
        low, high = CONTRAST
        contrast = low + torch.rand(shape, generator=generator) * (high - low)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast + mean + brightness
    if "noise" in names:
        out = out + torch.randn(out.shape, generator=generator) * NOISE_STD
    return out.clamp(0.0, 1.0)
