"""People: users and bots, their roles in each project, their API tokens (issue 12, page 11).

A client of `api/access/service.py` with the API's permissions: `users.view` sees people and their
tokens' names, `users.admin` makes people, disables them and makes tokens for bots (only an
administrator makes administrators: the service says so), `projects.admin` in a project gives and
takes roles there (a role only if you hold its every permission there: the service again). Everyone
sees their own page, with their own tokens (`tokens.manage`, as `/api/v1/tokens`). Tokens are made and
revoked in `people_tokens.py`.
"""

import uuid
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import HTMLResponse, RedirectResponse

from api.access import service
from api.access.catalogue import TOKEN_PERMISSIONS, sorted_values
from api.access.reads import token_read, user_read
from api.access.schemas import AuditEventRead, UserCreate, UserUpdate
from api.console.common import Signed, SignedChange, SignedPage, field_errors, refuse, require
from api.console.pages import PageAnswer, redirect, render
from api.console.session import audit
from api.core.db import SessionDep
from api.core.errors import Conflict, Forbidden, NotFound, TrainyardError
from api.core.schemas import MAX_PAGE_SIZE, PageParams, fetch_page
from api.core.security import Permission, user_principal, visible_project_id
from api.models import ApiToken, AuditEvent, Project, ProjectMember, Role, User
from api.models.base import utcnow

PAGE = "people"
URL = "/ui/people/"
router = APIRouter(prefix="/ui", include_in_schema=False)
FormText = Annotated[str, Form(max_length=8192)]
Cursor = Annotated[str | None, Query(max_length=64)]
# What the token form offers, in hours; a choice past the maker's own expiry would be capped to it
# (docs/auth.md: a token never outlives the token that made it, here the session's), so it is not offered.
EXPIRY_HOURS = (1, 8, 24 * 7, 24 * 30, 24 * 90, 24 * 365)
AUDIT_SHOWN = 20
EMPTY_USER = {"name": "", "display_name": "", "password": "", "is_admin": "", "bot": ""}


def person_url(name: str) -> str:
    return f"{URL}{quote(name, safe='')}/"


# The list ------------------------------------------------------------------------------------------


async def _people(session: AsyncSession, where: Signed, cursor: str | None = None) -> dict[str, Any]:
    listing: dict[str, Any] = {"users": [], "next_cursor": None}
    if where.can(Permission.USERS_VIEW):
        rows, next_cursor = await fetch_page(
            session, select(User), User.id, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor)
        )
        listing = {"users": [user_read(row[0]) for row in rows], "next_cursor": next_cursor}
    return {
        **listing,
        "may_view": where.can(Permission.USERS_VIEW),
        "may_admin": where.can(Permission.USERS_ADMIN),
        "is_admin": where.principal.is_admin,
        "me": person_url(where.principal.name),
        "person_url": person_url,
        "active": PAGE,
    }


def _people_page(
    request: Request,
    where: Signed,
    listing: dict[str, Any],
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    context = where.context(**listing, form=form or EMPTY_USER, errors=errors or {})
    return render(request, "people/list.html", context, signed_in=where.signed_in, status_code=status_code)


@router.get("/people/")
async def people_page(
    request: Request, session: SessionDep, where: SignedPage, cursor: Cursor = None
) -> HTMLResponse:
    """Everyone may come here for their own page's link; the list needs `users.view`."""
    return _people_page(request, where, await _people(session, where, cursor))


@router.post("/people")
async def create_person(
    request: Request,
    session: SessionDep,
    where: SignedChange,
    name: FormText = "",
    display_name: FormText = "",
    password: FormText = "",
    is_admin: FormText = "",
    bot: FormText = "",
) -> RedirectResponse:
    """What `POST /api/v1/users` does (`users_create`): a person with a password, or a bot without."""
    require(request, where, Permission.USERS_ADMIN)
    form = {"name": name, "display_name": display_name, "password": "", "is_admin": is_admin, "bot": bot}
    listing = await _people(session, where)

    def refused(errors: dict[str, str], status_code: int) -> PageAnswer:
        page = _people_page(request, where, listing, form=form, errors=errors, status_code=status_code)
        return PageAnswer(page)

    fields = {"name": name, "display_name": display_name, "is_admin": bool(is_admin)}
    if not bot:
        fields["password"] = password
    try:
        data = UserCreate.model_validate(fields)
    except ValidationError as invalid:
        raise refused(field_errors(invalid), 422) from None
    try:
        user = await service.create_user(session, data, where.principal)
    except Conflict as taken:
        raise refused({"name": taken.detail}, 409) from None
    except Forbidden as forbidden:
        raise refused({"is_admin": forbidden.detail}, 403) from None
    audit(session, request, where.principal, "users_create")
    return redirect(person_url(user.name))


# A person's page -----------------------------------------------------------------------------------


async def _memberships(session: AsyncSession, where: Signed, user: User) -> list[dict[str, Any]]:
    """The user's role in each project the person may see, as `GET /projects/{p}/members` shows it."""
    statement = (
        select(Project.id, Project.name, Role.name)
        .join(ProjectMember, ProjectMember.project_id == Project.id)
        .join(Role, Role.id == ProjectMember.role_id)
        .where(ProjectMember.user_id == user.id)
        .order_by(Project.name)
    )
    principal = where.principal
    return [
        {"project": project, "role": role, "may_remove": principal.can(Permission.PROJECTS_ADMIN, project_id)}
        for project_id, project, role in await session.execute(statement)
        if principal.can(Permission.PROJECTS_VIEW, project_id)
    ]


async def _audit(session: AsyncSession, where: Signed, user: User) -> list[AuditEventRead] | None:
    """The user's latest changes, as `GET /audit-events?user=` lists them to the person; None without
    `audit.view`."""
    principal = where.principal
    if not where.can(Permission.AUDIT_VIEW):
        return None
    statement = select(AuditEvent).where(AuditEvent.actor_name == user.name)
    if not principal.is_admin:
        allowed = [p for p in principal.memberships if principal.can(Permission.AUDIT_VIEW, p)]
        statement = statement.where(AuditEvent.project_id.in_(allowed))
    rows = await session.scalars(statement.order_by(AuditEvent.at.desc()).limit(AUDIT_SHOWN))
    return [AuditEventRead.model_validate(row) for row in rows]


async def person_context(session: AsyncSession, request: Request, where: Signed, name: str) -> dict[str, Any]:
    """Everything a person's page shows, and which of its actions the person may take: read before
    any change is tried, so a refused form renders it as it was."""
    principal = where.principal
    try:
        user = await service.get_user(session, name)
    except NotFound:
        raise refuse(request, where.signed_in, 404, "people.not_found") from None
    itself = user.id == principal.id
    if not itself:
        require(request, where, Permission.USERS_VIEW)
    owner = await user_principal(session, user)
    token_rows = await session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at.desc())
    )
    offered_projects = [p for p in where.switcher if principal.can(Permission.PROJECTS_ADMIN, p.id)]
    now = utcnow()
    may_tokens = principal.manages_own_tokens if itself else where.can(Permission.USERS_ADMIN)
    return {
        "person": user_read(user),
        "itself": itself,
        "person_url": person_url(user.name),
        "memberships": await _memberships(session, where, user),
        "tokens": [token_read(row, user.name) for row in token_rows],
        "this_token": principal.token_id,
        "grantable": sorted_values(owner.permissions_in()) + sorted(p.value for p in TOKEN_PERMISSIONS),
        "expiry_hours": [
            hours
            for hours in EXPIRY_HOURS
            if principal.expires_at is None or now + timedelta(hours=hours) < principal.expires_at
        ],
        "session_ends": principal.expires_at,
        "may_admin": where.can(Permission.USERS_ADMIN),
        "may_make_admins": principal.is_admin,
        "may_tokens": may_tokens,
        "offered_projects": offered_projects,
        "roles": list(await session.scalars(select(Role.name).order_by(Role.name)))
        if offered_projects
        else [],
        "audit": await _audit(session, where, user),
        "now": now,
        "api_url": str(request.base_url).rstrip("/"),
        "active": PAGE,
    }


def person_page(
    request: Request,
    where: Signed,
    context: dict[str, Any],
    *,
    errors: dict[str, str] | None = None,
    token_form: dict[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    values = where.context(**context, errors=errors or {}, token_form=token_form or {})
    return render(request, "people/person.html", values, signed_in=where.signed_in, status_code=status_code)


@router.get("/people/{user}/")
async def person(request: Request, session: SessionDep, where: SignedPage, user: str) -> HTMLResponse:
    return person_page(request, where, await person_context(session, request, where, user))


def refusal(
    request: Request, where: Signed, context: dict[str, Any], error: TrainyardError, field: str
) -> PageAnswer:
    """A change the service refused, shown on the person's page in the API's words."""
    page = person_page(request, where, context, errors={field: error.detail}, status_code=error.status_code)
    return PageAnswer(page)


async def _update(
    request: Request, session: AsyncSession, where: Signed, user: str, data: dict[str, Any], field: str
) -> RedirectResponse:
    """What `PATCH /api/v1/users/{user}` does (`users_update`), one change at a time."""
    require(request, where, Permission.USERS_ADMIN)
    context = await person_context(session, request, where, user)
    try:
        update = UserUpdate.model_validate(data)
    except ValidationError as invalid:
        page = person_page(request, where, context, errors=field_errors(invalid), status_code=422)
        raise PageAnswer(page) from None
    try:
        await service.update_user(session, user, update, where.principal)
    except (Conflict, Forbidden) as refused:
        raise refusal(request, where, context, refused, field) from None
    audit(session, request, where.principal, "users_update")
    return redirect(context["person_url"])


@router.post("/people/{user}/enable")
async def enable_person(
    request: Request, session: SessionDep, where: SignedChange, user: str
) -> RedirectResponse:
    return await _update(request, session, where, user, {"enabled": True}, "enabled")


@router.post("/people/{user}/disable")
async def disable_person(
    request: Request, session: SessionDep, where: SignedChange, user: str
) -> RedirectResponse:
    """Their tokens stop working at once (refused for the last enabled administrator)."""
    return await _update(request, session, where, user, {"enabled": False}, "enabled")


@router.post("/people/{user}/admin")
async def set_administrator(
    request: Request, session: SessionDep, where: SignedChange, user: str, is_admin: FormText = ""
) -> RedirectResponse:
    return await _update(request, session, where, user, {"is_admin": is_admin == "true"}, "is_admin")


@router.post("/people/{user}/password")
async def set_password(
    request: Request, session: SessionDep, where: SignedChange, user: str, password: FormText = ""
) -> RedirectResponse:
    """A new password ends the person's sessions (and, set by someone else, every token of theirs)."""
    return await _update(request, session, where, user, {"password": password}, "password")


# Roles in projects ---------------------------------------------------------------------------------


async def _project_admin(request: Request, session: AsyncSession, where: Signed, project: str) -> uuid.UUID:
    """The project's id, as `requires(projects.admin)` finds it under `/projects/{project}/members`."""
    try:
        project_id = await visible_project_id(session, where.principal, project)
    except NotFound:
        raise refuse(request, where.signed_in, 404, "error.no_project") from None
    if not where.principal.can(Permission.PROJECTS_ADMIN, project_id):
        raise refuse(request, where.signed_in, 403, "error.forbidden")
    request.state.project_id = project_id  # the audit row names the project, as the API's does
    return project_id


@router.post("/people/{user}/roles")
async def give_role(
    request: Request,
    session: SessionDep,
    where: SignedChange,
    user: str,
    project: FormText = "",
    role: FormText = "",
) -> RedirectResponse:
    """What `PUT /api/v1/projects/{project}/members/{user}` does (`members_set`)."""
    project_id = await _project_admin(request, session, where, project)
    context = await person_context(session, request, where, user)
    try:
        await service.set_member(session, where.principal, project_id, user, role)
    except (NotFound, Forbidden, Conflict) as refused:
        raise refusal(request, where, context, refused, "role") from None
    audit(session, request, where.principal, "members_set")
    return redirect(context["person_url"])


@router.post("/people/{user}/roles/remove")
async def remove_role(
    request: Request, session: SessionDep, where: SignedChange, user: str, project: FormText = ""
) -> RedirectResponse:
    """What `DELETE /api/v1/projects/{project}/members/{user}` does (`members_delete`)."""
    project_id = await _project_admin(request, session, where, project)
    context = await person_context(session, request, where, user)
    try:
        await service.remove_member(session, where.principal, project_id, user)
    except (NotFound, Forbidden) as refused:
        raise refusal(request, where, context, refused, "role") from None
    audit(session, request, where.principal, "members_delete")
    return redirect(context["person_url"])
