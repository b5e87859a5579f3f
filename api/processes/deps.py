"""What a route on one process is handed: the process, with the caller authorised and the rows its
actions and its answer read, loaded once."""

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from api.core.db import SessionDep
from api.core.security import Permission, Principal, requires
from api.processes.service import LoadedProcess, load_process
from api.runs.lifecycle import Actor, actor_of
from shared.enums import ActorKind


@dataclass(frozen=True, slots=True)
class ProcessTarget:
    """Who acts on which process (with its project, template and machine)."""

    principal: Principal
    loaded: LoadedProcess

    @property
    def actor(self) -> Actor:
        return actor_of(ActorKind.USER, self.principal.id, self.principal.name)


def process_for(permission: Permission) -> Any:
    """The dependency of a route under `/projects/{project}/processes/{process_id}`:
    `Annotated[ProcessTarget, process_for(...)]`.

    The permission is checked first, by `requires` (401, then 404 `project_not_found`, then 403), and
    an id that is not one is a 422 only after it, as when the route declared both; then the process is
    read with its rows in one statement (404 `process_not_found`).
    """
    authorised = requires(permission)

    async def load(
        project: str,
        process_id: uuid.UUID,
        request: Request,
        session: SessionDep,
        principal: Annotated[Principal, authorised],
    ) -> ProcessTarget:
        loaded = await load_process(session, request.state.project_id, project, process_id)
        return ProcessTarget(principal, loaded)

    load.__name__ = f"process_for_{permission.name.lower()}"
    return Depends(load)
