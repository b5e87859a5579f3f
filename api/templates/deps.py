"""What a route on one template is handed: the caller authorised, the project and the template loaded
once."""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from api.core.db import SessionDep
from api.core.security import Permission, Principal, requires
from api.models import Project, Template
from api.projects.deps import checked_project
from api.templates.service import get_template


@dataclass(frozen=True, slots=True)
class TemplateTarget:
    """Who acts on which template, in which project."""

    principal: Principal
    project: Project
    template: Template


def template_for(permission: Permission) -> Any:
    """The dependency of a route under `/projects/{project}/templates/{template}` that takes no body:
    `Annotated[TemplateTarget, template_for(...)]`.

    The permission is checked first, by `requires` (401, then 404 `project_not_found`, then 403); then
    the template is read (404 `template_not_found`). A route with a body does not use it: a dependency
    runs before the body is validated, so a missing template would answer 404 where a bad body now
    answers 422 first.
    """
    authorised = requires(permission)

    async def load(
        project: str,
        template: str,
        request: Request,
        session: SessionDep,
        principal: Annotated[Principal, authorised],
    ) -> TemplateTarget:
        found = await checked_project(session, request, project)
        return TemplateTarget(principal, found, await get_template(session, found, template))

    load.__name__ = f"template_for_{permission.name.lower()}"
    return Depends(load)
