"""Training templates: name, model type, pipeline, base package, datasets, parameters and limits.

References to packages and datasets are stored by name now; the packages issue resolves them at start.
"""

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import Conflict, InvalidInput
from api.core.repository import add_named, get_by_name
from api.core.schemas import Page, PageParams, paged
from api.models import ModelType, Process, Project, Template
from api.models.base import utcnow
from api.templates.references import apply_references
from api.templates.schemas import TemplateCreate, TemplateRead, TemplateUpdate

_VERSION_FIELDS = ("dataset_version", "test_dataset_version")


def _store(field: str, value: Any) -> Any:
    if field in _VERSION_FIELDS and value is not None:
        return str(value)  # an integer or "latest", kept as text
    return value


def _load_version(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


async def get_template(session: AsyncSession, project: Project, name: str) -> Template:
    return await get_by_name(session, Template, name, "template", project_id=project.id)


async def create_template(session: AsyncSession, project: Project, data: TemplateCreate) -> Template:
    model_type = await get_by_name(session, ModelType, data.model_type, "model_type")
    fields = data.model_dump(exclude={"model_type"})
    if fields["dataset"] is not None and fields["dataset_version"] is None:
        fields["dataset_version"] = "latest"
    if fields["test_dataset"] is not None and fields["test_dataset_version"] is None:
        fields["test_dataset_version"] = "latest"
    template = Template(
        project_id=project.id,
        model_type_id=model_type.id,
        **{field: _store(field, value) for field, value in fields.items()},
    )
    await apply_references(session, project, template)
    return await add_named(session, template, "template")


async def update_template(
    session: AsyncSession, project: Project, name: str, data: TemplateUpdate
) -> Template:
    template = await get_template(session, project, name)
    changes = data.model_dump(include=data.model_fields_set)
    if "model_type" in changes:
        if changes["model_type"] is None:
            raise InvalidInput("a template needs a model type", code="field_required", field="model_type")
        template.model_type_id = (
            await get_by_name(session, ModelType, changes.pop("model_type"), "model_type")
        ).id
    required = {
        "name",
        "description",
        "pipeline_type",
        "augmentation",
        "parameters",
        "max_duration_seconds",
        "save_training_data",
        "gpus",
        "processes",
    }
    for field, value in changes.items():
        if value is None and field in required:
            raise InvalidInput(f"{field} cannot be cleared", code="field_required", field=field)
        setattr(template, field, _store(field, value))
    for dataset, version, path in (
        ("dataset", "dataset_version", "dataset_path"),
        ("test_dataset", "test_dataset_version", "test_dataset_path"),
    ):
        if dataset not in changes:
            continue
        if changes[dataset] is None:  # no dataset: nothing of it is left to pin or to pick from
            setattr(template, version, None)
            setattr(template, path, None)
        elif getattr(template, version) is None:
            setattr(template, version, "latest")  # as at create
    await apply_references(session, project, template)
    template.updated_at = utcnow()
    if "name" in changes:
        session.add(template)
        try:
            await session.flush()
        except IntegrityError:
            raise Conflict(
                f"a template named {changes['name']!r} exists already", code="template_exists", field="name"
            ) from None
    await session.flush()
    return template


async def delete_template(session: AsyncSession, template: Template) -> None:
    """Refused while a process is made from it."""
    count = await session.scalar(select(func.count()).where(Process.template_id == template.id))
    if count:
        raise Conflict(
            f"template {template.name!r} has {count} processes: delete them first", code="template_in_use"
        )
    await session.delete(template)
    await session.flush()


async def template_read(session: AsyncSession, project: Project, template: Template) -> TemplateRead:
    model_type = await session.get(ModelType, template.model_type_id)
    assert model_type is not None
    return read_from_row(project, template, model_type.name)


async def list_templates(
    session: AsyncSession, project: Project, page: PageParams, model_type: str | None
) -> Page[TemplateRead]:
    """A project's templates, or those of one model type."""
    statement = (
        select(Template, ModelType.name)
        .join(ModelType, ModelType.id == Template.model_type_id)
        .where(Template.project_id == project.id)
    )
    if model_type is not None:
        statement = statement.where(ModelType.name == model_type)

    def item(template: Template, type_name: str) -> TemplateRead:
        return read_from_row(project, template, type_name)

    return await paged(session, statement, Template.id, page, item)


def read_from_row(project: Project, template: Template, model_type: str) -> TemplateRead:
    columns = {column.key: getattr(template, column.key) for column in Template.__table__.columns}
    for field in _VERSION_FIELDS:
        columns[field] = _load_version(columns[field])
    return TemplateRead.model_validate({**columns, "project": project.name, "model_type": model_type})
