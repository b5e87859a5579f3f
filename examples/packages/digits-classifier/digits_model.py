"""What train.py and main.py share: the network, reading images, and the augmentations.

Torch and Pillow only (no torchvision): the augmentations are written with torch operations.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.nn import functional

IMAGE_SIZE = 8  # scikit-learn's digits are 8x8; other images are resized to it
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
AUGMENTATIONS = ("rotations", "exposure", "noise")
MAX_ROTATION_DEGREES = 15.0
BRIGHTNESS = 0.15  # added, uniform in [-BRIGHTNESS, BRIGHTNESS]
CONTRAST = (0.75, 1.25)  # the factor around each image's mean
NOISE_STD = 0.05


def limit_threads() -> None:
    """A few threads: a run shares its machine, and tiny images gain nothing from more."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))


class DigitNet(nn.Module):
    """A small convolutional network for 8x8 grayscale images."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * (IMAGE_SIZE // 2) ** 2, 128),
            nn.ReLU(),
            nn.Linear(128, classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))  # type: ignore[no-any-return]


# -- images -----------------------------------------------------------------------------------------


def image_tensor(image: Image.Image) -> torch.Tensor:
    """One image as a (1, IMAGE_SIZE, IMAGE_SIZE) float tensor in [0, 1]."""
    gray = image.convert("L")
    if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
        gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8)
    return pixels.reshape(1, IMAGE_SIZE, IMAGE_SIZE).float() / 255.0


def read_image(path: str | os.PathLike[str]) -> torch.Tensor:
    with Image.open(path) as image:
        return image_tensor(image)


def image_files(folder: Path) -> list[tuple[str, str]]:
    """(path relative to `folder`, label) of every image in `folder/<label>/`, sorted."""
    found: list[tuple[str, str]] = []
    for class_folder in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_folder.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                found.append((file.relative_to(folder).as_posix(), class_folder.name))
    return found


def load_images(folder: Path) -> tuple[list[str], list[str], torch.Tensor]:
    """The relative paths, labels and stacked images (N, 1, 8, 8) of a folder-per-class dataset."""
    files = image_files(folder)
    if not files:
        raise ValueError(f"no images in {folder}: expected one folder per class holding image files")
    images = torch.stack([read_image(folder / path) for path, _ in files])
    return [path for path, _ in files], [label for _, label in files], images


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
            f"unknown augmentation {', '.join(unknown)!s} in {augmentation!r}: "
            f"use none or a +-joined choice of {', '.join(AUGMENTATIONS)}"
        )
    return names


def augment(images: torch.Tensor, augmentation: str | None, generator: torch.Generator) -> torch.Tensor:
    """A randomly changed copy of a batch (N, 1, H, W) in [0, 1]; with `none`, the batch itself."""
    names = parse_augmentation(augmentation)
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
        out = functional.grid_sample(out, grid, padding_mode="zeros", align_corners=False)
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
