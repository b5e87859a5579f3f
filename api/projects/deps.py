"""What a route under `/projects/{project}` is handed: the project, authorised and loaded once.

Other domains build their own dependencies (a process, a run, a package) on `in_project`, so that
every route of a project checks the caller the one way `requires` does.
"""

import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from api.core.db import SessionDep
from api.core.errors import NotFound
from api.core.security import Permission, Principal, requires
from api.models import Project


@dataclass(frozen=True, slots=True)
class InProject:
    """Who acts, and the project they act in, which they may see and hold the route's permission in."""

    principal: Principal
    project: Project


def in_project(permission: Permission) -> Any:
    """The dependency of a route under `/projects/{project}`: `Annotated[InProject, in_project(...)]`.

    The permission is checked by `requires` (so in the same order: 401, then 404 `project_not_found`
    for a project the caller cannot see, then 403), and the OpenAPI document names it; the project is
    then read by the id that check found.
    """
    authorised = requires(permission)

    async def load(
        project: str, request: Request, session: SessionDep, principal: Annotated[Principal, authorised]
    ) -> InProject:
        return InProject(principal, await checked_project(session, request, project))

    load.__name__ = f"in_project_{permission.name.lower()}"
    return Depends(load)


async def checked_project(session: SessionDep, request: Request, name: str) -> Project:
    """The project `requires` checked the caller against (its id is on `request.state`)."""
    found = await session.get(Project, request.state.project_id)
    if found is None:  # deleted by a request that committed since the check
        name = unicodedata.normalize("NFC", name)
        raise NotFound(f"no project named {name!r}", code="project_not_found")
    return found
