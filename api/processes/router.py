import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from api.core.db import SessionDep
from api.core.deps import NotifierDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission, Principal, requires
from api.core.watch import WATCH_RESPONSES, IfNoneMatch, WaitQuery, answer_when_changed
from api.processes import service
from api.processes.deps import ProcessTarget, process_for
from api.processes.schemas import ProcessCreate, ProcessEventRead, ProcessRead
from api.projects.service import get_project
from api.runs.lifecycle import actor_of
from api.templates.service import get_template
from shared.enums import ActorKind, ProcessStatus

router = APIRouter(prefix="/projects/{project}", tags=["processes"], responses=error_responses(401, 403, 404))

Viewer = Annotated[Principal, requires(Permission.PROCESSES_VIEW)]
Viewed = Annotated[ProcessTarget, process_for(Permission.PROCESSES_VIEW)]
Managed = Annotated[ProcessTarget, process_for(Permission.PROCESSES_MANAGE)]
StatusFilter = Annotated[
    ProcessStatus | None, Query(alias="status", description="Only processes in this status.")
]
_CONFLICTS = error_responses(409)


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
    # The template is looked up here, after the body is read: a bad body is a 422 before its 404.
    found = await get_project(session, project)
    found_template = await get_template(session, found, template)
    actor = actor_of(ActorKind.USER, principal.id, principal.name)
    process = await service.create_process(session, found, found_template, data.machine, data.enabled, actor)
    return await service.process_read(session, process)


@router.get("/templates/{template}/processes", operation_id="templates_processes_list")
async def list_template_processes(
    project: str, template: str, session: SessionDep, _: Viewer, page: PageDep, status_: StatusFilter = None
) -> Page[ProcessRead]:
    found = await get_project(session, project)
    found_template = await get_template(session, found, template)
    return await service.list_processes(session, found, page, status_, found_template)


@router.get("/processes", operation_id="processes_list")
async def list_processes(
    project: str, session: SessionDep, _: Viewer, page: PageDep, status_: StatusFilter = None
) -> Page[ProcessRead]:
    return await service.list_processes(session, await get_project(session, project), page, status_)


# What a watcher of a process does not wait for: the clock moves it on every read.
PROCESS_VOLATILE = {"latest_run": {"elapsed_seconds"}}


@router.get(
    "/processes/{process_id}",
    operation_id="processes_get",
    response_model=ProcessRead,
    responses=WATCH_RESPONSES,
)
async def get_process(
    target: Viewed,
    response: Response,
    session: SessionDep,
    notifier: NotifierDep,
    wait: WaitQuery = 0,
    if_none_match: IfNoneMatch = None,
) -> ProcessRead | Response:
    """The process, with an `ETag` of its state and its latest run's status, stage, progress and ETA.
    With `If-None-Match` naming it, 304; with `wait=S` too, held until it changes (200 with the new
    `ETag`; a new run, a disable, a deletion: 404) or S seconds pass."""
    process_id = target.loaded.process.id

    async def read() -> tuple[ProcessRead, list[uuid.UUID]]:
        process = await service.reread_process(session, process_id)
        answer = await service.process_read(session, process)
        latest = answer.latest_run
        return answer, [process.id] if latest is None else [process.id, latest.id]

    return await answer_when_changed(if_none_match, response, session, notifier, wait, read, PROCESS_VOLATILE)


@router.post(
    "/processes/{process_id}/start",
    operation_id="processes_start",
    status_code=status.HTTP_201_CREATED,
    responses=_CONFLICTS,
)
async def start_process(target: Managed, session: SessionDep, notifier: NotifierDep) -> ProcessRead:
    """Start a new run (409 `run_active` while one is active, `process_disabled` on a disabled process)."""
    run = await service.start_process(session, notifier, target.loaded, target.actor)
    return service.loaded_process_read(target.loaded, run)  # the new run is the latest


@router.post(
    "/processes/{process_id}/stop",
    operation_id="processes_stop",
    status_code=status.HTTP_202_ACCEPTED,
    responses=_CONFLICTS,
)
async def stop_process(target: Managed, session: SessionDep, notifier: NotifierDep) -> ProcessRead:
    """Stop the active run: `stopped` at once if no agent took it yet, else `stopping` until it ends."""
    await service.stop_process(session, notifier, target.loaded.process, target.actor)
    return await service.process_read(session, target.loaded.process)


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
    target: Managed, session: SessionDep, notifier: NotifierDep, response: Response
) -> ProcessRead:
    """Start again: at once (201) after the run ended; else stop it and start when it stopped (202)."""
    if not await service.restart_process(session, notifier, target.loaded.process, target.actor):
        response.status_code = status.HTTP_202_ACCEPTED
    return await service.process_read(session, target.loaded.process)


@router.post("/processes/{process_id}/disable", operation_id="processes_disable", responses=_CONFLICTS)
async def disable_process(target: Managed, session: SessionDep) -> ProcessRead:
    """Lock the process: it can be neither started nor stopped. Refused while a run is active."""
    await service.set_enabled(session, target.loaded.process, False, target.actor)
    return await service.process_read(session, target.loaded.process)


@router.post("/processes/{process_id}/enable", operation_id="processes_enable")
async def enable_process(target: Managed, session: SessionDep) -> ProcessRead:
    await service.set_enabled(session, target.loaded.process, True, target.actor)
    return await service.process_read(session, target.loaded.process)


@router.delete(
    "/processes/{process_id}",
    operation_id="processes_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_CONFLICTS,
)
async def delete_process(
    target: Annotated[ProcessTarget, process_for(Permission.PROCESSES_DELETE)], session: SessionDep
) -> Response:
    """Delete the process with its runs. Refused while a run is active."""
    await service.delete_process(session, target.loaded.process)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/processes/{process_id}/events", operation_id="processes_events_list")
async def list_process_events(target: Viewed, session: SessionDep, page: PageDep) -> Page[ProcessEventRead]:
    """The audit trail of the process and all its runs: who or what, when, from, to, why."""
    return await service.list_events(session, target.loaded.process, page)
