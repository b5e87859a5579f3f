"""The built-in base packages Trainyard ships, and their zips, made the same way every time.

Each folder beside this file is a package as a person would upload one (`train.py` with `Main`,
`main.py` with `predict`, `parameters.json`); the API never imports them (they need torch), it zips
them. The zip is stored (no compression) with fixed timestamps and permissions, in path order, so its
sha256 is a function of the files alone: the same code makes the same blob on every machine and every
zlib, and `trainyard-api migrate` adds a version only when a file changed.
"""

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXED_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ModelTypeSpec:
    name: str
    description: str


@dataclass(frozen=True)
class BasePackageSpec:
    name: str  # the package's name in every project
    folder: str  # beside this file
    description: str
    model_types: tuple[str, ...]


IMAGE_CLASSIFICATION = ModelTypeSpec(
    "image-classification", "Classify images into classes learnt from a folder per class of images."
)
TABULAR_CLASSIFICATION = ModelTypeSpec(
    "tabular-classification", "Classify the rows of a table (CSV) into the classes of a target column."
)
MODEL_TYPES = (IMAGE_CLASSIFICATION, TABULAR_CLASSIFICATION)

BASE_PACKAGES = (
    BasePackageSpec(
        name="image-classifier",
        folder="image_classifier",
        description="Built in: a small convolutional network trained from a folder per class of images "
        "(PNG, JPEG, ...), resized to image_size; per-class metrics, badcases, predict(image bytes).",
        model_types=(IMAGE_CLASSIFICATION.name,),
    ),
    BasePackageSpec(
        name="tabular-classifier",
        folder="tabular_classifier",
        description="Built in: a one-hidden-layer network (or logistic regression) trained from CSV files "
        "with a header row, predicting target_column; per-class metrics, badcases, predict(JSON row).",
        model_types=(TABULAR_CLASSIFICATION.name,),
    ),
)


def _included(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return not any(part.startswith(".") or part == "__pycache__" for part in parts) and path.suffix != ".pyc"


def package_zip(spec: BasePackageSpec, root: Path = HERE) -> bytes:
    """The package's zip: its folder's files at the zip's root, stored, in a fixed form."""
    folder = root / spec.folder
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and _included(p, folder)):
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), FIXED_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()
