"""The console's pages: Sign in, Sign out, Projects and a project's home, the language switch.

Each route is a client of the API's services and permission checks: it calls `api/access/login.py`,
`api/access/service.py` and `api/projects/service.py` with the person's `Principal`, and decides what
to show with the same `Principal.can` the API's `requires` uses; it implements no rule of its own.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from pydantic import ValidationError
from starlette.responses import HTMLResponse, RedirectResponse

from api.access import login as access_login
from api.access import service as access_service
from api.access.schemas import LoginRequest
from api.console import csrf
from api.console.common import ProjectPage, field_errors, refuse, switcher
from api.console.i18n import LANG_COOKIE, LOCALES
from api.console.nav import project_url
from api.console.pages import PageAnswer, redirect, render, translator
from api.console.session import (
    SIGN_IN,
    ConsoleSession,
    SignedIn,
    SignedInChanging,
    audit,
    clear_session_cookie,
    safe_next,
    set_session_cookie,
)
from api.core.db import SessionDep
from api.core.errors import Conflict, TooManyRequests, Unauthorized
from api.core.schemas import MAX_PAGE_SIZE, PageParams
from api.core.security import Permission, Principal
from api.projects import service as projects
from api.projects.membership import add_creator
from api.projects.schemas import ProjectCreate

router = APIRouter(prefix="/ui", include_in_schema=False)
LANG_COOKIE_SECONDS = 365 * 24 * 3600
FormText = Annotated[str, Form(max_length=8192)]
NextQuery = Annotated[str, Query(max_length=2048)]


# Sign in and out ------------------------------------------------------------------------------------


def _sign_in_page(
    request: Request, next_path: str, *, error: str | None = None, username: str = "", status_code: int = 200
) -> HTMLResponse:
    presession = csrf.new_presession()
    response = render(
        request,
        "sign_in.html",
        {
            "next_path": safe_next(next_path),
            "csrf_token": csrf.presession_csrf(request.app.state.token_key, presession),
            "error": error,
            "username": username,
        },
        status_code=status_code,
    )
    secure_cookie = request.url.scheme == "https"
    response.set_cookie(
        csrf.PRESESSION_COOKIE,
        presession,
        path=SIGN_IN,
        secure=secure_cookie,
        httponly=True,
        samesite="strict",
    )
    return response


@router.get("/sign-in")
async def sign_in_form(request: Request, next: NextQuery = "/ui/") -> HTMLResponse:
    return _sign_in_page(request, next)


@router.post("/sign-in")
async def sign_in(
    request: Request,
    session: SessionDep,
    username: FormText = "",
    password: FormText = "",
    next: FormText = "/ui/",
) -> RedirectResponse:
    """The API's login (its rate limits, lockout and argon2), its token put in the session cookie."""
    key: bytes = request.app.state.token_key
    presession = request.cookies.get(csrf.PRESESSION_COOKIE)
    if not presession:
        raise csrf.CsrfRefused()
    await csrf.check(request, csrf.presession_csrf(key, presession))
    t = translator(request).t

    def refused(message: str, status_code: int) -> PageAnswer:
        return PageAnswer(
            _sign_in_page(request, next, error=message, username=username, status_code=status_code)
        )

    try:
        data = LoginRequest(username=username, password=password)
    except ValidationError:
        raise refused(t("sign_in.missing"), 422) from None
    address = request.client.host if request.client is not None else "unknown"
    try:
        _, row, token = await access_login.login(
            session, key, request.app.state.login_gate, address, data.username, data.password
        )
    except Unauthorized:
        raise refused(t("sign_in.invalid"), 401) from None
    except TooManyRequests as too_many:
        wait = too_many.headers["Retry-After"]
        answer = refused(t("sign_in.too_many", seconds=wait), 429)
        answer.response.headers["Retry-After"] = wait
        raise answer from None
    assert row.expires_at is not None
    response = redirect(safe_next(next))
    set_session_cookie(response, request, token, row.expires_at)
    response.delete_cookie(csrf.PRESESSION_COOKIE, path=SIGN_IN)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, session: SessionDep, signed_in: SignedInChanging) -> RedirectResponse:
    """Revoke the session's token on the server, as `POST /auth/logout` does, and drop the cookie."""
    principal = signed_in.principal
    if principal.token_id is not None:
        await access_service.revoke_token(session, principal.id, principal.token_id)
    audit(session, request, principal, "auth_logout")
    response = redirect(SIGN_IN)
    clear_session_cookie(response, request)
    return response


@router.get("/lang/{locale}")
async def choose_language(request: Request, locale: str, next: NextQuery = "/ui/") -> RedirectResponse:
    """The language switch: a preference cookie, nothing on the server; then back to the page."""
    response = redirect(safe_next(next))
    if locale in LOCALES:
        secure_cookie = request.url.scheme == "https"
        response.set_cookie(
            LANG_COOKIE, locale, max_age=LANG_COOKIE_SECONDS, path="/", secure=secure_cookie, samesite="lax"
        )
    return response


# Projects -------------------------------------------------------------------------------------------


async def _projects_listing(
    session: SessionDep, principal: Principal, cursor: str | None = None
) -> dict[str, Any]:
    """What the Projects page shows, read before any change is tried: a refused change then renders it
    without touching the session its failure ended."""
    offered = await switcher(session, principal)
    next_cursor = None
    items = offered
    if cursor is not None and principal.can(Permission.PROJECTS_VIEW):
        page = await projects.list_projects(
            session, principal, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor)
        )
        items, next_cursor = page.items, page.next_cursor
    elif len(offered) == MAX_PAGE_SIZE:
        page = await projects.list_projects(session, principal, PageParams(limit=MAX_PAGE_SIZE))
        next_cursor = page.next_cursor
    return {
        "projects": items,
        "next_cursor": next_cursor,
        "switcher": offered,
        "may_view": principal.can(Permission.PROJECTS_VIEW),
        "may_create": principal.can(Permission.PROJECTS_ADMIN),
    }


def _projects_page(
    request: Request,
    signed_in: ConsoleSession,
    listing: dict[str, Any],
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    context = {
        **listing,
        "form": form or {"name": "", "description": ""},
        "errors": errors or {},
        "project_url": project_url,
        "active": "projects",
    }
    return render(request, "projects.html", context, signed_in=signed_in, status_code=status_code)


@router.get("/")
async def projects_page(
    request: Request,
    session: SessionDep,
    signed_in: SignedIn,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> HTMLResponse:
    listing = await _projects_listing(session, signed_in.principal, cursor)
    return _projects_page(request, signed_in, listing)


@router.post("/projects")
async def create_project(
    request: Request,
    session: SessionDep,
    signed_in: SignedInChanging,
    name: FormText = "",
    description: FormText = "",
) -> RedirectResponse:
    """What `POST /api/v1/projects` does, with the same permission, schema and service."""
    principal = signed_in.principal
    form = {"name": name, "description": description}
    if not principal.can(Permission.PROJECTS_ADMIN):
        raise refuse(request, signed_in, 403, "error.forbidden")

    listing = await _projects_listing(session, principal)

    def refused(errors: dict[str, str], status_code: int) -> PageAnswer:
        page = _projects_page(request, signed_in, listing, form=form, errors=errors, status_code=status_code)
        return PageAnswer(page)  # raised: the session dependency rolls back what the insert began

    try:
        data = ProjectCreate(name=name, description=description)
    except ValidationError as invalid:
        raise refused(field_errors(invalid), 422) from None
    try:
        project = await projects.create_project(session, data)
    except Conflict as taken:
        raise refused({"name": taken.detail}, 409) from None
    if not principal.is_admin:
        await add_creator(session, project.id, principal.id)
    audit(session, request, principal, "projects_create")
    return redirect(project_url(project.name))


@router.get("/go")
async def go_to_project(project: Annotated[str, Query(max_length=512)], _: SignedIn) -> RedirectResponse:
    """The switcher's form, without script: to the chosen project's home."""
    return redirect(project_url(project))


@router.get("/projects/{project}/")
async def project_home(request: Request, session: SessionDep, where: ProjectPage) -> HTMLResponse:
    """A project's home: what it holds, and its pages."""
    context = where.context(template_count=await projects.template_count(session, where.project))
    return render(request, "project_home.html", context, signed_in=where.signed_in)
