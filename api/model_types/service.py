"""Model types: the administrators' list of kinds of task (Primo's "Type")."""

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import Conflict
from api.core.repository import add_named, get_by_name
from api.core.schemas import Page, PageParams, paged
from api.model_types.schemas import ModelTypeCreate, ModelTypeRead, ModelTypeUpdate
from api.models import ModelType, Template


async def get_model_type(session: AsyncSession, name: str) -> ModelType:
    return await get_by_name(session, ModelType, name, "model_type")


async def create_model_type(session: AsyncSession, data: ModelTypeCreate) -> ModelType:
    return await add_named(session, ModelType(name=data.name, description=data.description), "model_type")


async def update_model_type(session: AsyncSession, name: str, data: ModelTypeUpdate) -> ModelType:
    model_type = await get_model_type(session, name)
    if data.description is not None:
        model_type.description = data.description
    await session.flush()
    return model_type


async def delete_model_type(session: AsyncSession, name: str) -> None:
    model_type = await get_model_type(session, name)
    used = await session.scalar(select(func.count()).where(Template.model_type_id == model_type.id))
    if used:
        raise Conflict(f"model type {name!r} is used by {used} templates", code="model_type_in_use")
    await session.delete(model_type)
    await session.flush()


async def list_model_types(session: AsyncSession, page: PageParams) -> Page[ModelTypeRead]:
    return await paged(session, select(ModelType), ModelType.id, page, ModelTypeRead.model_validate)
