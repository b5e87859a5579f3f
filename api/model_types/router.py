from typing import Annotated

from fastapi import APIRouter, Response, status

from api.core.db import SessionDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission, Principal, requires
from api.model_types import service
from api.model_types.schemas import ModelTypeCreate, ModelTypeRead, ModelTypeUpdate

router = APIRouter(prefix="/model-types", tags=["model types"], responses=error_responses(401, 403))

Viewer = Annotated[Principal, requires(Permission.MODEL_TYPES_VIEW)]
Admin = Annotated[Principal, requires(Permission.MODEL_TYPES_ADMIN)]


@router.post(
    "",
    operation_id="model_types_create",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 422),
)
async def create_model_type(data: ModelTypeCreate, session: SessionDep, _: Admin) -> ModelTypeRead:
    return ModelTypeRead.model_validate(await service.create_model_type(session, data))


@router.get("", operation_id="model_types_list")
async def list_model_types(session: SessionDep, _: Viewer, page: PageDep) -> Page[ModelTypeRead]:
    return await service.list_model_types(session, page)


@router.get("/{model_type}", operation_id="model_types_get", responses=error_responses(404))
async def get_model_type(model_type: str, session: SessionDep, _: Viewer) -> ModelTypeRead:
    return ModelTypeRead.model_validate(await service.get_model_type(session, model_type))


@router.patch("/{model_type}", operation_id="model_types_update", responses=error_responses(404, 422))
async def update_model_type(
    model_type: str, data: ModelTypeUpdate, session: SessionDep, _: Admin
) -> ModelTypeRead:
    return ModelTypeRead.model_validate(await service.update_model_type(session, model_type, data))


@router.delete(
    "/{model_type}",
    operation_id="model_types_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
)
async def delete_model_type(model_type: str, session: SessionDep, _: Admin) -> Response:
    await service.delete_model_type(session, model_type)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
