"""Processes (Primo's page): one table of a project's processes with their latest run (status with its
stage, progress, elapsed, "~Until end") and the action menu the state machine and the person's
permissions allow; a form that creates a process; a long-poll that keeps the table live.

A client of `api/processes/service.py`: each action is the REST route's service call with the same
permission (`processes.manage` for start, stop, restart, disable, enable; `processes.delete`;
`processes.create`), so a forged POST is refused as the API would refuse it. The live part is one JSON
route, `state?wait=S` with `If-None-Match`: answered at once when the rows differ from the version the
script holds, else held (no connection) until a change of the project or of a shown run commits.
"""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from api.console.common import InProject, ProjectChange, ProjectPage, field_errors, refuse, require
from api.console.i18n import Translator
from api.console.nav import project_url
from api.console.pages import PageAnswer, redirect, render, translator
from api.console.session import audit
from api.core.db import SessionDep
from api.core.deps import NotifierDep, SettingsDep
from api.core.errors import NotFound, TrainyardError
from api.core.schemas import MAX_PAGE_SIZE, PageParams
from api.core.security import Permission
from api.core.watch import IfNoneMatch, WaitQuery, answer_when_changed, etag_of
from api.machines import service as machines
from api.processes import service
from api.processes.schemas import ProcessCreate, ProcessRead
from api.runs.lifecycle import actor_of
from api.templates.service import get_template, list_templates
from shared.enums import ActorKind, ProcessStatus

PAGE = "processes"
router = APIRouter(prefix="/ui", include_in_schema=False)

ACTIVE = frozenset({ProcessStatus.STARTING, ProcessStatus.RUNNING, ProcessStatus.STOPPING})
# The menu's order; which of them a row offers is `allowed_actions`.
ACTIONS = ("start", "stop", "restart", "disable", "enable", "delete")
FormText = Annotated[str, Form(max_length=512)]
Cursor = Annotated[str | None, Query(max_length=64)]


def processes_url(project: str) -> str:
    return f"{project_url(project)}processes/"


def run_url(project: str, run_id: uuid.UUID) -> str:
    return f"{project_url(project)}runs/{run_id}/"


def duration(seconds: float | None) -> str:
    """`h:mm:ss`, the same in every locale (the script ticks elapsed in this form too)."""
    if seconds is None:
        return ""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def allowed_actions(item: ProcessRead, may_manage: bool, may_delete: bool) -> list[str]:
    """What the state machine lets a person with these permissions do now (DESIGN.md, the run's life):
    a disabled process only enables (or goes); an active run stops or restarts; else it starts,
    restarts, disables, or goes."""
    active = item.status in ACTIVE
    found = []
    if may_manage:
        if not item.enabled:
            found.append("enable")
        else:
            if not active:
                found += ["start", "restart", "disable"]
            else:
                if item.status is not ProcessStatus.STOPPING:
                    found.append("stop")
                if not item.restart_pending:
                    found.append("restart")
    if may_delete and not active:
        found.append("delete")
    return [action for action in ACTIONS if action in found]


def offered_actions(where: InProject) -> list[str]:
    """The menu's actions this person's permissions allow in any state (each row shows those of them
    that its state allows, and the script shows and hides them as the state moves)."""
    manage = where.can(Permission.PROCESSES_MANAGE)
    delete = where.can(Permission.PROCESSES_DELETE)
    return [a for a in ACTIONS if (a == "delete" and delete) or (a != "delete" and manage)]


class ProcessRow(BaseModel):
    """A row's fields, as the page renders them and as the live route sends them (the same values)."""

    id: str
    template: str
    machine: str
    enabled: bool
    status: str
    status_label: str
    stage: str
    note: str
    restart_pending: bool
    progress: int | None
    progress_text: str
    elapsed: str
    elapsed_seconds: float | None
    ticking: bool  # launched and not ended: elapsed ticks in the page, and its telemetry wakes the route
    eta: str
    run_id: str
    run_number: int
    actions: list[str]


class ProcessesState(BaseModel):
    rows: list[ProcessRow]
    next_cursor: str | None


# Left out of the ETag: elapsed moves with the clock (the page ticks it), or every answer would differ.
VOLATILE = {"rows": {"__all__": {"elapsed", "elapsed_seconds"}}}


def row(translator_: Translator, item: ProcessRead, may_manage: bool, may_delete: bool) -> ProcessRow:
    t = translator_.t
    run = item.latest_run
    progress = None if run is None or run.progress is None else round(run.progress * 100)
    status = item.status.value
    return ProcessRow(
        id=str(item.id),
        template=item.template,
        machine=item.machine,
        enabled=item.enabled,
        status=status,
        status_label=t(f"processes.status.{status}"),
        stage=(run.stage or "") if run is not None else "",
        note=t("processes.disabled") if not item.enabled else "",
        restart_pending=item.restart_pending,
        progress=progress,
        progress_text="" if progress is None else t("processes.percent", value=progress),
        elapsed=duration(run.elapsed_seconds) if run is not None else "",
        elapsed_seconds=run.elapsed_seconds if run is not None else None,
        ticking=run is not None and run.launched_at is not None and run.ended_at is None,
        eta=duration(run.eta_seconds) if run is not None and item.status in ACTIVE else "",
        run_id=str(run.id) if run is not None else "",
        run_number=run.number if run is not None else 0,
        actions=allowed_actions(item, may_manage, may_delete),
    )


async def _listing(
    request: Request, session: SessionDep, where: InProject, cursor: str | None
) -> ProcessesState:
    t = translator(request)
    page = await service.list_processes(
        session, where.project, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor), None
    )
    manage = where.can(Permission.PROCESSES_MANAGE)
    delete = where.can(Permission.PROCESSES_DELETE)
    return ProcessesState(
        rows=[row(t, item, manage, delete) for item in page.items], next_cursor=page.next_cursor
    )


async def _create_choices(session: SessionDep, settings: SettingsDep, where: InProject) -> dict[str, Any]:
    """The create form's choices: the project's templates, and the machines when the person may see
    them (else the machine is typed by name, as the REST route takes it)."""
    if not where.can(Permission.PROCESSES_CREATE):
        return {"may_create": False, "templates": [], "machines": None}
    templates = await list_templates(session, where.project, PageParams(limit=MAX_PAGE_SIZE), None)
    found = None
    if where.principal.can(Permission.MACHINES_VIEW):
        page = await machines.list_machines(session, PageParams(limit=MAX_PAGE_SIZE), settings.offline_after)
        found = [machine.name for machine in page.items if machine.enabled]
    return {"may_create": True, "templates": [item.name for item in templates.items], "machines": found}


def _page(
    request: Request,
    where: InProject,
    state: ProcessesState,
    cursor: str | None,
    choices: dict[str, Any],
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    problem: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    name = where.project.name
    offered = offered_actions(where)
    context = where.context(
        rows=state.rows,
        version=etag_of(state, VOLATILE),
        next_cursor=state.next_cursor,
        cursor=cursor or "",
        base=processes_url(name),
        run_url=lambda run_id: run_url(name, run_id),
        runs_base=f"{project_url(name)}runs/",
        form=form or {"template": "", "machine": ""},
        errors=errors or {},
        problem=problem,
        actions=offered,
        may_act=bool(offered),
        active="processes",
        **choices,
    )
    return render(request, "processes/list.html", context, signed_in=where.signed_in, status_code=status_code)


@router.get("/projects/{project}/processes/")
async def processes_page(
    request: Request, session: SessionDep, settings: SettingsDep, where: ProjectPage, cursor: Cursor = None
) -> HTMLResponse:
    require(request, where, Permission.PROCESSES_VIEW)
    state = await _listing(request, session, where, cursor)
    choices = await _create_choices(session, settings, where)
    return _page(request, where, state, cursor, choices)


@router.get("/projects/{project}/processes/state")
async def processes_state(
    request: Request,
    response: Response,
    session: SessionDep,
    notifier: NotifierDep,
    where: ProjectPage,
    if_none_match: IfNoneMatch = None,
    wait: WaitQuery = 0,
    cursor: Cursor = None,
) -> Response:
    """The rows as JSON with their ETag, held as the API's `wait=` GETs are (`api/core/watch.py`): 304
    while the tag the script holds is current, else the new rows. A change of the project (a process,
    a run's status: `changed_after_commit` names the project) or of a shown running run (its
    telemetry's progress, stage, ETA) wakes it."""
    require(request, where, Permission.PROCESSES_VIEW)
    again = False

    async def read() -> tuple[ProcessesState, list[uuid.UUID]]:
        nonlocal again
        if again:  # after a wake: what committed since, not the identity map's copies of the rows
            session.expunge_all()
        again = True
        state = await _listing(request, session, where, cursor)
        running = [uuid.UUID(item.run_id) for item in state.rows if item.ticking]
        return state, [where.project_id, *running]

    answer = await answer_when_changed(if_none_match, response, session, notifier, wait, read, VOLATILE)
    if isinstance(answer, Response):
        return answer
    return JSONResponse(answer.model_dump(mode="json"), headers={"ETag": response.headers["ETag"]})


@router.post("/projects/{project}/processes/")
async def create_process(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    where: ProjectChange,
    template: FormText = "",
    machine: FormText = "",
) -> RedirectResponse:
    """What `POST .../templates/{template}/processes` does, with its permission, schema and service."""
    require(request, where, Permission.PROCESSES_CREATE)
    state = await _listing(request, session, where, None)
    choices = await _create_choices(session, settings, where)
    form = {"template": template, "machine": machine}

    def refused(errors: dict[str, str], status_code: int) -> PageAnswer:
        page = _page(
            request,
            where,
            state,
            None,
            choices,
            form=form,
            errors=errors,
            status_code=status_code,
        )
        return PageAnswer(page)

    try:
        data = ProcessCreate(machine=machine)
    except ValidationError as invalid:
        raise refused(field_errors(invalid), 422) from None
    principal = where.principal
    try:
        found = await get_template(session, where.project, template)
        actor = actor_of(ActorKind.USER, principal.id, principal.name)
        await service.create_process(session, where.project, found, data.machine, data.enabled, actor)
    except NotFound as missing:
        field = "template" if missing.code == "template_not_found" else "machine"
        raise refused({field: missing.detail}, 404) from None
    except TrainyardError as refusal:  # machine_full, machine_disabled
        raise refused({refusal.field or "machine": refusal.detail}, refusal.status_code) from None
    _audit(request, session, where, "processes_create")
    return redirect(processes_url(where.project.name))


def _audit(request: Request, session: SessionDep, where: InProject, action: str) -> None:
    request.state.project_id = where.project_id  # the audit row names the project, as the API's does
    audit(session, request, where.principal, action)


@router.post("/projects/{project}/processes/act")
async def act_from_menu(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    notifier: NotifierDep,
    where: ProjectChange,
    do: Annotated[str, Form(max_length=128)] = "",
    cursor: Annotated[str | None, Form(max_length=64)] = None,
) -> RedirectResponse:
    """The menu's button: the page's one action form, `do=<process id>/<action>`."""
    process_id, _, action = do.partition("/")
    try:
        parsed = uuid.UUID(process_id)
    except ValueError:
        raise refuse(request, where.signed_in, 404, "processes.no_action") from None
    return await act(request, session, settings, notifier, where, parsed, action, cursor)


@router.post("/projects/{project}/processes/{process_id}/{action}")
async def act(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    notifier: NotifierDep,
    where: ProjectChange,
    process_id: uuid.UUID,
    action: str,
    cursor: Annotated[str | None, Form(max_length=64)] = None,
) -> RedirectResponse:
    """One of the menu's actions, as its REST route does it: the same permission, the same service
    call. A refusal (the state moved on since the page was drawn) shows the table again with the
    API's own message and status."""
    if action not in ACTIONS:
        raise refuse(request, where.signed_in, 404, "processes.no_action")
    require(
        request, where, Permission.PROCESSES_DELETE if action == "delete" else Permission.PROCESSES_MANAGE
    )
    # Read before the change is tried: a refusal renders it without touching the session it ended.
    state = await _listing(request, session, where, cursor)
    choices = await _create_choices(session, settings, where)
    principal = where.principal
    actor = actor_of(ActorKind.USER, principal.id, principal.name)
    try:
        loaded = await service.load_process(session, where.project_id, where.project.name, process_id)
        process = loaded.process
        if action == "start":
            await service.start_process(session, notifier, loaded, actor)
        elif action == "stop":
            await service.stop_process(session, notifier, process, actor)
        elif action == "restart":
            await service.restart_process(session, notifier, process, actor)
        elif action in ("disable", "enable"):
            await service.set_enabled(session, process, action == "enable", actor)
        else:
            await service.delete_process(session, process)
    except TrainyardError as refusal:  # not_found, run_active, process_disabled, machine_disabled...
        page = _page(
            request,
            where,
            state,
            cursor,
            choices,
            problem=refusal.detail,
            status_code=refusal.status_code,
        )
        raise PageAnswer(page) from None  # raised: the session dependency rolls back what it began
    _audit(request, session, where, f"processes_{action}")
    target = processes_url(where.project.name)
    return redirect(f"{target}?cursor={cursor}" if cursor else target)
