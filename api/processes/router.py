import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import Select, and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.db import SessionDep
from api.core.deps import NotifierDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep, fetch_page
from api.core.security import Permission, Principal, requires
from api.models import Machine, Process, ProcessEvent, Project, Run, Template
from api.processes import service
from api.processes.schemas import ProcessCreate, ProcessEventRead, ProcessRead
from api.projects.service import get_project
from api.runs.lifecycle import Actor, actor_of
from api.templates.service import get_template
from shared.enums import ActorKind, ProcessStatus

router = APIRouter(prefix="/projects/{project}", tags=["processes"], responses=error_responses(401, 403, 404))

Viewer = Annotated[Principal, requires(Permission.PROCESSES_VIEW)]
Manager = Annotated[Principal, requires(Permission.PROCESSES_MANAGE)]
StatusFilter = Annotated[
    ProcessStatus | None, Query(alias="status", description="Only processes in this status.")
]
_CONFLICTS = error_responses(409)


def _actor(principal: Principal) -> Actor:
    return actor_of(ActorKind.USER, principal.id, principal.name)


def _process_listing(project: Project) -> Select[Process, str, str, Run]:
    return (
        select(Process, Template.name, Machine.name, Run)
        .join(Template, Template.id == Process.template_id)
        .join(Machine, Machine.id == Process.machine_id)
        .outerjoin(Run, and_(Run.process_id == Process.id, Run.number == Process.run_count))
        .where(Process.project_id == project.id)
    )


async def _list_processes(
    session: AsyncSession,
    project: Project,
    page: PageDep,
    status_filter: ProcessStatus | None,
    template: Template | None = None,
) -> Page[ProcessRead]:
    statement = _process_listing(project)
    if template is not None:
        statement = statement.where(Process.template_id == template.id)
    if status_filter is ProcessStatus.CREATED:
        statement = statement.where(Process.run_count == 0)
    elif status_filter is not None:
        statement = statement.where(Run.status == status_filter.value)
    rows, cursor = await fetch_page(session, statement, Process.id, page)
    return Page(
        items=[service.build_process_read(p, project.name, t, m, r) for p, t, m, r in rows],
        next_cursor=cursor,
    )


@router.post(
    "/templates/{template}/processes",
    operation_id="processes_create",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 422),
)
async def create_process(
    project: str,
    template: str,
    data: ProcessCreate,
    session: SessionDep,
    principal: Annotated[Principal, requires(Permission.PROCESSES_CREATE)],
) -> ProcessRead:
    """Bind the template to a target machine, which holds at most its capacity (Primo: one)."""
    found = await get_project(session, project)
    found_template = await get_template(session, found, template)
    process = await service.create_process(
        session, found, found_template, data.machine, data.enabled, _actor(principal)
    )
    return await service.process_read(session, process)


@router.get("/templates/{template}/processes", operation_id="templates_processes_list")
async def list_template_processes(
    project: str, template: str, session: SessionDep, _: Viewer, page: PageDep, status_: StatusFilter = None
) -> Page[ProcessRead]:
    found = await get_project(session, project)
    return await _list_processes(session, found, page, status_, await get_template(session, found, template))


@router.get("/processes", operation_id="processes_list")
async def list_processes(
    project: str, session: SessionDep, _: Viewer, page: PageDep, status_: StatusFilter = None
) -> Page[ProcessRead]:
    return await _list_processes(session, await get_project(session, project), page, status_)


@router.get("/processes/{process_id}", operation_id="processes_get")
async def get_process(project: str, process_id: uuid.UUID, session: SessionDep, _: Viewer) -> ProcessRead:
    process = await service.get_process(session, await get_project(session, project), process_id)
    return await service.process_read(session, process)


@router.post(
    "/processes/{process_id}/start",
    operation_id="processes_start",
    status_code=status.HTTP_201_CREATED,
    responses=_CONFLICTS,
)
async def start_process(
    project: str, process_id: uuid.UUID, session: SessionDep, notifier: NotifierDep, principal: Manager
) -> ProcessRead:
    """Start a new run (409 `run_active` while one is active, `process_disabled` on a disabled process)."""
    loaded = await service.load_process(session, project, process_id)
    run = await service.start_process(session, notifier, loaded, _actor(principal))
    return service.loaded_process_read(loaded, run)  # the new run is the latest


@router.post(
    "/processes/{process_id}/stop",
    operation_id="processes_stop",
    status_code=status.HTTP_202_ACCEPTED,
    responses=_CONFLICTS,
)
async def stop_process(
    project: str, process_id: uuid.UUID, session: SessionDep, notifier: NotifierDep, principal: Manager
) -> ProcessRead:
    """Stop the active run: `stopped` at once if no agent took it yet, else `stopping` until it ends."""
    process = await service.get_process(session, await get_project(session, project), process_id)
    await service.stop_process(session, notifier, process, _actor(principal))
    return await service.process_read(session, process)


@router.post(
    "/processes/{process_id}/restart",
    operation_id="processes_restart",
    status_code=status.HTTP_201_CREATED,
    responses={
        **_CONFLICTS,
        202: {"model": ProcessRead, "description": "Restart after the active run stops"},
    },
)
async def restart_process(
    project: str,
    process_id: uuid.UUID,
    session: SessionDep,
    notifier: NotifierDep,
    principal: Manager,
    response: Response,
) -> ProcessRead:
    """Start again: at once (201) after the run ended; else stop it and start when it stopped (202)."""
    process = await service.get_process(session, await get_project(session, project), process_id)
    if not await service.restart_process(session, notifier, process, _actor(principal)):
        response.status_code = status.HTTP_202_ACCEPTED
    return await service.process_read(session, process)


@router.post("/processes/{process_id}/disable", operation_id="processes_disable", responses=_CONFLICTS)
async def disable_process(
    project: str, process_id: uuid.UUID, session: SessionDep, principal: Manager
) -> ProcessRead:
    """Lock the process: it can be neither started nor stopped. Refused while a run is active."""
    process = await service.get_process(session, await get_project(session, project), process_id)
    await service.set_enabled(session, process, False, _actor(principal))
    return await service.process_read(session, process)


@router.post("/processes/{process_id}/enable", operation_id="processes_enable")
async def enable_process(
    project: str, process_id: uuid.UUID, session: SessionDep, principal: Manager
) -> ProcessRead:
    process = await service.get_process(session, await get_project(session, project), process_id)
    await service.set_enabled(session, process, True, _actor(principal))
    return await service.process_read(session, process)


@router.delete(
    "/processes/{process_id}",
    operation_id="processes_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_CONFLICTS,
)
async def delete_process(
    project: str,
    process_id: uuid.UUID,
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.PROCESSES_DELETE)],
) -> Response:
    """Delete the process with its runs. Refused while a run is active."""
    process = await service.get_process(session, await get_project(session, project), process_id)
    await service.delete_process(session, process)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/processes/{process_id}/events", operation_id="processes_events_list")
async def list_process_events(
    project: str, process_id: uuid.UUID, session: SessionDep, _: Viewer, page: PageDep
) -> Page[ProcessEventRead]:
    """The audit trail of the process and all its runs: who or what, when, from, to, why."""
    process = await service.get_process(session, await get_project(session, project), process_id)
    statement = select(ProcessEvent).where(ProcessEvent.process_id == process.id)
    rows, cursor = await fetch_page(session, statement, ProcessEvent.id, page)
    return Page(items=[ProcessEventRead.model_validate(row[0]) for row in rows], next_cursor=cursor)
