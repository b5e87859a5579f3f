"""People, roles, memberships and tokens: the rules. Routers check the permission; this checks the rest.

Two rules keep access from growing by itself: a role is granted only by someone who holds every
permission in it (in that project), and a token is narrowed within what its owner, and the token that
made it, may do.
"""

import uuid
from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.access import passwords
from api.access.catalogue import TOKEN_PERMISSIONS, sorted_values

# The sweeper's, kept importable from here; logins live in api/access/login.py.
from api.access.login import forget_ended_login_failures as forget_ended_login_failures
from api.access.schemas import RoleCreate, RoleUpdate, TokenCreate, UserCreate, UserUpdate
from api.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from api.core.repository import add_named, get_by_name
from api.core.security import Permission, Principal, known_permissions, new_token, token_hmac
from api.models import ApiToken, ProjectMember, Role, User
from api.models.base import utcnow


def parse_permissions(values: Iterable[str], field: str = "permissions") -> frozenset[Permission]:
    values = list(values)
    unknown = sorted(set(values) - set(Permission._value2member_map_))
    if unknown:
        raise InvalidInput(
            f"unknown permission {unknown[0]!r}: GET /permissions lists them",
            code="unknown_permission",
            field=field,
        )
    return frozenset(Permission(v) for v in values)


# Users


async def get_user(session: AsyncSession, name: str) -> User:
    return await get_by_name(session, User, name, "user")


async def create_user(session: AsyncSession, data: UserCreate, by: Principal) -> User:
    if data.is_admin and not by.is_admin:
        raise Forbidden(
            "only an administrator makes administrators", code="permission_denied", field="is_admin"
        )
    password_hash = None if data.password is None else await passwords.hash_password(data.password)
    user = User(
        name=data.name,
        display_name=data.display_name,
        is_admin=data.is_admin,
        enabled=data.enabled,
        password_hash=password_hash,
    )
    return await add_named(session, user, "user")


async def _other_enabled_admins(session: AsyncSession, user: User) -> int:
    statement = select(func.count()).where(User.is_admin, User.enabled, User.id != user.id)
    return int(await session.scalar(statement) or 0)


async def _keep_an_administrator(session: AsyncSession, user: User) -> None:
    if user.is_admin and user.enabled and not await _other_enabled_admins(session, user):
        raise Conflict(
            f"{user.name!r} is the last enabled administrator: make another one first",
            code="last_administrator",
        )


async def update_user(session: AsyncSession, name: str, data: UserUpdate, by: Principal) -> User:
    user = await get_user(session, name)
    if data.is_admin is not None and data.is_admin != user.is_admin and not by.is_admin:
        raise Forbidden(
            "only an administrator makes administrators", code="permission_denied", field="is_admin"
        )
    if data.is_admin is False or data.enabled is False:
        await _keep_an_administrator(session, user)
    if data.display_name is not None:
        user.display_name = data.display_name
    if data.is_admin is not None:
        user.is_admin = data.is_admin
    if data.enabled is not None:
        user.enabled = data.enabled
    if data.password is not None:
        user.password_hash = await passwords.hash_password(data.password)
    # The user's row is written first: a login that verified the old password locks it before it
    # adds its token (api/access/login.py), so the revocation below sees that token or the login
    # sees the new password.
    await session.flush()
    revoke_all = data.revoke_tokens
    if revoke_all is None:  # by default, an administrator's reset of someone else's password
        revoke_all = data.password is not None and by.id != user.id
    if revoke_all:
        await revoke_tokens(session, user.id)
    elif data.password is not None:
        await revoke_tokens(session, user.id, kind="login")
    return user


async def delete_user(session: AsyncSession, name: str, by: Principal) -> None:
    """Their tokens and memberships go with them; the audit trail keeps their name."""
    user = await get_user(session, name)
    if user.is_admin and not by.is_admin:
        raise Forbidden("only an administrator deletes an administrator", code="permission_denied")
    await _keep_an_administrator(session, user)
    await session.delete(user)
    await session.flush()


async def change_password(session: AsyncSession, principal: Principal, current: str, new: str) -> None:
    user = await session.get_one(User, principal.id)
    if not await passwords.verify_password(user.password_hash, current):
        raise InvalidInput(
            "the current password is not right", code="invalid_credentials", field="current_password"
        )
    user.password_hash = await passwords.hash_password(new)
    await session.flush()
    await revoke_tokens(session, user.id, kind="login", keep=principal.token_id)


async def revoke_tokens(
    session: AsyncSession, user_id: uuid.UUID, kind: str | None = None, keep: uuid.UUID | None = None
) -> None:
    """End the user's tokens (of one kind, and all but `keep`) at once, by one UPDATE: a new password
    ends the sessions the old one opened, and an administrator's reset can end every token."""
    statement = update(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
    if kind is not None:
        statement = statement.where(ApiToken.kind == kind)
    if keep is not None:
        statement = statement.where(ApiToken.id != keep)
    await session.execute(
        statement.values(revoked_at=utcnow()), execution_options={"synchronize_session": False}
    )


# Roles


async def get_role(session: AsyncSession, name: str) -> Role:
    return await get_by_name(session, Role, name, "role")


async def create_role(session: AsyncSession, data: RoleCreate) -> Role:
    permissions = parse_permissions(data.permissions)
    role = Role(name=data.name, description=data.description, permissions=sorted_values(permissions))
    return await add_named(session, role, "role")


def _not_builtin(role: Role) -> None:
    if role.builtin:
        raise Conflict(f"{role.name!r} is a built-in role: make a role of your own", code="role_builtin")


async def update_role(session: AsyncSession, name: str, data: RoleUpdate) -> Role:
    """Every member holding the role gets its new permissions with their next request."""
    role = await get_role(session, name)
    _not_builtin(role)
    if data.permissions is not None:
        role.permissions = sorted_values(parse_permissions(data.permissions))
    if data.description is not None:
        role.description = data.description
    role.updated_at = utcnow()
    await session.flush()
    return role


async def delete_role(session: AsyncSession, name: str) -> None:
    role = await get_role(session, name)
    _not_builtin(role)
    held = await session.scalar(select(func.count()).where(ProjectMember.role_id == role.id))
    if held:
        raise Conflict(f"role {name!r} is held by {held} members: reassign them first", code="role_in_use")
    await session.delete(role)
    await session.flush()


# Memberships (role assignments per project)


def _grantable(principal: Principal, project_id: uuid.UUID, role: Role) -> None:
    missing = known_permissions(role.permissions) - principal.permissions_in(project_id)
    if missing:
        raise Forbidden(
            f"role {role.name!r} holds {sorted(p.value for p in missing)[0]!r}, which you do not hold here",
            code="role_not_grantable",
        )


async def _member(session: AsyncSession, project_id: uuid.UUID, user_id: uuid.UUID) -> ProjectMember | None:
    statement = select(ProjectMember).where(
        ProjectMember.project_id == project_id, ProjectMember.user_id == user_id
    )
    return await session.scalar(statement.with_for_update())


async def set_member(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID, user_name: str, role_name: str
) -> tuple[ProjectMember, User, Role]:
    user = await get_user(session, user_name)
    role = await get_role(session, role_name)
    _grantable(principal, project_id, role)
    member = await _member(session, project_id, user.id)
    if member is None:
        member = ProjectMember(project_id=project_id, user_id=user.id, role_id=role.id)
        session.add(member)
    else:
        _grantable(principal, project_id, await session.get_one(Role, member.role_id))
        member.role_id = role.id
    try:
        await session.flush()
    except IntegrityError:  # the same member added by two requests at once
        raise Conflict("the membership changed meanwhile: retry", code="concurrent_update") from None
    return member, user, role


async def remove_member(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID, user_name: str
) -> None:
    user = await get_user(session, user_name)
    member = await _member(session, project_id, user.id)
    if member is None:
        raise NotFound(f"{user_name!r} is not a member of this project", code="member_not_found")
    _grantable(principal, project_id, await session.get_one(Role, member.role_id))
    await session.delete(member)
    await session.flush()


# Tokens


async def create_token(
    session: AsyncSession,
    key: bytes,
    owner: User,
    data: TokenCreate,
    by: Principal,
    owner_principal: Principal,
) -> tuple[ApiToken, str]:
    """A token for `owner`, made by `by` (the owner, or an administrator for a bot). It never outlives
    nor out-permits the token that made it: its expiry is capped at the maker's, and a narrowed maker
    makes only tokens narrowed within its own narrowing."""
    now = utcnow()
    if data.expires_at is not None and data.expires_at <= now:
        raise InvalidInput("the expiry is in the past", code="expiry_in_past", field="expires_at")
    scope: frozenset[Permission] | None = None
    if data.permissions is not None:
        scope = parse_permissions(data.permissions)
        not_held = scope - owner_principal.permissions_in() - TOKEN_PERMISSIONS
        if not_held:
            raise InvalidInput(
                f"{owner.name!r} does not hold {sorted(p.value for p in not_held)[0]!r}",
                code="permission_not_held",
                field="permissions",
            )
    if by.scope is not None:
        if scope is not None and not scope <= by.scope:
            raise InvalidInput(
                "a narrowed token cannot make a token that may do more",
                code="permission_not_held",
                field="permissions",
            )
        scope = by.scope if scope is None else scope
    expires_at = data.expires_at
    if by.expires_at is not None and (expires_at is None or expires_at > by.expires_at):
        expires_at = by.expires_at  # capped, not refused: the answer shows the expiry it got
    token = new_token()
    row = ApiToken(
        user_id=owner.id,
        name=data.name,
        kind="api",
        token_hmac=token_hmac(key, token),
        permissions=None if scope is None else sorted_values(scope),
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    return row, token


async def get_token(session: AsyncSession, user_id: uuid.UUID, token_id: uuid.UUID) -> ApiToken:
    token = await session.scalar(select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user_id))
    if token is None:
        raise NotFound(f"no token {token_id}", code="token_not_found")
    return token


async def revoke_token(session: AsyncSession, user_id: uuid.UUID, token_id: uuid.UUID) -> None:
    """Revoked at once; the row stays, so the audit trail can still name the token. Idempotent."""
    token = await get_token(session, user_id, token_id)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    await session.flush()
