"""`/projects/{project}/members` (role assignments per project) and `/audit-events`."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from api.access import reads, service
from api.access.schemas import AuditEventRead, MemberRead, MemberSet
from api.core.db import SessionDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission, Principal, requires
from api.projects.deps import InProject, checked_project, in_project

router = APIRouter(
    prefix="/projects/{project}/members", tags=["users"], responses=error_responses(401, 403, 404)
)
audit_router = APIRouter(tags=["audit"], responses=error_responses(401, 403))

Admin = Annotated[Principal, requires(Permission.PROJECTS_ADMIN)]


def _project_id(request: Request) -> uuid.UUID:
    """Resolved (and checked visible) by the permission dependency."""
    project_id: uuid.UUID = request.state.project_id
    return project_id


@router.get("", operation_id="members_list")
async def list_members(
    target: Annotated[InProject, in_project(Permission.PROJECTS_VIEW)], session: SessionDep, page: PageDep
) -> Page[MemberRead]:
    return await reads.list_members(session, target.project, page)


@router.put("/{user}", operation_id="members_set", responses=error_responses(422))
async def set_member(
    project: str, user: str, data: MemberSet, request: Request, session: SessionDep, principal: Admin
) -> MemberRead:
    """Give `user` a role in the project, or change it. You grant only a role whose every permission you
    hold here, and change only a member whose role you could grant (403 `role_not_grantable`)."""
    # No `in_project`: the document would list `user` before `project`, and the project would be read
    # before the body is validated (a 404 where a bad body answers 422).
    member, found_user, role = await service.set_member(
        session, principal, _project_id(request), user, data.role
    )
    found = await checked_project(session, request, project)
    return reads.member_read(found.name, member, found_user, role)


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
    return await reads.list_audit_events(session, principal, page, user)
