"""`GET /base-packages`: the built-in base packages every project may name in a template
(docs/base-packages.md). An installation's list, like the model types: read with `model_types.view`."""

from typing import Annotated

from fastapi import APIRouter, Query

from api.base_packages import service
from api.base_packages.schemas import BasePackageRead
from api.core.db import SessionDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission, Principal, requires

router = APIRouter(prefix="/base-packages", tags=["packages"], responses=error_responses(401, 403))


@router.get("", operation_id="base_packages_list")
async def list_base_packages(
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.MODEL_TYPES_VIEW)],
    page: PageDep,
    model_type: Annotated[str | None, Query(max_length=128, description="Only those for this type.")] = None,
) -> Page[BasePackageRead]:
    """The built-in base packages (installed by `trainyard-api migrate`), each with its versions, the
    model types it is for and its latest version's declared parameters."""
    return await service.list_catalogue(session, page, model_type)
