"""A service's page (issue 15): its status and history (the audit trail), its endpoints, Start, Stop
and Delete as the person's permissions and its state allow, and the service-test form (TI-ONE's):
upload a file or paste JSON, see what the model answered, how long it took, or why it did not.

The form posts to the console, which calls `api/services/service.predict`, the REST route's own path
(the same instances in turn, the same secret, the same problems and Prometheus counts), with
`services.predict`. The answer is shown as text: JSON pretty-printed, text as it came, anything else as
its type and size; a model's answer is hostile input like any name. `state?wait=S` keeps the header,
the buttons, the form's availability and the history live (the service's id wakes it).
"""

import json
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from pydantic import BaseModel
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from api.console.common import InProject, ProjectChange, ProjectPage, refuse, require
from api.console.i18n import Translator
from api.console.pages import PageAnswer, redirect, render, translator
from api.console.views.services import ACTIONS, ServiceRow, audit_change, row, service_url, services_url
from api.core.db import SessionDep
from api.core.deps import NotifierDep
from api.core.errors import NotFound, TrainyardError
from api.core.schemas import MAX_PAGE_SIZE, PageParams
from api.core.security import Permission
from api.core.watch import IfNoneMatch, WaitQuery, answer_when_changed, etag_of
from api.runs.lifecycle import actor_of
from api.services import service
from api.services.deps import PredictClientDep
from api.services.proxy import Prediction
from api.services.service import LoadedService
from shared.enums import ActorKind, ServiceStatus

router = APIRouter(prefix="/ui", include_in_schema=False)

MAX_SHOWN_CHARS = 100_000  # of an answer: the rest is cut, and the page says so
# The audit trail's kinds the catalog names (`services.event.<kind>`); another shows as it is.
EVENT_KINDS = frozenset(
    (
        "service_created",
        "service_status",
        "instance_starting",
        "instance_serving",
        "instance_exited",
        "instance_stopped",
        "delete_requested",
    )
)
VOLATILE = {"service": {"time_left", "time_left_seconds"}}
Cursor = Annotated[str | None, Query(max_length=64)]


class HistoryEvent(BaseModel):
    at: str
    who: str
    what: str
    instance: str
    move: str
    reason: str
    detail: str


class ServiceState(BaseModel):
    """The page's live parts: the header, the buttons, the form's availability, the history."""

    service: ServiceRow
    serving: bool
    addresses: list[str]
    history: list[HistoryEvent]
    next_cursor: str | None


class Answer(BaseModel):
    """What the form shows after a prediction: the answer as text, or the problem."""

    ok: bool
    kind: str = ""  # json, text, bytes
    body: str = ""
    media_type: str = ""
    size: int = 0
    cut: bool = False
    latency_ms: str = ""
    title: str = ""
    detail: str = ""
    code: str = ""


async def _loaded(request: Request, session: SessionDep, where: InProject, name: str) -> LoadedService:
    require(request, where, Permission.SERVICES_VIEW)
    try:
        return await service.load_service(session, where.project_id, name)
    except NotFound:
        raise refuse(request, where.signed_in, 404, "services.no_service") from None


async def _state(
    translator_: Translator, session: SessionDep, where: InProject, loaded: LoadedService, cursor: str | None
) -> ServiceState:
    t = translator_.t
    read = service.service_read(loaded)
    events = await service.list_events(
        session, loaded.service, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor)
    )
    history = [
        HistoryEvent(
            at=translator_.when(event.at),
            who=event.actor_name,
            what=t(f"services.event.{event.kind}") if event.kind in EVENT_KINDS else event.kind,
            instance="" if event.instance is None else str(event.instance),
            move=" → ".join(s for s in (event.from_status, event.to_status) if s),
            reason=event.reason_code or "",
            detail=event.detail,
        )
        for event in events.items
    ]
    serving = read.status is ServiceStatus.SERVING and bool(read.serving_instances)
    addresses: list[str] = []
    if serving and where.can(Permission.SERVICES_PREDICT):  # as GET .../endpoint: predict-holders only
        addresses = service.serving_endpoints(loaded.service)[0]
    return ServiceState(
        service=row(translator_, where.project.name, read, where.can(Permission.SERVICES_MANAGE)),
        serving=serving,
        addresses=addresses,
        history=history,
        next_cursor=events.next_cursor,
    )


def _page(
    request: Request,
    where: InProject,
    state: ServiceState,
    cursor: str | None,
    *,
    json_text: str = "",
    answer: Answer | None = None,
    problem: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    name = state.service.name
    url = service_url(where.project.name, name)
    context = where.context(
        s=state.service,
        state=state,
        version=etag_of(state, VOLATILE),
        cursor=cursor or "",
        url=url,
        list_url=services_url(where.project.name),
        rest_predict=f"/api/v1/projects/{where.project.name}/services/{name}/predict",
        actions=ACTIONS if where.can(Permission.SERVICES_MANAGE) else (),
        may_predict=where.can(Permission.SERVICES_PREDICT),
        json_text=json_text,
        answer=answer,
        problem=problem,
        active="services",
    )
    return render(
        request, "services/service.html", context, signed_in=where.signed_in, status_code=status_code
    )


@router.get("/projects/{project}/services/{name}/")
async def service_page(
    request: Request, session: SessionDep, where: ProjectPage, name: str, cursor: Cursor = None
) -> HTMLResponse:
    loaded = await _loaded(request, session, where, name)
    return _page(request, where, await _state(translator(request), session, where, loaded, cursor), cursor)


@router.get("/projects/{project}/services/{name}/state")
async def service_state(
    request: Request,
    response: Response,
    session: SessionDep,
    notifier: NotifierDep,
    where: ProjectPage,
    name: str,
    if_none_match: IfNoneMatch = None,
    wait: WaitQuery = 0,
    cursor: Cursor = None,
) -> Response:
    """The header, the history and whether it serves, as JSON with their ETag, held as the list's
    route is; a move of the service (`record_event` wakes its id) answers it."""
    loaded = await _loaded(request, session, where, name)
    service_id = loaded.service.id
    again = False

    async def read() -> tuple[ServiceState, list[Any]]:
        nonlocal again
        current = loaded
        if again:  # after a wake: the row as it committed since
            session.expunge_all()
            current = await _loaded(request, session, where, name)
        again = True
        return await _state(translator(request), session, where, current, cursor), [service_id]

    answer = await answer_when_changed(if_none_match, response, session, notifier, wait, read, VOLATILE)
    if isinstance(answer, Response):
        return answer
    return JSONResponse(answer.model_dump(mode="json"), headers={"ETag": response.headers["ETag"]})


def shown(prediction: Prediction, seconds: float, t: Callable[..., str]) -> Answer:
    """The answer as the page shows it: JSON indented, text as text, other bytes as type and size."""
    media_type = prediction.media_type.split(";")[0].strip().lower()
    latency = t("services.latency_ms", value=f"{seconds * 1000:.1f}")
    size = len(prediction.body)
    base = {"ok": True, "media_type": prediction.media_type, "size": size, "latency_ms": latency}
    if media_type == "application/json" or media_type.endswith("+json"):
        try:
            text = json.dumps(json.loads(prediction.body), indent=2, ensure_ascii=False)
            return Answer(kind="json", body=text[:MAX_SHOWN_CHARS], cut=len(text) > MAX_SHOWN_CHARS, **base)
        except ValueError:
            pass
    if media_type.startswith("text/") or media_type == "application/json":
        text = prediction.body.decode("utf-8", errors="replace")
        return Answer(kind="text", body=text[:MAX_SHOWN_CHARS], cut=len(text) > MAX_SHOWN_CHARS, **base)
    return Answer(kind="bytes", **base)


@router.post("/projects/{project}/services/{name}/predict")
async def predict(
    request: Request,
    session: SessionDep,
    client: PredictClientDep,
    where: ProjectChange,
    name: str,
    input_json: Annotated[str, Form()] = "",
    input_file: Annotated[UploadFile | None, File()] = None,
) -> HTMLResponse:
    """The service-test form: a file (sent with its type) or else the JSON text (checked first, sent
    as `application/json`), through the REST route's path; the page again with the answer or the
    problem. The request's body limit is the REST route's (`api/core/limits.py`)."""
    require(request, where, Permission.SERVICES_PREDICT)
    loaded = await _loaded(request, session, where, name)
    tr = translator(request)
    state = await _state(tr, session, where, loaded, None)
    if input_file is not None and input_file.filename:
        body = await input_file.read()
        content_type = input_file.content_type or "application/octet-stream"
    elif input_json.strip():
        try:
            json.loads(input_json)
        except ValueError as error:
            failed = Answer(
                ok=False, title=tr.t("services.json_invalid"), detail=str(error), code="malformed_json"
            )
            return _page(request, where, state, None, json_text=input_json, answer=failed, status_code=422)
        body, content_type = input_json.encode(), "application/json"
    else:
        empty = Answer(ok=False, title=tr.t("services.input_missing"), detail=tr.t("services.input_hint"))
        return _page(request, where, state, None, answer=empty, status_code=422)

    async def read_body() -> bytes:
        return body

    started = time.perf_counter()
    try:
        prediction = await service.predict(session, client, loaded, read_body, content_type)
    except TrainyardError as refusal:  # service_not_serving, service_unreachable, prediction_failed
        failed = Answer(ok=False, title=refusal.title, detail=refusal.detail, code=refusal.code)
        page = _page(
            request, where, state, None, json_text=input_json, answer=failed, status_code=refusal.status_code
        )
        return page
    answer = shown(prediction, time.perf_counter() - started, tr.t)
    return _page(request, where, state, None, json_text=input_json, answer=answer)


@router.post("/projects/{project}/services/{name}/{action}")
async def act(
    request: Request,
    session: SessionDep,
    notifier: NotifierDep,
    where: ProjectChange,
    name: str,
    action: str,
) -> RedirectResponse:
    """Start, Stop or Delete, as their REST routes do them (the permission, the service call, the audit
    row); a refusal (the state moved since the page was drawn) shows the page with the API's message."""
    if action not in ACTIONS:
        raise refuse(request, where.signed_in, 404, "services.no_action")
    require(request, where, Permission.SERVICES_MANAGE)
    loaded = await _loaded(request, session, where, name)
    state = await _state(translator(request), session, where, loaded, None)  # before: a refusal shows it
    principal = where.principal
    actor = actor_of(ActorKind.USER, principal.id, principal.name)
    try:
        if action == "start":
            await service.start_service(session, notifier, loaded, actor)
        elif action == "stop":
            await service.stop_service(session, notifier, loaded.service, actor)
        else:
            gone = await service.delete_service(session, notifier, loaded.service, actor)
    except TrainyardError as refusal:  # service_active, service_not_active, machine_disabled...
        page = _page(request, where, state, None, problem=refusal.detail, status_code=refusal.status_code)
        raise PageAnswer(page) from None  # raised: the session dependency rolls back what it began
    audit_change(request, session, where, f"services_{action}")
    if action == "delete" and gone:
        return redirect(services_url(where.project.name))
    return redirect(service_url(where.project.name, name))
