"""A project's runs, for people: the list, one run, its status history."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.core.db import SessionDep
from api.core.deps import NotifierDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission
from api.core.watch import WATCH_RESPONSES, IfNoneMatch, WaitQuery, answer_when_changed
from api.processes.deps import ProcessTarget, process_for
from api.processes.schemas import ProcessEventRead
from api.projects.deps import InProject, in_project
from api.runs import service
from api.runs.deps import RunTarget, run_for
from api.runs.schemas import RunRead
from shared.enums import RunStatus

router = APIRouter(prefix="/projects/{project}", tags=["runs"], responses=error_responses(401, 403, 404))

ViewedRun = Annotated[RunTarget, run_for(Permission.RUNS_VIEW)]
StatusFilter = Annotated[RunStatus | None, Query(alias="status")]


@router.get("/processes/{process_id}/runs", operation_id="processes_runs_list")
async def list_process_runs(
    target: Annotated[ProcessTarget, process_for(Permission.RUNS_VIEW)],
    session: SessionDep,
    page: PageDep,
    status_: StatusFilter = None,
) -> Page[RunRead]:
    loaded = target.loaded
    return await service.list_runs(session, loaded.project, page, status_, loaded.process)


@router.get("/runs", operation_id="runs_list")
async def list_runs(
    target: Annotated[InProject, in_project(Permission.RUNS_VIEW)],
    session: SessionDep,
    page: PageDep,
    status_: StatusFilter = None,
) -> Page[RunRead]:
    return await service.list_runs(session, target.project, page, status_)


# What a watcher of a run does not wait for: the clock moves it on every read.
RUN_VOLATILE = {"elapsed_seconds"}


@router.get(
    "/runs/{run_id}",
    operation_id="runs_get",
    response_model=RunRead,
    responses=WATCH_RESPONSES,
)
async def get_run(
    target: ViewedRun,
    response: Response,
    session: SessionDep,
    notifier: NotifierDep,
    wait: WaitQuery = 0,
    if_none_match: IfNoneMatch = None,
) -> RunRead | Response:
    """The run, with an `ETag` of its status, stage, progress and ETA. With `If-None-Match` naming it,
    304; with `wait=S` too, held until one of them changes (200 with the new `ETag`) or S seconds pass."""
    run = target.run

    async def read() -> tuple[RunRead, list[uuid.UUID]]:
        await session.refresh(run)
        return service.run_read(run, target.project.name, target.machine_name), [run.id]

    return await answer_when_changed(if_none_match, response, session, notifier, wait, read, RUN_VOLATILE)


@router.get("/runs/{run_id}/events", operation_id="runs_events_list")
async def list_run_events(target: ViewedRun, session: SessionDep, page: PageDep) -> Page[ProcessEventRead]:
    """The run's status history: every transition with its actor and reason."""
    return await service.list_events(session, target.run, page)
