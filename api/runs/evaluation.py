"""A run's evaluation, read leniently (docs/evaluation.md): TI-ONE's basic information, per-class
precision and recall, and the badcases, each linked to its file in the test dataset.

The document is stored as the package returned it. Reading it never fails: a field of the wrong
shape is left out and named in `problems`, so a package returning a bare score (`{"score": 0.9}`) or
any dict of metrics still shows, and one with a malformed badcase still shows the others.
"""

import math
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.models import Dataset, DatasetFile, DatasetVersion, Run
from shared.names import InvalidName, normalize_relative_path

# api.main.API_PREFIX; importing it from here would be an import cycle (main imports the routers).
API_PREFIX = "/api/v1"
MAX_CLASSES = 10_000
MAX_LABEL = 256
# What the fields below interpret; every other top-level key is kept in `extra` (numbers in `metrics`).
KNOWN_KEYS = frozenset(
    {
        "score",
        "accuracy",
        "samples",
        "duration_seconds",
        "per_class",
        "confusion_matrix",
        "badcases",
        "predictions",  # every test sample's prediction: paged by GET .../evaluation/samples
    }
)


class ClassMetrics(BaseModel):
    label: str
    precision: float | None = None
    recall: float | None = None
    support: int | None = Field(default=None, description="Test samples of this class.")


class ConfusionMatrix(BaseModel):
    labels: list[str]
    matrix: list[list[int]] = Field(description="matrix[i][j]: samples of labels[i] predicted labels[j].")


class Badcase(BaseModel):
    path: str | None = Field(description="Relative to the test data directory the package was given.")
    label: str | None = None
    prediction: str | None = None
    confidence: float | None = None
    url: str | None = Field(
        description="Where to download the file (a dataset file route), or null when the run's test "
        "dataset version holds no such file."
    )


class EvaluationDataset(BaseModel):
    name: str
    version: int
    path: str | None = Field(description="The sub-folder the run read; badcase paths are below it.")


class EvaluationRead(BaseModel):
    evaluated_at: datetime = Field(description="When the API received the evaluation.")
    duration_seconds: float | None = Field(description="How long `evaluate` ran, when it is known.")
    test_dataset: EvaluationDataset | None = Field(
        description="The dataset version evaluated on (the test dataset, else the training dataset)."
    )
    samples: int | None = Field(description="Test samples evaluated.")
    badcase_count: int | None = Field(description="All badcases, of which `badcases` is one page.")
    score: float | None = Field(description="The package's score, else its accuracy.")
    accuracy: float | None
    metrics: dict[str, float] = Field(description="Every number at the top of the document.")
    per_class: list[ClassMetrics] = Field(description="Precision and recall per class (TI-ONE's per field).")
    confusion_matrix: ConfusionMatrix | None
    badcases: list[Badcase]
    extra: dict[str, Any] = Field(description="The document's other keys, as the package returned them.")
    problems: list[str] = Field(description="What was left out because it did not have the documented shape.")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number.is_integer() and number >= 0 else None


def _label(value: Any) -> str | None:
    if isinstance(value, str):
        return value[:MAX_LABEL]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _per_class(value: Any, problems: list[str]) -> list[ClassMetrics]:
    if value is None:
        return []
    if isinstance(value, dict):
        items = [{"label": label, **metrics} for label, metrics in value.items() if isinstance(metrics, dict)]
        skipped = len(value) - len(items)
    elif isinstance(value, list):
        items = [item for item in value if isinstance(item, dict)]
        skipped = len(value) - len(items)
    else:
        problems.append("per_class is neither an object nor a list")
        return []
    found: list[ClassMetrics] = []
    for item in items[:MAX_CLASSES]:
        label = _label(item.get("label"))
        if label is None:
            skipped += 1
            continue
        found.append(
            ClassMetrics(
                label=label,
                precision=_number(item.get("precision")),
                recall=_number(item.get("recall")),
                support=_count(item.get("support")),
            )
        )
    if skipped:
        problems.append(f"{skipped} per_class entries without a label or metrics were left out")
    return found


def _confusion_matrix(value: Any, problems: list[str]) -> ConfusionMatrix | None:
    if value is None:
        return None
    labels = value.get("labels") if isinstance(value, dict) else None
    matrix = value.get("matrix") if isinstance(value, dict) else None
    if (
        isinstance(labels, list)
        and isinstance(matrix, list)
        and len(labels) == len(matrix) <= MAX_CLASSES
        and all(isinstance(row, list) and len(row) == len(labels) for row in matrix)
    ):
        names = [_label(label) for label in labels]
        cells = [[_count(cell) for cell in row] for row in matrix]
        if all(name is not None for name in names) and all(c is not None for row in cells for c in row):
            return ConfusionMatrix(labels=names, matrix=cells)
    problems.append("confusion_matrix is not {labels: [...], matrix: [[counts]]} of matching sizes")
    return None


def _badcase(item: Any) -> Badcase | None:
    if not isinstance(item, dict):
        return None
    path: str | None = None
    if isinstance(item.get("path"), str):
        try:
            path = normalize_relative_path(item["path"])
        except InvalidName:
            path = None
    return Badcase(
        path=path,
        label=_label(item.get("label")),
        prediction=_label(item.get("prediction")),
        confidence=_number(item.get("confidence")),
        url=None,
    )


async def _evaluated_dataset(
    session: AsyncSession, run: Run
) -> tuple[EvaluationDataset, DatasetVersion] | None:
    """The dataset version `evaluate` read: the test dataset's, else (as the runner falls back to
    `data_directory`) the training dataset's."""
    version_id: uuid.UUID | None = run.test_dataset_version_id
    path = run.config.get("test_dataset_path")
    if not run.config.get("test_dataset"):  # (a test dataset version deleted since leaves no links)
        version_id, path = run.dataset_version_id, run.config.get("dataset_path")
    version = None if version_id is None else await session.get(DatasetVersion, version_id)
    dataset = None if version is None else await session.get(Dataset, version.dataset_id)
    if version is None or dataset is None:
        return None
    return EvaluationDataset(name=dataset.name, version=version.number, path=path or None), version


async def _link(
    session: AsyncSession, project: str, found: tuple[EvaluationDataset, DatasetVersion], cases: list[Badcase]
) -> None:
    """Give each badcase whose file the dataset version holds the URL that downloads it."""
    dataset, version = found
    full = {
        id(case): f"{dataset.path}/{case.path}" if dataset.path else case.path
        for case in cases
        if case.path is not None
    }
    wanted = sorted(set(full.values()))
    held: set[str] = set()
    for start in range(0, len(wanted), 500):
        rows = await session.scalars(
            select(DatasetFile.path).where(
                DatasetFile.version_id == version.id, DatasetFile.path.in_(wanted[start : start + 500])
            )
        )
        held |= set(rows.all())
    base = (
        f"{API_PREFIX}/projects/{quote(project, safe='')}/datasets/{quote(dataset.name, safe='')}"
        f"/versions/{dataset.version}/files/"
    )
    for case in cases:
        path = full.get(id(case))
        if path is not None and path in held:
            case.url = base + quote(path, safe="/")


async def read_evaluation(
    session: AsyncSession,
    run: Run,
    project: str,
    document: dict[str, Any],
    evaluated_at: datetime,
    *,
    offset: int = 0,
    limit: int = 100,
) -> EvaluationRead:
    """The stored document as TI-ONE shows an evaluation, with one page of linked badcases."""
    problems: list[str] = []
    per_class = _per_class(document.get("per_class"), problems)
    raw_badcases = document.get("badcases")
    badcases: list[Badcase] = []
    badcase_count: int | None = None
    if isinstance(raw_badcases, list):
        badcase_count = len(raw_badcases)
        page = [_badcase(item) for item in raw_badcases[offset : offset + limit]]
        badcases = [case for case in page if case is not None]
        if len(badcases) < len(page):
            problems.append(f"{len(page) - len(badcases)} badcases of this page are not objects")
    elif raw_badcases is not None:
        problems.append("badcases is not a list")
    found = await _evaluated_dataset(session, run)
    if found is not None and badcases:
        await _link(session, project, found, badcases)
    for key, reader in (("score", _number), ("accuracy", _number), ("duration_seconds", _number)):
        if document.get(key) is not None and reader(document[key]) is None:
            problems.append(f"{key} is not a number")
    if document.get("samples") is not None and _count(document["samples"]) is None:
        problems.append("samples is not a count")
    samples = _count(document.get("samples"))
    if samples is None and per_class and all(item.support is not None for item in per_class):
        samples = sum(item.support or 0 for item in per_class)
    accuracy = _number(document.get("accuracy"))
    score = _number(document.get("score"))
    return EvaluationRead(
        evaluated_at=evaluated_at,
        duration_seconds=_number(document.get("duration_seconds")),
        test_dataset=None if found is None else found[0],
        samples=samples,
        badcase_count=badcase_count,
        score=accuracy if score is None else score,
        accuracy=accuracy,
        metrics={key: n for key, value in document.items() if (n := _number(value)) is not None},
        per_class=per_class,
        confusion_matrix=_confusion_matrix(document.get("confusion_matrix"), problems),
        badcases=badcases,
        extra={k: v for k, v in document.items() if k not in KNOWN_KEYS and _number(v) is None},
        problems=problems,
    )
