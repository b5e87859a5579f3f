from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import select

from api.core.db import SessionDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep, fetch_page
from api.core.security import Permission, Principal, requires
from api.models import ModelType, Template
from api.projects.service import get_project
from api.templates import service
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
    project: str,
    data: TemplateCreate,
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.TEMPLATES_CREATE)],
) -> TemplateRead:
    found = await get_project(session, project)
    template = await service.create_template(session, found, data)
    return await service.template_read(session, found, template)


@router.get("", operation_id="templates_list")
async def list_templates(
    project: str,
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.TEMPLATES_VIEW)],
    page: PageDep,
    model_type: Annotated[str | None, Query(description="Only templates of this model type.")] = None,
) -> Page[TemplateRead]:
    found = await get_project(session, project)
    statement = (
        select(Template, ModelType.name)
        .join(ModelType, ModelType.id == Template.model_type_id)
        .where(Template.project_id == found.id)
    )
    if model_type is not None:
        statement = statement.where(ModelType.name == model_type)
    rows, cursor = await fetch_page(session, statement, Template.id, page)
    return Page(items=[service.read_from_row(found, t, m) for t, m in rows], next_cursor=cursor)


@router.get("/{template}", operation_id="templates_get")
async def get_template(
    project: str,
    template: str,
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.TEMPLATES_VIEW)],
) -> TemplateRead:
    found = await get_project(session, project)
    return await service.template_read(session, found, await service.get_template(session, found, template))


@router.patch("/{template}", operation_id="templates_update", responses=error_responses(409, 422))
async def update_template(
    project: str,
    template: str,
    data: TemplateUpdate,
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.TEMPLATES_EDIT)],
) -> TemplateRead:
    """Change a template. Runs already started keep the settings they started with."""
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
    project: str,
    template: str,
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.TEMPLATES_DELETE)],
) -> Response:
    found = await get_project(session, project)
    await service.delete_template(session, found, template)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
