"""A run's outputs, for people: `_results.json`, artifacts and the evaluation."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel

from api.core.db import SessionDep
from api.core.deps import BlobsDep, SettingsDep
from api.core.downloads import REDIRECT_RESPONSE, blob_response, media_type_of
from api.core.errors import NotFound, error_responses
from api.core.security import Permission, Principal, requires
from api.projects.service import get_project
from api.runs import service
from api.runs.deps import RunTarget, run_for
from api.runs.evaluation import EvaluationRead, read_evaluation
from api.runs.evaluation_samples import MAX_LABEL_FILTER, EvaluationSamplesPage, Filter, samples_page
from api.runs.schemas import RunResults

router = APIRouter(
    prefix="/projects/{project}/runs/{run_id}", tags=["runs"], responses=error_responses(401, 403, 404)
)
RunViewer = Annotated[Principal, requires(Permission.RUNS_VIEW)]
ViewedRun = Annotated[RunTarget, run_for(Permission.RUNS_VIEW)]


class ArtifactRead(BaseModel):
    path: str
    sha256: str
    size: int


@router.get("/results", operation_id="runs_results_get", response_model=RunResults)
async def get_results(target: ViewedRun) -> dict[str, Any]:
    """`_results.json` in UiPath AI Center's shape, written when the run succeeded."""
    if target.run.results is None:
        raise NotFound("the run has no results (it has not succeeded)", code="results_not_found")
    return target.run.results


@router.get("/artifacts", operation_id="runs_artifacts_list")
async def list_artifacts(target: ViewedRun, session: SessionDep) -> list[ArtifactRead]:
    """What the package wrote into `artifacts_directory`."""
    rows = await service.artifacts(session, target.run)
    return [ArtifactRead(path=row.path, sha256=row.sha256 or "", size=row.size) for row in rows]


@router.get(
    "/artifacts/{path:path}",
    operation_id="runs_artifacts_download",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "ETag = sha256"},
        **REDIRECT_RESPONSE,
    },
)
async def download_artifact(
    project: str,
    run_id: uuid.UUID,
    path: Annotated[str, Path(max_length=1024)],
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    _: RunViewer,
) -> Response:
    # `project` and `run_id` are declared here, before `path`, so that the document lists them in
    # the path's order; a `RunTarget` would list its own after the route's.
    run = await service.get_run(session, await get_project(session, project), run_id)
    artifact = await service.artifact(session, run, path)
    assert artifact.sha256 is not None
    return await blob_response(
        blobs,
        artifact.sha256,
        artifact.size,
        media_type_of(path),
        request.headers.get("if-none-match"),
        filename=path,
        redirect=settings.s3_redirect_downloads,
    )


@router.get("/evaluation", operation_id="runs_evaluation_get")
async def get_evaluation(
    target: ViewedRun,
    session: SessionDep,
    badcases_offset: Annotated[int, Query(ge=0, description="Badcases to skip.")] = 0,
    badcases_limit: Annotated[int, Query(ge=0, le=1000, description="Badcases to return.")] = 100,
) -> EvaluationRead:
    """The run's evaluation on its test set (TI-ONE): when, how long, how many samples and badcases,
    the metrics with per-class precision and recall, and a page of badcases, each with the link that
    downloads its file from the test dataset. The document's shape is in docs/evaluation.md."""
    stored = await service.evaluation(session, target.run)
    assert stored.document is not None
    return await read_evaluation(
        session,
        target.run,
        target.project.name,
        dict(stored.document),
        stored.created_at,
        offset=badcases_offset,
        limit=badcases_limit,
    )


@router.get(
    "/evaluation/samples", operation_id="runs_evaluation_samples_list", responses=error_responses(422)
)
async def list_evaluation_samples(
    target: ViewedRun,
    session: SessionDep,
    blobs: BlobsDep,
    cursor: Annotated[
        str | None, Query(max_length=6000, description="`next_cursor` of the last page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Samples to return at most.")] = 100,
    label: Annotated[
        str | None, Query(max_length=MAX_LABEL_FILTER, description="Only the samples of this true label.")
    ] = None,
    wrong: Annotated[
        bool | None,
        Query(description="true: only the mispredicted samples; false: only the rightly predicted ones."),
    ] = None,
) -> EvaluationSamplesPage:
    """The test set the run evaluated (TI-ONE), a page of samples in path order, each with its true
    label (the prediction's own, the test set's `labels.csv`, or its class folder), the package's
    prediction from the evaluation's `predictions`, and the link that downloads its file. The
    conventions are in docs/evaluation.md."""
    stored = await service.evaluation(session, target.run)
    assert stored.document is not None
    return await samples_page(
        session,
        blobs,
        target.run,
        target.project.name,
        dict(stored.document),
        cursor=cursor,
        limit=limit,
        where=Filter(label, wrong),
    )
