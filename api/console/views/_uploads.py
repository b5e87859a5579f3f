"""What the Packages and Datasets pages' uploads share: the route's steps (`receive`), the CSRF check of
a streamed body, and the two answers (JSON for `upload.js`, a redirect or the page again without
script).

An upload streams into scratch files as the REST upload routes do (`api/core/uploads.py`), so its
CSRF token cannot come from `request.form()` (that would read the whole body first). A script sends
the token in the `X-CSRF-Token` header, checked before the first byte is read; a form posted without
script carries it as its `csrf_token` field, checked once the body is in scratch files and before
anything is stored or changed (a forged upload leaves nothing: the scratch files are removed).
"""

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import HTMLResponse, JSONResponse, Response

from api.console import csrf
from api.console.common import InProject, require
from api.console.pages import PageAnswer, redirect, render
from api.console.session import ConsoleSession, audit
from api.core.blobs import BlobStore
from api.core.errors import TrainyardError
from api.core.security import Permission
from api.core.unit_of_work import commit_early
from api.core.uploads import Upload, receive_multipart
from api.models import Project
from api.projects.service import get_project

T = TypeVar("T")

# The console's own fields of an upload's form, taken out before the REST route's checks see it.
CONSOLE_FIELDS = ("csrf_token",)


def _matches(sent: str | None, signed_in: ConsoleSession) -> bool:
    return bool(sent) and hmac.compare_digest(str(sent).encode(), signed_in.csrf.encode())


def from_script(request: Request, signed_in: ConsoleSession) -> bool:
    """True for `upload.js` (its header checked now), False for a plain form (checked by `check_form`)."""
    sent = request.headers.get(csrf.HEADER)
    if sent is None:
        return False
    if not _matches(sent, signed_in):
        raise csrf.CsrfRefused()
    return True


def check_form(upload: Upload, script: bool, signed_in: ConsoleSession) -> None:
    """The form's token, for an upload sent without script; the console's fields removed either way."""
    sent = upload.fields.pop("csrf_token", None)
    if not script and not _matches(sent, signed_in):
        raise csrf.CsrfRefused()


def done(script: bool, url: str, **facts: object) -> Response:
    """Where to go once the version is made: JSON for the script, a 303 for a form."""
    if script:
        return JSONResponse({"url": url, **facts}, status_code=201)
    return redirect(url)


def list_page(
    request: Request,
    where: InProject,
    listing: dict[str, Any],
    *,
    page: str,
    template: str,
    urls: dict[str, Any],
    list_url: Callable[[str], str],
    permission: Permission,
    upload_error: str | None = None,
    upload_name: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    """A list page with its upload form (`list_url(project)` + `upload`), as drawn again on a refusal
    with the refusal's message and the name that was sent."""
    context = where.context(
        active=page,
        **listing,
        **urls,
        may_upload=where.can(permission),
        upload_error=upload_error,
        upload_name=upload_name,
        fixed_name="",
        upload_action=f"{list_url(where.project.name)}upload",
    )
    return render(request, template, context, signed_in=where.signed_in, status_code=status_code)


async def receive(
    request: Request,
    session: AsyncSession,
    blobs: BlobStore,
    where: InProject,
    *,
    permission: Permission,
    limits: dict[str, int],
    listing: Callable[[], Awaitable[dict[str, Any]]],
    list_page: Callable[..., HTMLResponse],
    name_field: str,
    check_name: Callable[[str], str],
    stage: Callable[[Upload], Awaitable[T]],
    record: Callable[[Project, str, T], Awaitable[tuple[str, dict[str, object]]]],
    action: str,
) -> Response:
    """An upload form's route, step by step as its REST route: the body streams into scratch files
    (`limits`: `receive_multipart`'s), the name field is checked, `stage` checks and stores the files,
    and `record` makes the version (its page's URL and the facts `upload.js` is told). Without script a
    refusal draws the list page again (`list_page` with `upload_error` and `upload_name`)."""
    script = from_script(request, where.signed_in)
    require(request, where, permission)
    # Without script a refusal draws the page again: read it before anything is tried.
    listed = None if script else await listing()
    name = ""
    await commit_early(session, "the upload's body streams in next: an upload holds no connection")
    try:
        async with receive_multipart(request, blobs, **limits) as upload:
            check_form(upload, script, where.signed_in)
            name = upload.fields.pop(name_field, "")
            name = check_name(name)
            staged = await stage(upload)
        found = await get_project(session, where.project.name)  # deleted while the body streamed in
        url, facts = await record(found, name, staged)
    except TrainyardError as error:
        if script or listed is None:
            raise
        page = list_page(
            request, where, listed, upload_error=error.detail, upload_name=name, status_code=error.status_code
        )
        raise PageAnswer(page) from None
    audit(session, request, where.principal, action)
    return done(script, url, **facts)
