"""`/projects/{project}/members` (role assignments per project) and `/audit-events`."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy import select

from api.access import service
from api.access.schemas import AuditEventRead, MemberRead, MemberSet
from api.core.db import SessionDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep, fetch_page
from api.core.security import Permission, Principal, requires
from api.models import AuditEvent, Project, ProjectMember, Role, User

router = APIRouter(
    prefix="/projects/{project}/members", tags=["users"], responses=error_responses(401, 403, 404)
)
audit_router = APIRouter(tags=["audit"], responses=error_responses(401, 403))

Viewer = Annotated[Principal, requires(Permission.PROJECTS_VIEW)]
Admin = Annotated[Principal, requires(Permission.PROJECTS_ADMIN)]


def _project_id(request: Request) -> uuid.UUID:
    """Resolved (and checked visible) by the permission dependency."""
    project_id: uuid.UUID = request.state.project_id
    return project_id


@router.get("", operation_id="members_list")
async def list_members(
    project: str, request: Request, session: SessionDep, _: Viewer, page: PageDep
) -> Page[MemberRead]:
    statement = (
        select(ProjectMember, User, Role)
        .join(User, User.id == ProjectMember.user_id)
        .join(Role, Role.id == ProjectMember.role_id)
        .where(ProjectMember.project_id == _project_id(request))
    )
    found = await session.get_one(Project, _project_id(request))
    rows, cursor = await fetch_page(session, statement, ProjectMember.id, page)
    return Page(items=[_member_read(found.name, m, u, r) for m, u, r in rows], next_cursor=cursor)


def _member_read(project: str, member: ProjectMember, user: User, role: Role) -> MemberRead:
    return MemberRead(
        project=project,
        user=user.name,
        display_name=user.display_name,
        role=role.name,
        permissions=role.permissions,
        created_at=member.created_at,
    )


@router.put("/{user}", operation_id="members_set", responses=error_responses(422))
async def set_member(
    project: str, user: str, data: MemberSet, request: Request, session: SessionDep, principal: Admin
) -> MemberRead:
    """Give `user` a role in the project, or change it. You grant only a role whose every permission you
    hold here, and change only a member whose role you could grant (403 `role_not_grantable`)."""
    member, found_user, role = await service.set_member(
        session, principal, _project_id(request), user, data.role
    )
    found = await session.get_one(Project, _project_id(request))
    return _member_read(found.name, member, found_user, role)


@router.delete("/{user}", operation_id="members_delete", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(
    project: str, user: str, request: Request, session: SessionDep, principal: Admin
) -> Response:
    await service.remove_member(session, principal, _project_id(request), user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@audit_router.get("/audit-events", operation_id="audit_events_list")
async def list_audit_events(
    session: SessionDep,
    principal: Annotated[Principal, requires(Permission.AUDIT_VIEW)],
    page: PageDep,
    user: Annotated[str | None, Query(max_length=512, description="Only this user's changes.")] = None,
) -> Page[AuditEventRead]:
    """Every change made through the API, oldest first: who (and with which token), what, where, when.
    An administrator sees all of it; others the projects where they hold `audit.view`."""
    statement = select(AuditEvent)
    if not principal.is_admin:
        allowed = [p for p in principal.memberships if principal.can(Permission.AUDIT_VIEW, p)]
        statement = statement.where(AuditEvent.project_id.in_(allowed))
    if user is not None:
        statement = statement.where(AuditEvent.actor_name == user)
    rows, cursor = await fetch_page(session, statement, AuditEvent.id, page)
    return Page(items=[AuditEventRead.model_validate(row[0]) for row in rows], next_cursor=cursor)
