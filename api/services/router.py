"""`/projects/{project}/services`: publish a package version on a machine, start, stop, delete, and
predict through the API (docs/serving.md)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse

from api.core.db import SessionDep
from api.core.deps import NotifierDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission
from api.core.watch import WATCH_RESPONSES, IfNoneMatch, WaitQuery, answer_when_changed
from api.projects.deps import InProject, in_project
from api.runs.lifecycle import actor_of
from api.services import service
from api.services.deps import PredictClientDep, ServiceTarget, service_for
from api.services.schemas import Prediction, ServiceCreate, ServiceEndpointRead, ServiceEventRead, ServiceRead
from api.services.service import LoadedService
from shared.enums import ActorKind, ServiceStatus

router = APIRouter(prefix="/projects/{project}", tags=["services"], responses=error_responses(401, 403, 404))

Read = Annotated[ServiceTarget, service_for(Permission.SERVICES_VIEW)]
Managed = Annotated[ServiceTarget, service_for(Permission.SERVICES_MANAGE)]
StatusFilter = Annotated[
    ServiceStatus | None, Query(alias="status", description="Only services in this status.")
]
_CONFLICTS = error_responses(409)


async def _reread(session: SessionDep, loaded: LoadedService) -> ServiceRead:
    return service.service_read(await service.load_service(session, loaded.project.id, loaded.service.name))


@router.post(
    "/services",
    operation_id="services_create",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 422),
)
async def create_service(
    data: ServiceCreate,
    session: SessionDep,
    target: Annotated[InProject, in_project(Permission.SERVICES_MANAGE)],
) -> ServiceRead:
    """Publish a version of one of the project's packages (it needs `main.py` with `Main.predict`) on
    a target machine, `created`; `start` makes it serve."""
    actor = actor_of(ActorKind.USER, target.principal.id, target.principal.name)
    created = await service.create_service(session, target.project, data, actor)
    return service.service_read(await service.load_service(session, target.project.id, created.name))


@router.get("/services", operation_id="services_list")
async def list_services(
    session: SessionDep,
    target: Annotated[InProject, in_project(Permission.SERVICES_VIEW)],
    page: PageDep,
    status_: StatusFilter = None,
) -> Page[ServiceRead]:
    return await service.list_services(session, target.project, page, status_)


@router.get(
    "/services/{service}", operation_id="services_get", response_model=ServiceRead, responses=WATCH_RESPONSES
)
async def get_service(
    target: Read,
    response: Response,
    session: SessionDep,
    notifier: NotifierDep,
    wait: WaitQuery = 0,
    if_none_match: IfNoneMatch = None,
) -> ServiceRead | Response:
    """The service, with an `ETag` of what it shows. With `If-None-Match` naming it, 304; with
    `wait=S` too, held until it changes (200 with the new `ETag`; deleted: 404) or S seconds pass."""
    loaded = target.loaded

    async def read() -> tuple[ServiceRead, list[uuid.UUID]]:
        found = await service.load_service(session, loaded.project.id, loaded.service.name)
        return service.service_read(found), [found.service.id]

    return await answer_when_changed(if_none_match, response, session, notifier, wait, read, None)


@router.post(
    "/services/{service}/start",
    operation_id="services_start",
    status_code=status.HTTP_202_ACCEPTED,
    responses=_CONFLICTS,
)
async def start_service(target: Managed, session: SessionDep, notifier: NotifierDep) -> ServiceRead:
    """`starting` (the agent is sent the start, with a new secret); `serving` once an instance
    answers. 409 `service_active` while it is starting or serving, `service_stopping` while it stops."""
    await service.start_service(session, notifier, target.loaded, target.actor)
    return await _reread(session, target.loaded)


@router.post(
    "/services/{service}/stop",
    operation_id="services_stop",
    status_code=status.HTTP_202_ACCEPTED,
    responses=_CONFLICTS,
)
async def stop_service(target: Managed, session: SessionDep, notifier: NotifierDep) -> ServiceRead:
    """`stopped` at once if no agent took the start yet, else `stopping` until the agent stopped it.
    409 `service_not_active` when it is not running."""
    await service.stop_service(session, notifier, target.loaded.service, target.actor)
    return await _reread(session, target.loaded)


@router.delete(
    "/services/{service}",
    operation_id="services_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        202: {"model": ServiceRead, "description": "Stopping first; deleted once it has stopped"},
        **_CONFLICTS,
    },
)
async def delete_service(target: Managed, session: SessionDep, notifier: NotifierDep) -> Response:
    """Delete the service at once (204) unless an agent serves it: then it is stopped first and
    deleted once it has stopped (202, `delete_requested`)."""
    if await service.delete_service(session, notifier, target.loaded.service, target.actor):
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    stopping = await _reread(session, target.loaded)
    return JSONResponse(stopping.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED)


@router.get("/services/{service}/events", operation_id="services_events_list")
async def list_service_events(target: Read, session: SessionDep, page: PageDep) -> Page[ServiceEventRead]:
    """The audit trail: who or what moved the service and its instances, when, from, to, why."""
    return await service.list_events(session, target.loaded.service, page)


@router.get("/services/{service}/endpoint", operation_id="services_endpoint_get", responses=_CONFLICTS)
async def get_service_endpoint(
    target: Annotated[ServiceTarget, service_for(Permission.SERVICES_PREDICT)],
) -> ServiceEndpointRead:
    """The serving instances' own addresses and the secret they require, for callers that need the
    lowest latency (docs/serving.md: what calling them directly costs). 409 `service_not_serving`."""
    return service.endpoint_read(target.loaded.service)


@router.post(
    "/services/{service}/predict",
    operation_id="services_predict",
    response_class=Response,
    responses={
        200: {
            "description": "What `predict` returned: JSON, or text/plain for a string",
            "model": Prediction,
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(409, 413, 422, 502),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            # One type in the document: openapi-python-client's client for a body of two types does
            # not import (its `| Unset` goes unimported). Any other type is taken all the same.
            "description": "The input: parsed JSON for `application/json`; a body of any other "
            "Content-Type (an image's bytes, say) is handed to `predict` as the bytes sent",
            "content": {"application/json": {"schema": {}}},
        }
    },
)
async def predict(
    target: Annotated[ServiceTarget, service_for(Permission.SERVICES_PREDICT, audited=False)],
    request: Request,
    session: SessionDep,
    client: PredictClientDep,
) -> Response:
    """The body and its Content-Type go to a serving instance (in turn); its answer comes back as
    it is. 409 `service_not_serving`, 502 `service_unreachable`, 422 `prediction_failed` (the model
    raised: `detail` holds its error), 413 over the body limit."""
    content_type = request.headers.get("content-type")
    answer = await service.predict(session, client, target.loaded, request.body, content_type)
    return Response(content=answer.body, media_type=answer.media_type)
