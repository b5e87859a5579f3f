"""A run's Evaluation (TI-ONE's): `/ui/projects/<p>/runs/<id>/evaluation`. Overall metrics, per-class
precision and recall, the confusion matrix where the package returned one, the badcases a page at a
time with their images and true vs predicted labels, and the test set they came from.

The document is read by `api/runs/evaluation.read_evaluation`, as `GET .../evaluation` reads it
(`runs.view`). The images come from the dataset version the run evaluated, through the console's file
route (`datasets.view` too, as `GET .../datasets/.../files/{path}`): dataset files are hostile, so a
raster image is served as one and anything else as bytes to save, always with `nosniff`, an
`attachment` disposition and a CSP that runs nothing.
"""

import json
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import HTMLResponse, Response

from api.console.common import InProject, ProjectPage, refuse, require
from api.console.pages import render
from api.console.views._run import file_response, is_image, page_run, run_url
from api.core.db import SessionDep
from api.core.deps import BlobsDep
from api.core.errors import InvalidInput, NotFound
from api.core.security import Permission
from api.datasets import service as datasets
from api.models import DatasetVersion, Run
from api.runs import service as runs
from api.runs.evaluation import ConfusionMatrix, EvaluationDataset, _evaluated_dataset, read_evaluation
from api.runs.evaluation_samples import MAX_LABEL_FILTER, Filter, samples_page

router = APIRouter(prefix="/ui", include_in_schema=False)
BADCASES_PAGE = 24
TEST_SET_PAGE = 48
SHOWN_METRICS = frozenset({"score", "accuracy", "samples", "duration_seconds"})  # in the overall facts
# A cell's share of its row, in classes heat-0 .. heat-5 (colour is never the only cue); any count but 0
# is at least heat-1, so that one mistake among a hundred answers still shows.
HEAT_LEVELS = 5


@dataclass(frozen=True)
class Cell:
    count: int
    level: int
    diagonal: bool


@dataclass(frozen=True)
class MatrixRow:
    label: str
    total: int
    cells: list[Cell]


def shaded(matrix: ConfusionMatrix) -> list[MatrixRow]:
    """Each row of the matrix with its cells' share of the row as a shading level."""
    rows = []
    for i, (label, counts) in enumerate(zip(matrix.labels, matrix.matrix, strict=True)):
        total = sum(counts)
        cells = [
            Cell(count, max(1, round(HEAT_LEVELS * count / total)) if count else 0, i == j)
            for j, count in enumerate(counts)
        ]
        rows.append(MatrixRow(label, total, cells))
    return rows


def _file_url(base: str, dataset: EvaluationDataset, path: str) -> str:
    full = f"{dataset.path}/{path}" if dataset.path else path
    return f"{base}evaluation/files/{quote(full, safe='/')}"


async def _run_for(request: Request, session: AsyncSession, where: InProject, run_id: str) -> Run:
    require(request, where, Permission.RUNS_VIEW)
    return await page_run(request, session, where, run_id)


async def _evaluated(
    request: Request, session: AsyncSession, where: InProject, run: Run
) -> tuple[EvaluationDataset, DatasetVersion]:
    require(request, where, Permission.DATASETS_VIEW)
    found = await _evaluated_dataset(session, run)
    if found is None:
        raise refuse(request, where.signed_in, 404, "evaluation.no_test_set")
    return found


@router.get("/projects/{project}/runs/{run_id}/evaluation")
async def evaluation_page(
    request: Request,
    session: SessionDep,
    where: ProjectPage,
    run_id: str,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> HTMLResponse:
    run = await _run_for(request, session, where, run_id)
    base = run_url(where.project.name, run.id)
    try:
        stored = await runs.evaluation(session, run)
    except NotFound:  # not evaluated (yet): the page says so, with the way back to the run
        context = where.context(run=run, evaluation=None, run_url=base, template_name="")
        return render(
            request, "evaluation/evaluation.html", context, signed_in=where.signed_in, status_code=404
        )
    assert stored.document is not None
    read = await read_evaluation(
        session,
        run,
        where.project.name,
        dict(stored.document),
        stored.created_at,
        offset=offset,
        limit=BADCASES_PAGE,
    )
    may_files = where.can(Permission.DATASETS_VIEW)
    dataset = read.test_dataset
    images = {
        id(case): _file_url(base, dataset, case.path)
        for case in read.badcases
        if may_files and dataset is not None and case.url is not None and case.path is not None
    }
    count = read.badcase_count or 0
    context = where.context(
        run=run,
        evaluation=read,
        other_metrics=[(k, v) for k, v in read.metrics.items() if k not in SHOWN_METRICS],
        matrix=None if read.confusion_matrix is None else shaded(read.confusion_matrix),
        image_of=lambda case: images.get(id(case)),
        is_image=is_image,
        offset=offset,
        previous_offset=max(0, offset - BADCASES_PAGE) if offset > 0 else None,
        next_offset=offset + BADCASES_PAGE if offset + BADCASES_PAGE < count else None,
        page_size=BADCASES_PAGE,
        run_url=base,
        may_files=may_files,
        extra=json.dumps(read.extra, indent=2, ensure_ascii=False) if read.extra else None,
        template_name=str(run.config.get("template") or ""),
    )
    return render(request, "evaluation/evaluation.html", context, signed_in=where.signed_in)


@router.get("/projects/{project}/runs/{run_id}/evaluation/test-set")
async def test_set_page(
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    where: ProjectPage,
    run_id: str,
    cursor: Annotated[str | None, Query(max_length=6000)] = None,
    label: Annotated[str, Query(max_length=MAX_LABEL_FILTER)] = "",
    show: Literal["", "wrong", "right"] = "",  # the form's "all" is the empty value
) -> HTMLResponse:
    """The samples of the dataset version the run evaluated, under the folder it read, a page at a
    time, each with its true and predicted label (as GET .../evaluation/samples answers them)."""
    run = await _run_for(request, session, where, run_id)
    dataset, _ = await _evaluated(request, session, where, run)
    try:
        stored = await runs.evaluation(session, run)
    except NotFound:
        raise refuse(request, where.signed_in, 404, "evaluation.none") from None
    assert stored.document is not None
    wrong = {"wrong": True, "right": False}.get(show)
    try:
        page = await samples_page(
            session,
            blobs,
            run,
            where.project.name,
            dict(stored.document),
            cursor=cursor,
            limit=TEST_SET_PAGE,
            where=Filter(label or None, wrong),
        )
    except NotFound:
        raise refuse(request, where.signed_in, 404, "evaluation.no_test_set") from None
    except InvalidInput:  # a cursor this page never gave out
        raise refuse(request, where.signed_in, 404, "evaluation.bad_cursor") from None
    base = run_url(where.project.name, run.id)
    filters = {key: value for key, value in (("label", label), ("show", show)) if value}
    context: dict[str, Any] = where.context(
        run=run,
        dataset=dataset,
        page=page,
        file_url=lambda sample: _file_url(base, dataset, sample.file),
        label=label,
        show=show,
        filtered=bool(filters),
        first_url="?" + urlencode(filters),
        next_url=None
        if page.next_cursor is None
        else "?" + urlencode({**filters, "cursor": page.next_cursor}),
        first=cursor is None,
        is_image=is_image,
        run_url=base,
    )
    return render(request, "evaluation/test_set.html", context, signed_in=where.signed_in)


@router.get("/projects/{project}/runs/{run_id}/evaluation/files/{path:path}")
async def evaluated_file(
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    where: ProjectPage,
    run_id: str,
    path: Annotated[str, Path(max_length=1024)],
) -> Response:
    """One file of the evaluated dataset version (a badcase's image): a raster image as one, anything
    else as bytes to save; never a type a browser would run."""
    run = await _run_for(request, session, where, run_id)
    _, version = await _evaluated(request, session, where, run)
    try:
        found = await datasets.get_file(session, version, unicodedata.normalize("NFC", path))
    except NotFound:
        raise refuse(request, where.signed_in, 404, "evaluation.no_file") from None
    return await file_response(request, blobs, found.sha256, found.size, found.path, image=True)
