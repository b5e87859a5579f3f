"""`/docs` (Swagger UI) and `/redoc` (ReDoc) from the package's own files: they work offline.

FastAPI's pages load both from a CDN; these are the same pages with the vendored files' URLs
(api/console/vendor.json). Each page has its own Content-Security-Policy, looser than the console's
where the library needs it: Swagger UI is started by an inline script (allowed by its sha256 alone, not
by `'unsafe-inline'`) and both libraries set inline styles; ReDoc runs its search in a worker made from
a blob. Nothing may be loaded from another origin.
"""

import base64
import hashlib
import re

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse, RedirectResponse

from api.console.pages import STATIC_PATH, secure

router = APIRouter(include_in_schema=False)
VENDOR = f"{STATIC_PATH}/vendor"
FAVICON = f"{VENDOR}/swagger-ui-dist/favicon-32x32.png"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' {scripts}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _secured(page: HTMLResponse) -> HTMLResponse:
    """The page under the documentation's policy, its own inline scripts allowed by their sha256."""
    hashes = (
        base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        for script in _INLINE_SCRIPT.findall(bytes(page.body).decode())
    )
    secure(page, _DOCS_CSP.format(scripts=" ".join(f"'sha256-{digest}'" for digest in hashes)))
    return page


@router.get("/", status_code=307)
async def root() -> RedirectResponse:
    """People who open the API's address land on the console."""
    return RedirectResponse("/ui/", status_code=307)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{VENDOR}/swagger-ui-dist/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR}/swagger-ui-dist/swagger-ui.css",
        swagger_favicon_url=FAVICON,
    )
    return _secured(page)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )
    return _secured(page)
