"""Wiring the console into the API's app: its routes, its static files, what its refusals look like."""

from fastapi import FastAPI, Request
from starlette.responses import Response

from api.console import csrf, nav
from api.console.docs import router as docs_router
from api.console.pages import PageAnswer, redirect, render, translator
from api.console.router import router as console_router
from api.console.session import COOKIE, SignInRequired, clear_session_cookie, sign_in_url
from api.console.static_files import (
    STABLE_CACHE,
    STATIC_DIR,
    STATIC_PATH,
    VERSIONED_CACHE,
    CachedStaticFiles,
    versioned_static_path,
)
from api.console.views import page_modules
from api.core.errors import problem_response


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    response = redirect(sign_in_url(exc.next_path))
    if COOKIE in request.cookies:  # one that ended: the browser need not send it again
        clear_session_cookie(response, request)
    return response


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    """403: a problem document for a script (it sent the header, or asks for JSON), else a page."""
    if csrf.HEADER in request.headers or "json" in request.headers.get("accept", ""):
        return problem_response(
            403, "csrf_failed", "Forbidden", "the request's CSRF token is missing or not this session's"
        )
    t = translator(request).t
    context = {"title": t("error.403"), "message": t("error.csrf")}
    return render(request, "error.html", context, status_code=403)


async def _page_answer(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageAnswer)
    return exc.response


def install_console(app: FastAPI) -> None:
    app.include_router(docs_router)
    app.include_router(console_router)
    for module in page_modules():
        app.include_router(module.router)
        page = getattr(module, "PAGE", None)
        if page is not None:
            if page not in nav.BY_SLUG:
                raise ValueError(f"{module.__name__}: PAGE {page!r} is not a page of api/console/nav.py")
            nav.BUILT.add(page)
    # The versioned prefix first: it lies under the stable one (api/console/static_files.py).
    versioned = CachedStaticFiles(directory=STATIC_DIR, cache_control=VERSIONED_CACHE)
    app.mount(versioned_static_path(), versioned, name="console-static-versioned")
    stable = CachedStaticFiles(directory=STATIC_DIR, cache_control=STABLE_CACHE)
    app.mount(STATIC_PATH, stable, name="console-static")
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.add_exception_handler(csrf.CsrfRefused, _csrf_refused)
    app.add_exception_handler(PageAnswer, _page_answer)
