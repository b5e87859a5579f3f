"""Projects: the scope of templates, processes, packages and datasets."""

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import Conflict
from api.core.repository import add_named, get_by_name
from api.core.schemas import Page, PageParams, paged
from api.core.security import Principal
from api.models import Dataset, Package, Process, Project, Service, Template
from api.models.base import utcnow
from api.projects.schemas import ProjectCreate, ProjectRead, ProjectUpdate

TEMPLATE_COUNT = (
    select(func.count()).where(Template.project_id == Project.id).correlate(Project).scalar_subquery()
)


async def get_project(session: AsyncSession, name: str) -> Project:
    return await get_by_name(session, Project, name, "project")


async def create_project(session: AsyncSession, data: ProjectCreate) -> Project:
    return await add_named(session, Project(name=data.name, description=data.description), "project")


async def update_project(session: AsyncSession, name: str, data: ProjectUpdate) -> Project:
    project = await get_project(session, name)
    if data.description is not None:
        project.description = data.description
    project.updated_at = utcnow()
    await session.flush()
    return project


async def delete_project(session: AsyncSession, name: str) -> None:
    """Refused while the project holds anything: deleting a project must never delete training history."""
    project = await get_project(session, name)
    held = (
        (Template, "templates"),
        (Process, "processes"),
        (Service, "services"),
        (Package, "packages"),
        (Dataset, "datasets"),
    )
    for model, what in held:
        count = await session.scalar(select(func.count()).where(model.project_id == project.id))
        if count:
            raise Conflict(
                f"project {name!r} still has {count} {what}: delete them first", code="project_not_empty"
            )
    await session.delete(project)
    await session.flush()


async def template_count(session: AsyncSession, project: Project) -> int:
    return int(await session.scalar(select(func.count()).where(Template.project_id == project.id)) or 0)


async def list_projects(session: AsyncSession, principal: Principal, page: PageParams) -> Page[ProjectRead]:
    """The projects `principal` can see, each with its number of templates."""
    statement = select(Project, TEMPLATE_COUNT)
    visible = principal.visible_projects()
    if visible is not None:
        statement = statement.where(Project.id.in_(visible))
    return await paged(session, statement, Project.id, page, project_read)


def project_read(project: Project, templates: int) -> ProjectRead:
    return ProjectRead.model_validate(project).model_copy(update={"template_count": templates})
