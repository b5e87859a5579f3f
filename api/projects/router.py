from typing import Annotated

from fastapi import APIRouter, Response, status

from api.core.db import SessionDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission, Principal, requires
from api.projects import service
from api.projects.membership import add_creator
from api.projects.schemas import ProjectCreate, ProjectRead, ProjectUpdate

router = APIRouter(prefix="/projects", tags=["projects"], responses=error_responses(401, 403))

Viewer = Annotated[Principal, requires(Permission.PROJECTS_VIEW)]
Admin = Annotated[Principal, requires(Permission.PROJECTS_ADMIN)]


@router.post(
    "",
    operation_id="projects_create",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 422),
)
async def create_project(data: ProjectCreate, session: SessionDep, principal: Admin) -> ProjectRead:
    """Administrators, and whoever is a project's admin, create projects; a creator who is not an
    administrator becomes the new project's `project-admin` (else they could not see it)."""
    project = await service.create_project(session, data)
    if not principal.is_admin:
        await add_creator(session, project.id, principal.id)
    return ProjectRead.model_validate(project)


@router.get("", operation_id="projects_list")
async def list_projects(session: SessionDep, principal: Viewer, page: PageDep) -> Page[ProjectRead]:
    """The projects the caller can see."""
    return await service.list_projects(session, principal, page)


@router.get("/{project}", operation_id="projects_get", responses=error_responses(404))
async def get_project(project: str, session: SessionDep, _: Viewer) -> ProjectRead:
    found = await service.get_project(session, project)
    count = await service.template_count(session, found)
    return ProjectRead.model_validate(found).model_copy(update={"template_count": count})


@router.patch("/{project}", operation_id="projects_update", responses=error_responses(404, 422))
async def update_project(project: str, data: ProjectUpdate, session: SessionDep, _: Admin) -> ProjectRead:
    updated = await service.update_project(session, project, data)
    count = await service.template_count(session, updated)
    return ProjectRead.model_validate(updated).model_copy(update={"template_count": count})


@router.delete(
    "/{project}",
    operation_id="projects_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
)
async def delete_project(project: str, session: SessionDep, _: Admin) -> Response:
    await service.delete_project(session, project)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
