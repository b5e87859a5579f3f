"""Rendering a console page: one Jinja2 environment (autoescape on), the catalog in every template,
and the security headers on every answer."""

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.responses import HTMLResponse, RedirectResponse, Response

from api.console.i18n import LOCALES, Translator, choose_locale
from api.console.nav import nav_links
from api.console.session import ConsoleSession
from api.console.static_files import STATIC_PATH as STATIC_PATH  # docs.py links the stable URL
from api.console.static_files import versioned_static_path
from api.core.blobs import BlobStore
from api.core.config import Settings

HERE = Path(__file__).resolve().parent
# No inline script or style anywhere: every script and stylesheet is a file of this origin. Images
# also come from the S3 endpoint where people's downloads are redirected there (`console_csp`).
CONSOLE_CSP_TEMPLATE = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'{images} data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
CONSOLE_CSP = CONSOLE_CSP_TEMPLATE.format(images="")
templates = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every name is user input, in any alphabet: it renders as text
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
)


class PageAnswer(Exception):
    """A page that ends a request early (a refused form, a page of error): raised rather than returned,
    so that the session dependency rolls back whatever the request had begun."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def secure(response: Response, csp: str = CONSOLE_CSP) -> Response:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def console_csp(request: Request) -> str:
    """The pages' policy: a badcase image redirected to a presigned URL (`blob_response`) loads from
    the S3 endpoint's origin, so `img-src` names that one origin, and only while redirects are on
    and the store gives URLs. No script fetches a download: `connect-src` stays 'self'."""
    settings: Settings = request.app.state.settings
    blobs: BlobStore = request.app.state.blobs
    origin = blobs.download_origin() if settings.s3_redirect_downloads else None
    return CONSOLE_CSP_TEMPLATE.format(images=f" {origin}" if origin else "")


def translator(request: Request) -> Translator:
    return Translator(choose_locale(request))


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    signed_in: ConsoleSession | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    translator = Translator(choose_locale(request))
    values = {
        "t": translator.t,
        "number": translator.number,
        "when": translator.when,
        "locale": translator.locale,
        "locales": LOCALES,
        "static": versioned_static_path(),  # cached for good: the URL changes with the files
        "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "active": None,
        "signed_in": signed_in,
        "switcher": [],
        "project": None,
        **(context or {}),
    }
    project = values["project"]
    values.setdefault("nav", nav_links(project.name if project is not None else None))
    response = templates.TemplateResponse(request, name, values, status_code=status_code)
    secure(response, console_csp(request))
    return response


def redirect(url: str, status_code: int = 303) -> RedirectResponse:
    response = RedirectResponse(url, status_code=status_code)
    secure(response)
    return response
