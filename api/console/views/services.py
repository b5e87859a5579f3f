"""Services (issue 15): a project's prediction services, one row each (package and version, machine,
status, instances serving, started, maximum run time left) with a form that publishes a version, and a
long-poll that keeps the rows live. A service's own page is `views/service_page.py`.

A client of `api/services/service.py` with the REST routes' permissions: `services.view` to see,
`services.manage` to publish (the same `ServiceCreate`, the same `create_service`, its refusals shown
at their field in the API's words). The live route is `state?wait=S` with `If-None-Match`, answered
by `api/core/watch.answer_when_changed` as the Processes page's is: a service's every move wakes its
project's id (`lifecycle.record_event`).
"""

import math
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from api.console.common import InProject, ProjectChange, ProjectPage, field_errors, require
from api.console.i18n import Translator
from api.console.nav import project_url
from api.console.pages import PageAnswer, redirect, render, translator
from api.console.session import audit
from api.console.views.processes import duration
from api.core.db import SessionDep
from api.core.deps import NotifierDep, SettingsDep
from api.core.errors import TrainyardError
from api.core.schemas import MAX_PAGE_SIZE, PageParams
from api.core.security import Permission
from api.core.watch import IfNoneMatch, WaitQuery, answer_when_changed, etag_of
from api.machines import service as machines
from api.models.base import utcnow
from api.runs.lifecycle import actor_of
from api.services import service
from api.services.lifecycle import ACTIVE, STARTABLE
from api.services.schemas import DEFAULT_MAX_RUN_SECONDS, ServiceCreate, ServiceRead
from shared.enums import ActorKind

PAGE = "services"
router = APIRouter(prefix="/ui", include_in_schema=False)

ACTIONS = ("start", "stop", "delete")
FormText = Annotated[str, Form(max_length=512)]
Cursor = Annotated[str | None, Query(max_length=64)]
# A version offered as `<package>/<version>`: a name holds no `/`, so the last one splits it.
SEPARATOR = "/"
# Left out of the ETag: the time left moves with the clock (the page counts it down between answers).
VOLATILE = {"rows": {"__all__": {"time_left", "time_left_seconds"}}}


def services_url(project: str) -> str:
    return f"{project_url(project)}services/"


def service_url(project: str, name: str) -> str:
    return f"{services_url(project)}{quote(name, safe='')}/"


def time_left(item: ServiceRead, now: datetime) -> float | None:
    """Seconds until the agent stops it at its maximum run time; None unless it is wanted served."""
    if item.status not in ACTIVE or item.started_at is None:
        return None
    return max(0.0, item.started_at.timestamp() + item.max_run_seconds - now.timestamp())


def allowed_actions(item: ServiceRead, may_manage: bool) -> list[str]:
    """What the service's state lets a person holding `services.manage` do now: start a service that
    is not running, stop one that is wanted served, delete one (a live one is stopped first)."""
    if not may_manage:
        return []
    found = []
    if item.status in STARTABLE:
        found.append("start")
    if item.status in ACTIVE:
        found.append("stop")
    if not item.delete_requested:
        found.append("delete")
    return found


class ServiceRow(BaseModel):
    """A service's fields as the pages render them and as the live routes send them (the same values)."""

    name: str
    url: str
    package: str
    version: str
    machine: str
    status: str
    status_label: str
    reason: str
    serving: str
    serving_count: int
    instances: int
    started: str
    ended: str
    max_run: str
    time_left: str
    time_left_seconds: float | None
    error_tail: str
    delete_requested: bool
    actions: list[str]


def row(translator_: Translator, project: str, item: ServiceRead, may_manage: bool) -> ServiceRow:
    t = translator_.t
    left = time_left(item, utcnow())
    return ServiceRow(
        name=item.name,
        url=service_url(project, item.name),
        package=item.package,
        version=item.version,
        machine=item.machine,
        status=item.status.value,
        status_label=t(f"services.status.{item.status.value}"),
        reason=item.reason_code or "",
        serving=t("services.serving_of", serving=len(item.serving_instances), instances=item.instances),
        serving_count=len(item.serving_instances),
        instances=item.instances,
        started=translator_.when(item.started_at) if item.started_at else "",
        ended=translator_.when(item.ended_at) if item.ended_at else "",
        max_run=duration(item.max_run_seconds),
        time_left="" if left is None else duration(left),
        time_left_seconds=left,
        error_tail=item.error_tail,
        delete_requested=item.delete_requested,
        actions=allowed_actions(item, may_manage),
    )


class ServicesState(BaseModel):
    rows: list[ServiceRow]
    next_cursor: str | None


async def _listing(
    request: Request, session: SessionDep, where: InProject, cursor: str | None
) -> ServicesState:
    page = await service.list_services(session, where.project, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor))
    t = translator(request)
    manage = where.can(Permission.SERVICES_MANAGE)
    name = where.project.name
    return ServicesState(
        rows=[row(t, name, item, manage) for item in page.items], next_cursor=page.next_cursor
    )


async def _create_choices(session: SessionDep, settings: SettingsDep, where: InProject) -> dict[str, Any]:
    """The form's choices: the versions that can serve and the enabled machines, each a list where
    the person may list them (else a field to type it in, as the REST route takes it)."""
    if not where.can(Permission.SERVICES_MANAGE):
        return {"may_create": False, "versions": None, "machines": None}
    versions = None
    if where.can(Permission.PACKAGES_VIEW):
        versions = [
            (package, version, f"{package}{SEPARATOR}{version}")
            for package, version in await service.servable_versions(session, where.project, MAX_PAGE_SIZE)
        ]
    found = None
    if where.principal.can(Permission.MACHINES_VIEW):
        page = await machines.list_machines(session, PageParams(limit=MAX_PAGE_SIZE), settings.offline_after)
        found = [machine.name for machine in page.items if machine.enabled]
    return {"may_create": True, "versions": versions, "machines": found}


def blank_form() -> dict[str, str]:
    hours = DEFAULT_MAX_RUN_SECONDS / 3600
    return {"name": "", "served": "", "package": "", "version": "", "machine": "", "hours": f"{hours:g}"}


def _page(
    request: Request,
    where: InProject,
    state: ServicesState,
    cursor: str | None,
    choices: dict[str, Any],
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    context = where.context(
        rows=state.rows,
        version=etag_of(state, VOLATILE),
        next_cursor=state.next_cursor,
        cursor=cursor or "",
        base=services_url(where.project.name),
        form=form or blank_form(),
        errors=errors or {},
        active="services",
        **choices,
    )
    return render(request, "services/list.html", context, signed_in=where.signed_in, status_code=status_code)


@router.get("/projects/{project}/services/")
async def services_page(
    request: Request, session: SessionDep, settings: SettingsDep, where: ProjectPage, cursor: Cursor = None
) -> HTMLResponse:
    require(request, where, Permission.SERVICES_VIEW)
    state = await _listing(request, session, where, cursor)
    return _page(request, where, state, cursor, await _create_choices(session, settings, where))


@router.get("/projects/{project}/services/state")
async def services_state(
    request: Request,
    response: Response,
    session: SessionDep,
    notifier: NotifierDep,
    where: ProjectPage,
    if_none_match: IfNoneMatch = None,
    wait: WaitQuery = 0,
    cursor: Cursor = None,
) -> Response:
    """The rows as JSON with their ETag; held while the script's tag is current, until a service of
    the project moves (its project's id wakes it) or `wait` seconds pass (304)."""
    require(request, where, Permission.SERVICES_VIEW)
    again = False

    async def read() -> tuple[ServicesState, list[Any]]:
        nonlocal again
        if again:  # after a wake: what committed since, not the identity map's copies
            session.expunge_all()
        again = True
        return await _listing(request, session, where, cursor), [where.project_id]

    answer = await answer_when_changed(if_none_match, response, session, notifier, wait, read, VOLATILE)
    if isinstance(answer, Response):
        return answer
    return JSONResponse(answer.model_dump(mode="json"), headers={"ETag": response.headers["ETag"]})


def _hours(text: str) -> int | str:
    """The form's hours as seconds (ServiceCreate checks the bounds), or the text when it is no number."""
    try:
        hours = float(text.strip().replace(",", "."))
    except ValueError:
        return text
    return round(hours * 3600) if math.isfinite(hours) else text


@router.post("/projects/{project}/services/")
async def create_service(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    where: ProjectChange,
    name: FormText = "",
    served: FormText = "",
    package: FormText = "",
    version: FormText = "",
    machine: FormText = "",
    hours: FormText = "",
    instances: FormText = "1",
) -> RedirectResponse:
    """What `POST .../services` does, with its permission, schema and service; then the new service's
    page, where it is started."""
    require(request, where, Permission.SERVICES_MANAGE)
    state = await _listing(request, session, where, None)
    choices = await _create_choices(session, settings, where)
    form = {"name": name, "served": served, "package": package, "version": version, "machine": machine}
    form |= {"hours": hours, "instances": instances}
    if served:
        package, _, version = served.rpartition(SEPARATOR)

    def refused(errors: dict[str, str], status_code: int) -> PageAnswer:
        page = _page(request, where, state, None, choices, form=form, errors=errors, status_code=status_code)
        return PageAnswer(page)

    seconds = _hours(hours)
    if isinstance(seconds, str):
        raise refused({"hours": translator(request).t("services.hours_invalid")}, 422)
    fields = {"name": name, "package": package, "version": version, "machine": machine}
    try:
        data = ServiceCreate.model_validate(
            {**fields, "max_run_seconds": seconds, "instances": instances.strip() or "1"}
        )
    except ValidationError as invalid:
        raise refused(_form_fields(field_errors(invalid)), 422) from None
    principal = where.principal
    try:
        created = await service.create_service(
            session, where.project, data, actor_of(ActorKind.USER, principal.id, principal.name)
        )
    except TrainyardError as refusal:  # package or version not found, cannot serve, machine, name taken
        if refusal.code == "service_exists":  # the failed insert rolled back and expired the project
            await session.rollback()
            await session.refresh(where.project)
        raise refused(_form_fields({_field_of(refusal): refusal.detail}), refusal.status_code) from None
    audit_change(request, session, where, "services_create")
    return redirect(service_url(where.project.name, created.name))


def _field_of(refusal: TrainyardError) -> str:
    if refusal.code.startswith("package"):
        return "package"
    if refusal.code.startswith("machine"):
        return "machine"
    return refusal.field or "name"


def _form_fields(errors: dict[str, str]) -> dict[str, str]:
    """The API's fields as the form's: package and version are one picker, the run time in hours."""
    renamed = {"package": "served", "version": "served", "max_run_seconds": "hours"}
    found: dict[str, str] = {}
    for field, message in errors.items():
        found.setdefault(renamed.get(field, field), message)
    return found


def audit_change(request: Request, session: SessionDep, where: InProject, action: str) -> None:
    request.state.project_id = where.project_id  # the audit row names the project, as the API's does
    audit(session, request, where.principal, action)
