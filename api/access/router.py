"""`/users`, `/roles`, `/permissions`: people, bots and the named sets of permissions they hold."""

from typing import Annotated

from fastapi import APIRouter, Response, status

from api.access import reads, service
from api.access.catalogue import DESCRIPTIONS, GLOBAL_PERMISSIONS, TOKEN_PERMISSIONS
from api.access.reads import user_read
from api.access.schemas import (
    PermissionRead,
    RoleCreate,
    RoleRead,
    RoleUpdate,
    UserCreate,
    UserRead,
    UserUpdate,
)
from api.core.db import SessionDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import CurrentUser, Permission, Principal, requires

users_router = APIRouter(prefix="/users", tags=["users"], responses=error_responses(401, 403))
roles_router = APIRouter(tags=["roles"], responses=error_responses(401, 403))

Viewer = Annotated[Principal, requires(Permission.USERS_VIEW)]
Admin = Annotated[Principal, requires(Permission.USERS_ADMIN)]


@users_router.post(
    "", operation_id="users_create", status_code=status.HTTP_201_CREATED, responses=error_responses(409, 422)
)
async def create_user(data: UserCreate, session: SessionDep, principal: Admin) -> UserRead:
    """A person (with a password, to log in) or a bot (without: an administrator gives it API tokens)."""
    return user_read(await service.create_user(session, data, principal))


@users_router.get("", operation_id="users_list")
async def list_users(session: SessionDep, _: Viewer, page: PageDep) -> Page[UserRead]:
    return await reads.list_users(session, page)


@users_router.get("/{user}", operation_id="users_get", responses=error_responses(404))
async def get_user(user: str, session: SessionDep, _: Viewer) -> UserRead:
    return user_read(await service.get_user(session, user))


@users_router.patch("/{user}", operation_id="users_update", responses=error_responses(404, 409, 422))
async def update_user(user: str, data: UserUpdate, session: SessionDep, principal: Admin) -> UserRead:
    """Disable (its tokens stop at once), set a password, make or unmake an administrator (409
    `last_administrator` for the last enabled one)."""
    return user_read(await service.update_user(session, user, data, principal))


@users_router.delete(
    "/{user}",
    operation_id="users_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
)
async def delete_user(user: str, session: SessionDep, principal: Admin) -> Response:
    await service.delete_user(session, user, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@roles_router.get("/permissions", operation_id="permissions_list")
async def list_permissions(_: CurrentUser) -> list[PermissionRead]:
    """The permission catalogue. Any signed-in user."""
    return [
        PermissionRead(
            name=p.value,
            description=DESCRIPTIONS[p],
            scope="token" if p in TOKEN_PERMISSIONS else "global" if p in GLOBAL_PERMISSIONS else "project",
        )
        for p in Permission
    ]


@roles_router.post(
    "/roles",
    operation_id="roles_create",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 422),
)
async def create_role(data: RoleCreate, session: SessionDep, _: Admin) -> RoleRead:
    """A custom role: a name and a set of permissions (422 `unknown_permission` for a name not in the
    catalogue)."""
    return RoleRead.model_validate(await service.create_role(session, data))


@roles_router.get("/roles", operation_id="roles_list")
async def list_roles(session: SessionDep, _: Viewer, page: PageDep) -> Page[RoleRead]:
    return await reads.list_roles(session, page)


@roles_router.get("/roles/{role}", operation_id="roles_get", responses=error_responses(404))
async def get_role(role: str, session: SessionDep, _: Viewer) -> RoleRead:
    return RoleRead.model_validate(await service.get_role(session, role))


@roles_router.patch("/roles/{role}", operation_id="roles_update", responses=error_responses(404, 409, 422))
async def update_role(role: str, data: RoleUpdate, session: SessionDep, _: Admin) -> RoleRead:
    """Change a custom role; its members hold the new permissions from their next request."""
    return RoleRead.model_validate(await service.update_role(session, role, data))


@roles_router.delete(
    "/roles/{role}",
    operation_id="roles_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
)
async def delete_role(role: str, session: SessionDep, _: Admin) -> Response:
    """Refused for built-in roles (`role_builtin`) and while anyone holds it (`role_in_use`)."""
    await service.delete_role(session, role)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
