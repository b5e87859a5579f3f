"""What a route on one run is handed: the run, with the caller authorised, loaded once."""

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from api.core.db import SessionDep
from api.core.security import Permission, Principal, requires
from api.models import Project, Run
from api.runs.service import load_run


@dataclass(frozen=True, slots=True)
class RunTarget:
    """Who reads which run, in which project, on which machine (by name)."""

    principal: Principal
    run: Run
    project: Project
    machine_name: str


def run_for(permission: Permission) -> Any:
    """The dependency of a route under `/projects/{project}/runs/{run_id}`:
    `Annotated[RunTarget, run_for(...)]`.

    The permission is checked first, by `requires` (401, then 404 `project_not_found`, then 403), and
    an id that is not one is a 422 only after it, as when the route declared both; then the run is
    read with its project and machine in one statement (404 `run_not_found`).
    """
    authorised = requires(permission)

    async def load(
        project: str,
        run_id: uuid.UUID,
        request: Request,
        session: SessionDep,
        principal: Annotated[Principal, authorised],
    ) -> RunTarget:
        run, found, machine_name = await load_run(session, request.state.project_id, project, run_id)
        return RunTarget(principal, run, found, machine_name)

    load.__name__ = f"run_for_{permission.name.lower()}"
    return Depends(load)
