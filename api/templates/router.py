from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from api.core.db import SessionDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission, Principal, requires
from api.projects.deps import InProject, in_project
from api.projects.service import get_project
from api.templates import service
from api.templates.deps import TemplateTarget, template_for
from api.templates.schemas import TemplateCreate, TemplateRead, TemplateUpdate

router = APIRouter(
    prefix="/projects/{project}/templates", tags=["templates"], responses=error_responses(401, 403, 404)
)


@router.post(
    "",
    operation_id="templates_create",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 422),
)
async def create_template(
    data: TemplateCreate,
    target: Annotated[InProject, in_project(Permission.TEMPLATES_CREATE)],
    session: SessionDep,
) -> TemplateRead:
    template = await service.create_template(session, target.project, data)
    return await service.template_read(session, target.project, template)


@router.get("", operation_id="templates_list")
async def list_templates(
    target: Annotated[InProject, in_project(Permission.TEMPLATES_VIEW)],
    session: SessionDep,
    page: PageDep,
    model_type: Annotated[str | None, Query(description="Only templates of this model type.")] = None,
) -> Page[TemplateRead]:
    return await service.list_templates(session, target.project, page, model_type)


@router.get("/{template}", operation_id="templates_get")
async def get_template(
    target: Annotated[TemplateTarget, template_for(Permission.TEMPLATES_VIEW)], session: SessionDep
) -> TemplateRead:
    return await service.template_read(session, target.project, target.template)


@router.patch("/{template}", operation_id="templates_update", responses=error_responses(409, 422))
async def update_template(
    project: str,
    template: str,
    data: TemplateUpdate,
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.TEMPLATES_EDIT)],
) -> TemplateRead:
    """Change a template. Runs already started keep the settings they started with."""
    # No `template_for`: it would read the template before the body is validated, so a bad body
    # naming a missing template would answer 404 where it answers 422.
    found = await get_project(session, project)
    updated = await service.update_template(session, found, template, data)
    return await service.template_read(session, found, updated)


@router.delete(
    "/{template}",
    operation_id="templates_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(409),
)
async def delete_template(
    target: Annotated[TemplateTarget, template_for(Permission.TEMPLATES_DELETE)], session: SessionDep
) -> Response:
    await service.delete_template(session, target.template)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
