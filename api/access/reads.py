"""What people read of access: users, roles, a project's members, the audit trail, tokens, and who a
token belongs to. The rules that change them are `service.py`'s; the routers check the permission."""

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.access.catalogue import sorted_values
from api.access.schemas import (
    AuditEventRead,
    MemberRead,
    MeRead,
    ProjectRole,
    RoleRead,
    TokenRead,
    UserRead,
)
from api.core.schemas import Page, PageParams, paged
from api.core.security import Permission, Principal
from api.models import ApiToken, AuditEvent, Project, ProjectMember, Role, User


def user_read(user: User) -> UserRead:
    return UserRead(
        id=user.id,
        name=user.name,
        display_name=user.display_name,
        is_admin=user.is_admin,
        enabled=user.enabled,
        has_password=user.password_hash is not None,
        created_at=user.created_at,
    )


def token_read(token: ApiToken, owner: str) -> TokenRead:
    return TokenRead(
        id=token.id,
        user=owner,
        name=token.name,
        kind="login" if token.kind == "login" else "api",
        permissions=token.permissions,
        created_at=token.created_at,
        expires_at=token.expires_at,
        last_used_at=token.last_used_at,
        revoked_at=token.revoked_at,
    )


def member_read(project: str, member: ProjectMember, user: User, role: Role) -> MemberRead:
    return MemberRead(
        project=project,
        user=user.name,
        display_name=user.display_name,
        role=role.name,
        permissions=role.permissions,
        created_at=member.created_at,
    )


async def own_user(session: AsyncSession, principal: Principal) -> User:
    """The user the caller's token belongs to."""
    return await session.get_one(User, principal.id)


async def list_users(session: AsyncSession, page: PageParams) -> Page[UserRead]:
    return await paged(session, select(User), User.id, page, user_read)


async def list_roles(session: AsyncSession, page: PageParams) -> Page[RoleRead]:
    return await paged(session, select(Role), Role.id, page, RoleRead.model_validate)


async def list_members(session: AsyncSession, project: Project, page: PageParams) -> Page[MemberRead]:
    """Who holds which role in the project."""
    statement = (
        select(ProjectMember, User, Role)
        .join(User, User.id == ProjectMember.user_id)
        .join(Role, Role.id == ProjectMember.role_id)
        .where(ProjectMember.project_id == project.id)
    )

    def item(member: ProjectMember, user: User, role: Role) -> MemberRead:
        return member_read(project.name, member, user, role)

    return await paged(session, statement, ProjectMember.id, page, item)


async def list_audit_events(
    session: AsyncSession, principal: Principal, page: PageParams, actor: str | None
) -> Page[AuditEventRead]:
    """The audit trail, oldest first: all of it for an administrator, else the projects where the
    caller holds `audit.view`; with `actor`, only that user's changes."""
    statement = select(AuditEvent)
    if not principal.is_admin:
        allowed = [p for p in principal.memberships if principal.can(Permission.AUDIT_VIEW, p)]
        statement = statement.where(AuditEvent.project_id.in_(allowed))
    if actor is not None:
        statement = statement.where(AuditEvent.actor_name == actor)
    return await paged(session, statement, AuditEvent.id, page, AuditEventRead.model_validate)


async def list_tokens(session: AsyncSession, owner: User, page: PageParams) -> Page[TokenRead]:
    """The owner's tokens, revoked and expired ones too."""

    def item(token: ApiToken) -> TokenRead:
        return token_read(token, owner.name)

    statement = select(ApiToken).where(ApiToken.user_id == owner.id)
    return await paged(session, statement, ApiToken.id, page, item)


async def me(session: AsyncSession, principal: Principal) -> MeRead:
    """Who the token belongs to, what it may do, and the role held in each project."""
    user = await own_user(session, principal)
    token = None if principal.token_id is None else await session.get(ApiToken, principal.token_id)
    rows = await session.execute(
        select(Project.name, Role.name, Project.id)
        .join(ProjectMember, ProjectMember.project_id == Project.id)
        .join(Role, Role.id == ProjectMember.role_id)
        .where(ProjectMember.user_id == user.id)
        .order_by(Project.name)
    )
    projects = [
        ProjectRole(
            project=project, role=role, permissions=sorted_values(principal.permissions_in(project_id))
        )
        for project, role, project_id in rows
    ]
    return MeRead(
        user=user_read(user),
        token=None if token is None else token_read(token, user.name),
        permissions=sorted_values(principal.permissions_in()),
        projects=projects,
    )
