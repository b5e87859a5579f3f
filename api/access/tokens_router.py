"""`/auth/...` (log in and out, who am I) and API tokens: `/tokens` (your own) and `/users/{user}/tokens`
(administrators, for bots). A token is shown once, when it is made; after that only its name, scope,
expiry and last use."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response, status

from api.access import login as access_login
from api.access import reads, service
from api.access.login_gate import LoginGateDep
from api.access.reads import token_read, user_read
from api.access.schemas import (
    LoginReply,
    LoginRequest,
    MeRead,
    PasswordChange,
    TokenCreate,
    TokenRead,
    TokenWithSecret,
)
from api.core.db import SessionDep
from api.core.deps import TokenKeyDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import CurrentUser, OwnTokensManager, Permission, Principal, requires, user_principal
from api.models import User

auth_router = APIRouter(prefix="/auth", tags=["auth"])
tokens_router = APIRouter(tags=["tokens"], responses=error_responses(401, 403))
_SELF = "Any signed-in user, for themselves."


@auth_router.post("/login", operation_id="auth_login", responses=error_responses(401, 422, 429))
async def login(
    data: LoginRequest, request: Request, session: SessionDep, key: TokenKeyDep, gate: LoginGateDep
) -> LoginReply:
    """Public. A username and password give a token good for 8 hours (401 `invalid_credentials` for a
    wrong name or password, a disabled user, or a bot, alike). After 10 failures for one name within 15
    minutes that name is refused until the 15 minutes end (429 `too_many_login_attempts`, with
    `Retry-After`). One address or one name trying too fast is refused for a while (429
    `login_rate_limited`, with `Retry-After`)."""
    address = request.client.host if request.client is not None else "unknown"
    user, row, token = await access_login.login(session, key, gate, address, data.username, data.password)
    assert row.expires_at is not None
    return LoginReply(token=token, expires_at=row.expires_at, user=user_read(user))


@auth_router.post(
    "/logout",
    operation_id="auth_logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403),
)
async def logout(session: SessionDep, principal: CurrentUser) -> Response:
    """Revoke the token this request carries. Any signed-in user."""
    if principal.token_id is not None:
        await service.revoke_token(session, principal.id, principal.token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@auth_router.get("/me", operation_id="auth_me", responses=error_responses(401, 403))
async def me(session: SessionDep, principal: CurrentUser) -> MeRead:
    """Who the token belongs to, what it may do, and the role held in each project. Any signed-in user."""
    return await reads.me(session, principal)


@auth_router.post(
    "/password",
    operation_id="auth_password_change",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 422),
)
async def change_password(data: PasswordChange, session: SessionDep, principal: CurrentUser) -> Response:
    """Change your own password; your other login sessions end. Any signed-in user."""
    await service.change_password(session, principal, data.current_password, data.new_password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _create(
    session: SessionDep, key: bytes, owner: User, data: TokenCreate, by: Principal
) -> TokenWithSecret:
    row, token = await service.create_token(
        session, key, owner, data, by, await user_principal(session, owner)
    )
    return TokenWithSecret(**token_read(row, owner.name).model_dump(), token=token)


@tokens_router.post(
    "/tokens",
    operation_id="tokens_create",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(422),
)
async def create_own_token(
    data: TokenCreate, session: SessionDep, key: TokenKeyDep, principal: OwnTokensManager
) -> TokenWithSecret:
    """An API token for yourself, optionally expiring and narrowed to some of your permissions; never
    beyond the expiry nor the narrowing of the token that makes it (a later `expires_at` is capped at
    its expiry). The answer holds the token, shown this once. Any signed-in user, for themselves; a
    narrowed token only if it names `tokens.manage`."""
    return await _create(session, key, await reads.own_user(session, principal), data, principal)


@tokens_router.get("/tokens", operation_id="tokens_list")
async def list_own_tokens(session: SessionDep, principal: OwnTokensManager, page: PageDep) -> Page[TokenRead]:
    """Your tokens, revoked and expired ones too. Any signed-in user, for themselves; a narrowed token
    only if it names `tokens.manage`."""
    return await reads.list_tokens(session, await reads.own_user(session, principal), page)


@tokens_router.get("/tokens/{token_id}", operation_id="tokens_get", responses=error_responses(404))
async def get_own_token(token_id: uuid.UUID, session: SessionDep, principal: OwnTokensManager) -> TokenRead:
    """Any signed-in user, for themselves; a narrowed token only if it names `tokens.manage`."""
    return token_read(await service.get_token(session, principal.id, token_id), principal.name)


@tokens_router.delete(
    "/tokens/{token_id}",
    operation_id="tokens_revoke",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
)
async def revoke_own_token(token_id: uuid.UUID, session: SessionDep, principal: OwnTokensManager) -> Response:
    """Revoke one of your tokens: it stops working at once. Any signed-in user, for themselves; a
    narrowed token only if it names `tokens.manage` (`/auth/logout` ends the token itself)."""
    await service.revoke_token(session, principal.id, token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@tokens_router.post(
    "/users/{user}/tokens",
    operation_id="users_tokens_create",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(404, 422),
)
async def create_user_token(
    user: str,
    data: TokenCreate,
    session: SessionDep,
    key: TokenKeyDep,
    principal: Annotated[Principal, requires(Permission.USERS_ADMIN)],
) -> TokenWithSecret:
    """A token for another user, typically a bot: the answer holds it, shown this once."""
    return await _create(session, key, await service.get_user(session, user), data, principal)


@tokens_router.get("/users/{user}/tokens", operation_id="users_tokens_list", responses=error_responses(404))
async def list_user_tokens(
    user: str, session: SessionDep, _: Annotated[Principal, requires(Permission.USERS_VIEW)], page: PageDep
) -> Page[TokenRead]:
    return await reads.list_tokens(session, await service.get_user(session, user), page)


@tokens_router.delete(
    "/users/{user}/tokens/{token_id}",
    operation_id="users_tokens_revoke",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
)
async def revoke_user_token(
    user: str,
    token_id: uuid.UUID,
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.USERS_ADMIN)],
) -> Response:
    await service.revoke_token(session, (await service.get_user(session, user)).id, token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
