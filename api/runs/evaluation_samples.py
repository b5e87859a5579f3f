"""The test set a run evaluated, a page of samples at a time, each with its true and predicted label
(TI-ONE's test set browsing; docs/evaluation.md).

A sample is a file of the evaluated dataset version under the folder the run read. Its predicted
label comes from the evaluation document's `predictions` (read leniently, as badcases are); its true
label from the prediction's own `true` when given, else from `labels.csv` (`file,label`) at the test
set's root when the version holds one, else from the folder-per-class layout (the file's parent
folder). The labels file itself is not a sample.
"""

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.blobs import BlobStore
from api.core.errors import NotFound
from api.datasets import service as datasets
from api.models import DatasetFile, DatasetVersion, Run
from api.runs.evaluation import API_PREFIX, EvaluationDataset, _evaluated_dataset, _label, _number
from shared.names import InvalidName, normalize_relative_path

MAX_PREDICTIONS = 100_000
LABELS_FILE = "labels.csv"
MAX_LABELS_FILE_BYTES = 16 * 1024 * 1024
# A filtered page reads at most this many test set files (a short page then carries a cursor), so a
# filter that matches little never makes one request read a whole large dataset.
MAX_SCANNED = 5_000
BATCH = 500
MAX_LABEL_FILTER = 256  # labels are cut to 256 characters when read
TrueSource = Literal["prediction", "labels_file", "folder"]


@dataclass(frozen=True)
class Prediction:
    predicted: str
    true: str | None
    confidence: float | None


@dataclass
class Labels:
    """What the document and the dataset say about each file of the test set (paths relative to it)."""

    predictions: dict[str, Prediction] | None = None
    labels_file: dict[str, str] | None = None
    problems: list[str] = field(default_factory=list)

    def true_of(self, file: str) -> tuple[str | None, TrueSource | None]:
        prediction = None if self.predictions is None else self.predictions.get(file)
        if prediction is not None and prediction.true is not None:
            return prediction.true, "prediction"
        if self.labels_file is not None:  # the dataset labels its files: the folders are no labels then
            label = self.labels_file.get(file)
            return (label, "labels_file") if label is not None else (None, None)
        folders = file.split("/")[:-1]
        return (folders[-1][:256], "folder") if folders else (None, None)


def _path(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return normalize_relative_path(value)
    except InvalidName:
        return None


def read_predictions(value: Any, problems: list[str]) -> dict[str, Prediction] | None:
    """`predictions` as {file: Prediction}; malformed entries are left out and counted in `problems`."""
    if value is None:
        return None
    if not isinstance(value, list):
        problems.append("predictions is not a list")
        return {}
    found: dict[str, Prediction] = {}
    malformed = duplicates = 0
    for item in value[:MAX_PREDICTIONS]:
        file = _path(item.get("file")) if isinstance(item, dict) else None
        predicted = _label(item.get("predicted")) if isinstance(item, dict) else None
        true = _label(item.get("true")) if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or file is None
            or predicted is None
            or (item.get("true") is not None and true is None)
        ):
            malformed += 1
        elif file in found:
            duplicates += 1
        else:
            found[file] = Prediction(predicted, true, _number(item.get("confidence")))
    if malformed:
        problems.append(
            f"{malformed} predictions were left out: each is an object with a relative `file` "
            "inside the test set, a `predicted` label and optionally a `true` label"
        )
    if duplicates:
        problems.append(f"{duplicates} predictions repeat a file; the first of each was kept")
    if len(value) > MAX_PREDICTIONS:
        problems.append(
            f"{len(value) - MAX_PREDICTIONS} predictions beyond the first {MAX_PREDICTIONS} were left out"
        )
    return found


def parse_labels_file(data: bytes, problems: list[str]) -> dict[str, str]:
    """`labels.csv`: a header `file,label`, then one row per file (relative to the test set's root)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        problems.append(f"{LABELS_FILE} is not UTF-8 text; it was not read")
        return {}
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:
        problems.append(f"{LABELS_FILE} is not CSV; it was not read")
        return {}
    if not rows or [cell.strip().lower() for cell in rows[0][:2]] != ["file", "label"]:
        problems.append(f"{LABELS_FILE} does not start with the header `file,label`; it was not read")
        return {}
    labels: dict[str, str] = {}
    malformed = 0
    for row in rows[1:]:
        if not row or row == [""]:
            continue
        file = _path(row[0]) if len(row) >= 2 else None
        if file is None or file in labels or not row[1]:
            malformed += 1
            continue
        labels[file] = row[1][:256]
    if malformed:
        problems.append(f"{malformed} rows of {LABELS_FILE} were left out (no file, no label, or a repeat)")
    return labels


async def _labels_file(
    session: AsyncSession, blobs: BlobStore, version: DatasetVersion, folder: str | None, problems: list[str]
) -> dict[str, str] | None:
    path = f"{folder}/{LABELS_FILE}" if folder else LABELS_FILE
    found = await session.get(DatasetFile, (version.id, path))
    if found is None or found.sha256 is None:
        return None
    if found.size > MAX_LABELS_FILE_BYTES:
        problems.append(f"{LABELS_FILE} is larger than {MAX_LABELS_FILE_BYTES} bytes; it was not read")
        return {}
    data = bytearray()
    async for chunk in await blobs.open(found.sha256):
        data += chunk
    return parse_labels_file(bytes(data), problems)


class EvaluationSample(BaseModel):
    file: str = Field(description="Relative to the test set (the folder the run evaluated).")
    size: int
    true: str | None = Field(
        description="The true label, when the prediction, a labels file or the folder gives one."
    )
    true_source: TrueSource | None = Field(
        description="Where `true` came from: the prediction's own `true`, the test set's `labels.csv`, "
        "or the file's parent folder (folder-per-class)."
    )
    predicted: str | None = Field(description="The package's prediction, when its evaluation gave one.")
    confidence: float | None
    correct: bool | None = Field(description="Whether `predicted` is `true`; null when either is unknown.")
    url: str = Field(description="Where to download the file (the dataset file route).")


class EvaluationSamplesPage(BaseModel):
    test_dataset: EvaluationDataset
    labels_file: str | None = Field(description="The labels file read, a path in the dataset version.")
    prediction_count: int | None = Field(description="Predictions read; null when the package gave none.")
    samples: list[EvaluationSample]
    next_cursor: str | None = Field(
        description="The next page's cursor; null at the end. A filtered page may hold fewer samples "
        "than `limit`, even none, and still carry a cursor."
    )
    problems: list[str] = Field(description="What was left out because it did not have the documented shape.")


MakeSample = Callable[[str, int], EvaluationSample]


@dataclass(frozen=True)
class Filter:
    label: str | None
    wrong: bool | None

    def keeps(self, sample: EvaluationSample) -> bool:
        if self.label is not None and sample.true != self.label:
            return False
        return self.wrong is None or sample.correct is (not self.wrong)


async def samples_page(
    session: AsyncSession,
    blobs: BlobStore,
    run: Run,
    project: str,
    document: dict[str, Any],
    *,
    cursor: str | None,
    limit: int,
    where: Filter,
) -> EvaluationSamplesPage:
    found = await _evaluated_dataset(session, run)
    if found is None:
        raise NotFound("the dataset version the run evaluated is gone", code="test_set_not_found")
    dataset, version = found
    folder = dataset.path
    labels = Labels()
    labels.predictions = read_predictions(document.get("predictions"), labels.problems)
    labels.labels_file = await _labels_file(session, blobs, version, folder, labels.problems)
    labels_path = f"{folder}/{LABELS_FILE}" if folder else LABELS_FILE
    base = (
        f"{API_PREFIX}/projects/{quote(project, safe='')}/datasets/{quote(dataset.name, safe='')}"
        f"/versions/{dataset.version}/files/"
    )

    def sample(path: str, size: int) -> EvaluationSample:
        file = path[len(folder) + 1 :] if folder else path
        true, source = labels.true_of(file)
        prediction = None if labels.predictions is None else labels.predictions.get(file)
        predicted = None if prediction is None else prediction.predicted
        return EvaluationSample(
            file=file,
            size=size,
            true=true,
            true_source=source,
            predicted=predicted,
            confidence=None if prediction is None else prediction.confidence,
            correct=None if true is None or predicted is None else true == predicted,
            url=base + quote(path, safe="/"),
        )

    if where.wrong and labels.predictions is not None:
        samples, next_cursor = await _wrong_ones(
            session, version, folder, labels, sample, cursor, limit, where
        )
    elif where.wrong:
        samples, next_cursor = [], None  # nothing was predicted, so nothing was predicted wrong
    else:
        samples, next_cursor = await _scan(
            session, version, folder, labels_path, sample, cursor, limit, where
        )
    return EvaluationSamplesPage(
        test_dataset=dataset,
        labels_file=labels_path if labels.labels_file is not None else None,
        prediction_count=None if labels.predictions is None else len(labels.predictions),
        samples=samples,
        next_cursor=next_cursor,
        problems=labels.problems,
    )


async def _scan(
    session: AsyncSession,
    version: DatasetVersion,
    folder: str | None,
    labels_path: str,
    sample: MakeSample,
    cursor: str | None,
    limit: int,
    where: Filter,
) -> tuple[list[EvaluationSample], str | None]:
    """The test set's files in path order after the cursor, the filter applied, MAX_SCANNED at most."""
    kept: list[EvaluationSample] = []
    scanned = 0
    at = cursor
    while True:
        try:
            rows, following = await datasets.files_page(session, version, folder, BATCH, at)
        except NotFound:  # the folder holds nothing: an empty test set
            return [], None
        for i, (path, _, size) in enumerate(rows):
            scanned += 1
            if path != labels_path and where.keeps(candidate := sample(path, size)):
                kept.append(candidate)
            if len(kept) == limit or scanned >= MAX_SCANNED:
                more = i + 1 < len(rows) or following is not None
                return kept, datasets.encode_path_cursor(path) if more else None
        if following is None:
            return kept, None
        at = following


async def _wrong_ones(
    session: AsyncSession,
    version: DatasetVersion,
    folder: str | None,
    labels: Labels,
    sample: MakeSample,
    cursor: str | None,
    limit: int,
    where: Filter,
) -> tuple[list[EvaluationSample], str | None]:
    """The mispredicted samples: the predictions whose true label differs, in path order after the
    cursor, each kept when the test set holds its file."""
    assert labels.predictions is not None
    after = None if cursor is None else datasets.decode_path_cursor(cursor)
    wrong = []
    for file, prediction in labels.predictions.items():
        true, _ = labels.true_of(file)
        path = f"{folder}/{file}" if folder else file
        mispredicted = true is not None and true != prediction.predicted
        # (paths compare in code-point order, as the files route pages them)
        if mispredicted and where.label in (None, true) and (after is None or path > after):
            wrong.append(path)
    wrong.sort()
    kept: list[EvaluationSample] = []
    for start in range(0, min(len(wrong), MAX_SCANNED), BATCH):
        chunk = wrong[start : start + BATCH]
        rows = await session.execute(
            select(DatasetFile.path, DatasetFile.size).where(
                DatasetFile.version_id == version.id, DatasetFile.path.in_(chunk)
            )
        )
        sizes: dict[str, int] = {path: size for path, size in rows}
        for i, path in enumerate(chunk):
            if path in sizes:
                kept.append(sample(path, sizes[path]))
            if len(kept) == limit or start + i + 1 >= MAX_SCANNED:
                more = start + i + 1 < len(wrong)
                return kept, datasets.encode_path_cursor(path) if more else None
    return kept, None
