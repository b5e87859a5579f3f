"""What the run pages of the console share (the Training log, Evaluation, a model version's outputs):
a run of the page's project loaded by id, a JSON route's project checked as the API's `requires` checks
it, and hostile files streamed so that no browser ever renders one as a page of this origin."""

import uuid

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from api.console.common import InProject, refuse
from api.console.nav import project_url
from api.console.session import ConsoleSession
from api.core.blobs import BlobStore
from api.core.config import Settings
from api.core.downloads import OCTET_STREAM, blob_response
from api.core.errors import Forbidden, NotFound
from api.core.security import Permission, visible_project_id
from api.models import Project, Run
from api.projects import service as projects
from api.runs import service as runs
from shared.enums import ACTIVE_RUN_STATUSES

# Shown in an <img>: raster formats only. SVG can carry script, and every other type is served as
# bytes to save (`attachment`, `nosniff`): a dataset's `.html` never becomes a page of the console.
SAFE_IMAGES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
}
# A file answer runs nothing, even opened on its own in a tab.
FILE_CSP = "default-src 'none'; sandbox"


def run_url(project: str, run_id: uuid.UUID | str) -> str:
    """The run's Monitoring page (views/runs.py); the log and evaluation pages live below it."""
    return f"{project_url(project)}runs/{run_id}/"


def is_image(path: str) -> bool:
    return "." + path.rpartition(".")[2].lower() in SAFE_IMAGES


def is_active(run: Run) -> bool:
    return run.status in {status.value for status in ACTIVE_RUN_STATUSES}


async def page_run(request: Request, session: AsyncSession, where: InProject, run_id: str) -> Run:
    """The run `run_id` of the page's project, or a 404 page (an id that is not one, too)."""
    try:
        parsed = uuid.UUID(run_id)
        return await runs.get_run(session, where.project, parsed)
    except (ValueError, NotFound):
        raise refuse(request, where.signed_in, 404, "logs.no_run") from None


async def json_project(
    session: AsyncSession, signed_in: ConsoleSession, project: str, *permissions: Permission
) -> Project:
    """A console JSON route's project, checked as `requires` checks the API's: 404 `project_not_found`
    for one the person cannot see, then 403 without each permission; problem documents, not pages."""
    principal = signed_in.principal
    project_id = await visible_project_id(session, principal, project)
    for permission in (Permission.PROJECTS_VIEW, *permissions):
        if not principal.can(permission, project_id):
            raise Forbidden(f"this needs the permission {permission.value!r}", code="forbidden")
    return await projects.get_project(session, project)


async def file_response(
    request: Request,
    blobs: BlobStore,
    sha256: str,
    size: int,
    path: str,
    *,
    image: bool = False,
    media_type: str = OCTET_STREAM,
) -> Response:
    """A stored file streamed as the REST downloads stream it (ETag, `attachment`, nosniff), with a
    Content-Type that cannot run: a raster image type when `image` allows it, else `media_type` (a zip,
    or bytes).

    On S3 with redirects on, a 307 to a presigned GET instead, whose answer carries the same
    `attachment` and type (an <img> shows an `attachment` image all the same; opened in a tab it is
    saved, or shown as an image, on the bucket's origin, never the console's). S3 sends neither
    `nosniff` nor this CSP: the forced type (a raster image, a zip or bytes) is what keeps it inert."""
    if image:
        media_type = SAFE_IMAGES.get("." + path.rpartition(".")[2].lower(), OCTET_STREAM)
    settings: Settings = request.app.state.settings
    response = await blob_response(
        blobs,
        sha256,
        size,
        media_type,
        request.headers.get("if-none-match"),
        filename=path,
        redirect=settings.s3_redirect_downloads,
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = FILE_CSP
    return response
