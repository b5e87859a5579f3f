"""Package zips built in memory, and the upload call, for the package tests.

A package is a dict of {name in the zip: content}; `valid_package()` is the smallest one shaped as
UiPath AI Center expects, and a test changes or removes one member to make it hostile or unrunnable.
"""

import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from httpx import AsyncClient, Response

Members = dict[str, str | bytes]

TRAIN_PY = """\
import os


class Main:
    def __init__(self):
        self.model = None

    def train(self, data_directory):
        self.model = sorted(os.listdir(data_directory))

    def evaluate(self, data_directory):
        return {"accuracy": 1.0}

    def process_data(self, input_directory):
        pass

    def save(self):
        with open("model.txt", "w") as handle:
            handle.write(repr(self.model))
"""

MAIN_PY = """\
class Main:
    def __init__(self):
        self.model = open("model.txt").read()

    def predict(self, input):
        return self.model
"""

PARAMETERS = [
    {"name": "epochs", "type": "int", "default": 10, "description": "Passes over the data"},
    {"name": "learning_rate", "type": "float", "default": 0.001},
    {"name": "optimizer", "type": "str", "default": "adam"},
    {"name": "augment", "type": "bool", "default": False},
]


def train_py(*methods: str, bases: str = "", header: str = "") -> str:
    """A train.py whose `class Main` has exactly `methods` (each a one-line body)."""
    body = "".join(f"    def {name}(self, *args):\n        return None\n\n" for name in methods)
    parents = f"({bases})" if bases else ""
    return f"{header}class Main{parents}:\n" + (body or "    pass\n")


def valid_package(*, evaluate: bool = True, predict: bool = True, parameters: Any = PARAMETERS) -> Members:
    """train.py (Main: __init__, train, save, and evaluate/process_data), main.py, parameters.json,
    requirements.txt."""
    members: Members = {
        "train.py": TRAIN_PY if evaluate else train_py("__init__", "train", "save"),
        "requirements.txt": "numpy>=1.26\n",
    }
    if predict:
        members["main.py"] = MAIN_PY
    if parameters is not None:
        members["parameters.json"] = json.dumps(parameters)
    return members


def zip_bytes(
    members: Mapping[str, str | bytes], *, prefix: str = "", compression: int = zipfile.ZIP_DEFLATED
) -> bytes:
    """The zip of `members`, each under `prefix` (e.g. "my_package/")."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(f"{prefix}{name}", content)
    return buffer.getvalue()


def zip_with(members: Members, *extra: tuple[zipfile.ZipInfo, bytes]) -> bytes:
    """The zip of `members` plus entries with hand-made headers (symlinks, odd names)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
        for info, content in extra:
            archive.writestr(info, content)
    return buffer.getvalue()


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so the mode bits below are read
    info.external_attr = 0o120777 << 16
    return info, target.encode()


def write_zip(path: Path, members: Members) -> Path:
    path.write_bytes(zip_bytes(members))
    return path


def versions_path(project: str, package: str) -> str:
    return f"/projects/{project}/packages/{package}/versions"


async def upload_package(
    client: AsyncClient, project: str, name: str, content: bytes, *, filename: str = "package.zip"
) -> Response:
    """POST the zip as the multipart field `file`; the caller checks the response."""
    return await client.post(
        versions_path(project, name), files={"file": (filename, content, "application/zip")}
    )
