"""What a route on one service is handed: the service, with the caller authorised, loaded once; and
the process's prediction client."""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from api.core.db import SessionDep
from api.core.security import Permission, Principal, requires
from api.runs.lifecycle import Actor, actor_of
from api.services.proxy import PredictClient
from api.services.service import LoadedService, load_service
from shared.enums import ActorKind


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    principal: Principal
    loaded: LoadedService

    @property
    def actor(self) -> Actor:
        return actor_of(ActorKind.USER, self.principal.id, self.principal.name)


def service_for(permission: Permission, *, audited: bool = True) -> Any:
    """The dependency of a route under `/projects/{project}/services/{service}`:
    `Annotated[ServiceTarget, service_for(...)]`. The permission is checked first, by `requires`
    (401, then 404 `project_not_found`, then 403); then the service is read (404 `service_not_found`)."""
    authorised = requires(permission, audited=audited)

    async def load(
        project: str,
        service: str,
        request: Request,
        session: SessionDep,
        principal: Annotated[Principal, authorised],
    ) -> ServiceTarget:
        return ServiceTarget(principal, await load_service(session, request.state.project_id, service))

    load.__name__ = f"service_for_{permission.name.lower()}"
    return Depends(load)


def predict_client(request: Request) -> PredictClient:
    client: PredictClient = request.app.state.predict_client
    return client


PredictClientDep = Annotated[PredictClient, Depends(predict_client)]
