"""A project's runs, for people: the list, one run, its status history."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import Select, select

from api.core.db import SessionDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep, fetch_page
from api.core.security import Permission, Principal, requires
from api.models import Machine, ProcessEvent, Project, Run
from api.processes import service as processes
from api.processes.schemas import ProcessEventRead
from api.projects.service import get_project
from api.runs import service
from api.runs.schemas import RunRead
from shared.enums import RunStatus

router = APIRouter(prefix="/projects/{project}", tags=["runs"], responses=error_responses(401, 403, 404))

RunViewer = Annotated[Principal, requires(Permission.RUNS_VIEW)]


def _run_listing(project: Project) -> Select[Run, str]:
    return (
        select(Run, Machine.name)
        .join(Machine, Machine.id == Run.machine_id)
        .where(Run.project_id == project.id)
    )


@router.get("/processes/{process_id}/runs", operation_id="processes_runs_list")
async def list_process_runs(
    project: str,
    process_id: uuid.UUID,
    session: SessionDep,
    _: RunViewer,
    page: PageDep,
    status_: Annotated[RunStatus | None, Query(alias="status")] = None,
) -> Page[RunRead]:
    found = await get_project(session, project)
    process = await processes.get_process(session, found, process_id)
    statement = _run_listing(found).where(Run.process_id == process.id)
    if status_ is not None:
        statement = statement.where(Run.status == status_.value)
    rows, cursor = await fetch_page(session, statement, Run.id, page)
    return Page(items=[service.run_read(r, found.name, m) for r, m in rows], next_cursor=cursor)


@router.get("/runs", operation_id="runs_list")
async def list_runs(
    project: str,
    session: SessionDep,
    _: RunViewer,
    page: PageDep,
    status_: Annotated[RunStatus | None, Query(alias="status")] = None,
) -> Page[RunRead]:
    found = await get_project(session, project)
    statement = _run_listing(found)
    if status_ is not None:
        statement = statement.where(Run.status == status_.value)
    rows, cursor = await fetch_page(session, statement, Run.id, page)
    return Page(items=[service.run_read(r, found.name, m) for r, m in rows], next_cursor=cursor)


@router.get("/runs/{run_id}", operation_id="runs_get")
async def get_run(project: str, run_id: uuid.UUID, session: SessionDep, _: RunViewer) -> RunRead:
    found = await get_project(session, project)
    run = await service.get_run(session, found, run_id)
    machine = await session.get(Machine, run.machine_id)
    assert machine is not None
    return service.run_read(run, found.name, machine.name)


@router.get("/runs/{run_id}/events", operation_id="runs_events_list")
async def list_run_events(
    project: str, run_id: uuid.UUID, session: SessionDep, _: RunViewer, page: PageDep
) -> Page[ProcessEventRead]:
    """The run's status history: every transition with its actor and reason."""
    run = await service.get_run(session, await get_project(session, project), run_id)
    statement = select(ProcessEvent).where(ProcessEvent.run_id == run.id)
    rows, cursor = await fetch_page(session, statement, ProcessEvent.id, page)
    return Page(items=[ProcessEventRead.model_validate(row[0]) for row in rows], next_cursor=cursor)
