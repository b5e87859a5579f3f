"""Models (Primo's Models page): the versions successful runs trained, with their metrics; a version's
page with its lineage both ways, the run and the data that made it, its `_results.json`, its artifacts
and the package download.

Each part is read with the service and shown under the permission of the REST route it mirrors: the
list and a version's record `models.view` (`GET /models`), the lineage tree and the package download
`packages.view` (`.../lineage`, `.../download`), the run's outputs `runs.view` (`.../results`,
`.../artifacts`, `.../evaluation`). A part the person may not read is left out; a download they may
not make is refused (403 page). Downloads go through the console (the REST API takes only a bearer
token) and stream with the REST downloads' helper.
"""

import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import HTMLResponse, Response

from api.console.common import InProject, ProjectPage, refuse, require
from api.console.nav import project_url
from api.console.pages import render
from api.console.views._run import file_response, run_url
from api.core.db import SessionDep
from api.core.deps import BlobsDep
from api.core.errors import NotFound
from api.core.schemas import PageParams
from api.core.security import Permission
from api.models import Package, PackageVersion, Run
from api.packages import service as packages
from api.packages.schemas import PackageVersionRead
from api.runs import service as runs
from api.runs.evaluation import read_evaluation
from shared.versions import Version

PAGE = "models"
router = APIRouter(prefix="/ui", include_in_schema=False)
LIST_PAGE = 50
# The chart's three series first (Primo's colours), then any other, up to this many columns.
FIRST_METRICS = ("accuracy", "loss", "learning_rate")
MAX_METRIC_COLUMNS = 6


def version_url(project: str, package: str, version: str) -> str:
    return f"{project_url(project)}models/{quote(package, safe='')}/{quote(version, safe='')}/"


def _metric_columns(items: list[PackageVersionRead]) -> list[str]:
    names = {name for item in items for name in (item.lineage.get("metrics") or {})}
    ordered = [name for name in FIRST_METRICS if name in names]
    return (ordered + sorted(names - set(ordered)))[:MAX_METRIC_COLUMNS]


@router.get("/projects/{project}/models/")
async def models_page(
    request: Request,
    session: SessionDep,
    where: ProjectPage,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> HTMLResponse:
    """The trained versions in the order they were made, as the API lists them, with their final metrics."""
    require(request, where, Permission.MODELS_VIEW)
    page = await packages.list_models(session, where.project, PageParams(limit=LIST_PAGE, cursor=cursor))
    name = where.project.name
    context = where.context(
        active=PAGE,
        models=page.items,
        next_cursor=page.next_cursor,
        metrics=_metric_columns(page.items),
        version_url=lambda item: version_url(name, item.package, item.version),
        parent_url=lambda item: version_url(name, item.package, item.parent_version),
        run_url=lambda run_id: run_url(name, run_id),
    )
    return render(request, "models/list.html", context, signed_in=where.signed_in)


async def _version(
    request: Request, session: AsyncSession, where: InProject, package: str, version: str
) -> tuple[Package, PackageVersion]:
    try:
        found = await packages.get_package(session, where.project, package)
        return found, await packages.get_version(session, found, version)
    except NotFound:
        raise refuse(request, where.signed_in, 404, "models.no_version") from None


async def _made_by(session: AsyncSession, where: InProject, version: PackageVersion) -> Run | None:
    if version.run_id is None:
        return None
    run = await session.get(Run, version.run_id)
    return run if run is not None and run.project_id == where.project_id else None


async def _evaluation_summary(session: AsyncSession, where: InProject, run: Run) -> dict[str, Any] | None:
    try:
        stored = await runs.evaluation(session, run)
    except NotFound:
        return None
    assert stored.document is not None
    read = await read_evaluation(
        session, run, where.project.name, dict(stored.document), stored.created_at, limit=0
    )
    return {
        "score": read.score,
        "accuracy": read.accuracy,
        "samples": read.samples,
        "badcases": read.badcase_count,
    }


@router.get("/projects/{project}/models/{package}/{version}/")
async def version_page(
    request: Request,
    session: SessionDep,
    where: ProjectPage,
    package: Annotated[str, Path(max_length=512)],
    version: Annotated[str, Path(max_length=32)],
) -> HTMLResponse:
    require(request, where, Permission.MODELS_VIEW)
    found, stored = await _version(request, session, where, package, version)
    read = await packages.read_version(session, where.project, found, stored)
    name = where.project.name
    lineage = None
    if where.can(Permission.PACKAGES_VIEW):
        lineage = await packages.lineage_read(session, found, stored)
    run = await _made_by(session, where, stored)
    may_runs = where.can(Permission.RUNS_VIEW)
    artifacts = await runs.artifacts(session, run) if run is not None and may_runs else []
    evaluation = await _evaluation_summary(session, where, run) if run is not None and may_runs else None
    results = None
    if run is not None and may_runs and run.results is not None:
        results = json.dumps(run.results, indent=2, ensure_ascii=False, sort_keys=False)
    here = version_url(name, found.name, read.version)
    context = where.context(
        active=PAGE,
        version=read,
        record=read.lineage,
        lineage=lineage,
        chain=[] if lineage is None else list(reversed(lineage.ancestors)),
        run=run,
        may_runs=may_runs,
        may_packages=where.can(Permission.PACKAGES_VIEW),
        artifacts=artifacts,
        evaluation=evaluation,
        results=results,
        page_url=here,
        models_url=f"{project_url(name)}models/",
        parent_url=None
        if read.parent_version is None
        else version_url(name, found.name, read.parent_version),
        node_url=lambda node: version_url(name, found.name, node.version),
        run_url=lambda run_id: run_url(name, run_id),
        artifact_url=lambda path: f"{here}artifacts/{quote(path, safe='/')}",
        json_text=lambda value: json.dumps(value, ensure_ascii=False),
    )
    return render(request, "models/version.html", context, signed_in=where.signed_in)


@router.get("/projects/{project}/models/{package}/{version}/download")
async def download_package(
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    where: ProjectPage,
    package: Annotated[str, Path(max_length=512)],
    version: Annotated[str, Path(max_length=32)],
) -> Response:
    """The version's zip, as `GET .../versions/{version}/download` streams it (`packages.view`)."""
    require(request, where, Permission.PACKAGES_VIEW)
    found, stored = await _version(request, session, where, package, version)
    filename = f"{found.name}-{Version(stored.major, stored.minor)}.zip"
    return await file_response(
        request, blobs, stored.blob_sha256, stored.size, filename, media_type="application/zip"
    )


@router.get("/projects/{project}/models/{package}/{version}/artifacts/{path:path}")
async def download_artifact(
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    where: ProjectPage,
    package: Annotated[str, Path(max_length=512)],
    version: Annotated[str, Path(max_length=32)],
    path: Annotated[str, Path(max_length=1024)],
) -> Response:
    """A file the version's run wrote into `artifacts_directory` (`runs.view`), saved, never shown."""
    require(request, where, Permission.MODELS_VIEW)
    require(request, where, Permission.RUNS_VIEW)
    _, stored = await _version(request, session, where, package, version)
    run = await _made_by(session, where, stored)
    try:
        if run is None:
            raise NotFound("no run")
        artifact = await runs.artifact(session, run, path)
    except NotFound:
        raise refuse(request, where.signed_in, 404, "models.no_artifact") from None
    assert artifact.sha256 is not None
    return await file_response(request, blobs, artifact.sha256, artifact.size, artifact.path)
