"""What every console page shares: the project switcher, error pages, a form's field errors, and the
dependencies that load a page's project (or check an administrator) once, with the API's own rules.

A page module under `api/console/views/` declares `ProjectPage` (or `AdminPage`) in its route and gets
the person, the project and the switcher loaded and checked; it implements no permission rule of its
own: `Principal.can` decides, as the API's `requires` does.
"""

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import ValidationError
from starlette.responses import HTMLResponse

from api.console.pages import PageAnswer, render, translator
from api.console.session import ConsoleSession, SignedIn, SignedInChanging
from api.core.db import SessionDep
from api.core.errors import NotFound
from api.core.schemas import MAX_PAGE_SIZE, PageParams
from api.core.security import Permission, Principal, visible_project_id
from api.models import Project
from api.projects import service as projects
from api.projects.schemas import ProjectRead


async def switcher(session: SessionDep, principal: Principal) -> list[ProjectRead]:
    """The projects the header's switcher offers: those the person sees, as the API lists them."""
    if not principal.can(Permission.PROJECTS_VIEW):
        return []
    return (await projects.list_projects(session, principal, PageParams(limit=MAX_PAGE_SIZE))).items


def error_page(
    request: Request, signed_in: ConsoleSession | None, status_code: int, message: str, **context: Any
) -> HTMLResponse:
    """A page that says what went wrong (`message` is a catalog key), with the given status."""
    t = translator(request).t
    values = {"title": t(f"error.{status_code}"), "message": t(message), **context}
    return render(request, "error.html", values, signed_in=signed_in, status_code=status_code)


def refuse(
    request: Request, signed_in: ConsoleSession | None, status_code: int, message: str, **context: Any
) -> PageAnswer:
    """`error_page` to raise: the request's unit of work rolls back whatever it had begun."""
    return PageAnswer(error_page(request, signed_in, status_code, message, **context))


def field_errors(error: ValidationError) -> dict[str, str]:
    """The API's own messages for each field (its name rules say what is wrong in their words)."""
    found: dict[str, str] = {}
    for detail in error.errors():
        field_name = str(detail["loc"][0]) if detail["loc"] else "name"
        found.setdefault(field_name, str(detail["msg"]).removeprefix("Value error, "))
    return found


@dataclass
class Signed:
    """A page's person, and the projects the header's switcher offers them."""

    signed_in: ConsoleSession
    switcher: list[ProjectRead]

    @property
    def principal(self) -> Principal:
        return self.signed_in.principal

    def can(self, permission: Permission) -> bool:
        """Held in at least one project, or by an administrator: the API's rule outside a project."""
        return self.principal.can(permission)

    def context(self, **values: Any) -> dict[str, Any]:
        """The values every page's template gets, plus the page's own."""
        return {"switcher": self.switcher, **values}


@dataclass
class InProject(Signed):
    """A project page's person and project, loaded and checked once."""

    project: Project

    @property
    def project_id(self) -> uuid.UUID:
        return self.project.id

    def can(self, permission: Permission) -> bool:
        return self.principal.can(permission, self.project.id)

    def context(self, **values: Any) -> dict[str, Any]:
        return {"project": self.project, "switcher": self.switcher, **values}


async def _load_project(
    request: Request, session: SessionDep, signed_in: ConsoleSession, project: str
) -> InProject:
    principal = signed_in.principal
    try:
        project_id = await visible_project_id(session, principal, project)
    except NotFound:
        raise refuse(request, signed_in, 404, "error.no_project") from None
    if not principal.can(Permission.PROJECTS_VIEW, project_id):
        raise refuse(request, signed_in, 403, "error.forbidden")
    found = await projects.get_project(session, project)
    return InProject(signed_in, await switcher(session, principal), found)


async def _project_page(
    request: Request, session: SessionDep, signed_in: SignedIn, project: str
) -> InProject:
    return await _load_project(request, session, signed_in, project)


async def _project_change(
    request: Request, session: SessionDep, signed_in: SignedInChanging, project: str
) -> InProject:
    return await _load_project(request, session, signed_in, project)


async def _signed_page(session: SessionDep, signed_in: SignedIn) -> Signed:
    return Signed(signed_in, await switcher(session, signed_in.principal))


async def _signed_change(session: SessionDep, signed_in: SignedInChanging) -> Signed:
    return Signed(signed_in, await switcher(session, signed_in.principal))


# A page under `/ui/projects/{project}/`: signed in, the project visible and viewable (404, 403 pages).
ProjectPage = Annotated[InProject, Depends(_project_page)]
# The same, for a state-changing request: its CSRF token checked too.
ProjectChange = Annotated[InProject, Depends(_project_change)]
# A page outside any project (the administrators' Machines and People): signed in; `require` the rest.
SignedPage = Annotated[Signed, Depends(_signed_page)]
SignedChange = Annotated[Signed, Depends(_signed_change)]


def require(request: Request, where: Signed, permission: Permission) -> None:
    """A 403 page unless the person holds `permission` (in the page's project, for a project page): the
    check the API's `requires` makes, for a page or a form posted to the console. A page calls it before
    it reads anything; a form, before it changes anything."""
    if not where.can(permission):
        raise refuse(request, where.signed_in, 403, "error.forbidden")
