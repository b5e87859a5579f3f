"""What train.py and main.py share: the parameters, reading CSV files, encoding rows, the network.

Torch and the standard library only: the agent's machines carry torch (the `agent` extra).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
MAX_CATEGORIES = 256  # a text column's most frequent values, each a one-hot input; the rest encode as none


def limit_threads() -> None:
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
    if values["epochs"] < 0 or values["hidden_units"] < 0 or values["learning_rate"] <= 0:
        raise ValueError(f"parameters out of range: {values}")
    return values


# -- CSV files -----------------------------------------------------------------------------------------


@dataclass
class Table:
    """Rows of one or more CSV files with one header, and where each row came from."""

    columns: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)
    origins: list[tuple[str, int]] = field(default_factory=list)  # (file relative to the folder, row 1..)


def split_folder(directory: str | os.PathLike[str], split: str) -> Path:
    """`directory/split` when the dataset holds both splits (train/ and test/), else `directory`."""
    folder = Path(directory)
    other = "test" if split == "train" else "train"
    return folder / split if (folder / split).is_dir() and (folder / other).is_dir() else folder


def read_table(folder: Path) -> Table:
    """Every `*.csv` directly in `folder`, in name order; each must have the first one's columns."""
    files = sorted(p for p in folder.glob("*.csv") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"no CSV files in {folder}: expected *.csv files with a header row")
    table: Table | None = None
    for path in files:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            columns = [name.strip() for name in reader.fieldnames or []]
            if table is None:
                table = Table(columns)
            elif sorted(columns) != sorted(table.columns):
                raise ValueError(f"{path.name} has the columns {columns}, not {table.columns}")
            for number, row in enumerate(reader, start=1):
                table.rows.append({(k or "").strip(): (v or "").strip() for k, v in row.items() if k})
                table.origins.append((path.relative_to(folder).as_posix(), number))
    assert table is not None
    if not table.rows:
        raise ValueError(f"the CSV files in {folder} hold no rows")
    return table


def target_of(columns: list[str], wanted: str) -> str:
    """The target column: the one named, else the last."""
    if not wanted:
        return columns[-1]
    if wanted not in columns:
        raise ValueError(f"target_column {wanted!r} is not a column of the CSV files ({', '.join(columns)})")
    return wanted


# -- encoding rows ---------------------------------------------------------------------------------------


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass
class Encoder:
    """Rows to input vectors: numbers standardised (a missing one as the mean), text columns one-hot."""

    numeric: dict[str, tuple[float, float]]  # column -> (mean, standard deviation)
    categorical: dict[str, list[str]]  # column -> its values, one input each

    @classmethod
    def fit(cls, rows: list[dict[str, str]], features: list[str]) -> Encoder:
        numeric: dict[str, tuple[float, float]] = {}
        categorical: dict[str, list[str]] = {}
        for column in features:
            texts = [row.get(column, "") for row in rows]
            given = [text for text in texts if text != ""]
            numbers = [_number(text) for text in given]
            if given and all(number is not None for number in numbers):
                values = [float(number) for number in numbers if number is not None]
                mean = sum(values) / len(values)
                spread = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
                numeric[column] = (mean, spread if spread > 1e-12 else 1.0)
            else:
                counts: dict[str, int] = {}
                for text in texts:
                    counts[text] = counts.get(text, 0) + 1
                frequent = sorted(counts, key=lambda value: (-counts[value], value))[:MAX_CATEGORIES]
                categorical[column] = sorted(frequent)
        return cls(numeric, categorical)

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(values) for values in self.categorical.values())

    def encode(self, rows: list[dict[str, Any]]) -> torch.Tensor:
        vectors = []
        for row in rows:
            vector: list[float] = []
            for column, (mean, spread) in self.numeric.items():
                value = row.get(column)
                number = _number(str(value).strip()) if value is not None else None
                vector.append(0.0 if number is None else (number - mean) / spread)
            for column, values in self.categorical.items():
                value = row.get(column)
                text = "" if value is None else str(value).strip()
                vector.extend(1.0 if text == known else 0.0 for known in values)
            vectors.append(vector)
        return torch.tensor(vectors, dtype=torch.float32).reshape(len(rows), self.width)

    def state(self) -> dict[str, Any]:
        return {"numeric": {k: list(v) for k, v in self.numeric.items()}, "categorical": self.categorical}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Encoder:
        numeric = {k: (float(v[0]), float(v[1])) for k, v in state["numeric"].items()}
        return cls(numeric, {k: list(v) for k, v in state["categorical"].items()})


# -- the network ---------------------------------------------------------------------------------------


def network(inputs: int, hidden: int, classes: int) -> nn.Module:
    """One hidden layer, or with `hidden` 0 a logistic regression."""
    if hidden == 0:
        return nn.Linear(inputs, classes)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def save_model(path: Path, model: nn.Module, encoder: Encoder, meta: dict[str, Any]) -> None:
    """model.pt: the weights, plus everything else as JSON text (loads with weights_only=True)."""
    description = {**meta, "encoder": encoder.state()}
    torch.save({"state_dict": model.state_dict(), "description": json.dumps(description)}, path)


def load_model(path: Path) -> tuple[nn.Module, Encoder, dict[str, Any]]:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    description = json.loads(saved["description"])
    encoder = Encoder.from_state(description["encoder"])
    model = network(encoder.width, int(description["hidden_units"]), len(description["classes"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, encoder, description
