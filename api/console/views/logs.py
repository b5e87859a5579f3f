"""The Training log of a run (TI-ONE's live, searchable log): `/ui/projects/<p>/runs/<id>/log`.

The page works without script: a form (search, stream) and one page of lines with links on. With
script, `static/js/logs.js` shows the whole log in a fixed-height viewport that holds only the rows in
view, reading pages of lines by offset from the JSON route below, and follows the run while it writes.
That route is the API's own log read (`api/telemetry/router.get_logs`: the service, its search and its
follow, which holds no database connection while it waits), behind the session cookie instead of a
bearer token, with the same permission, `runs.view`.
"""

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse

from api.console.common import ProjectPage, require
from api.console.pages import render, translator
from api.console.session import SignedIn
from api.console.views._run import is_active, json_project, page_run, run_url
from api.core.db import SessionDep
from api.core.deps import NotifierDep
from api.core.security import Permission
from api.telemetry import router as telemetry
from api.telemetry import service as telemetry_service
from api.telemetry.schemas import LogsRead
from shared.enums import RunStatus
from shared.protocol import INT32_MAX, MAX_POLL_WAIT_SECONDS

router = APIRouter(prefix="/ui", include_in_schema=False)
PAGE_LINES = 200  # the page without script: one page of lines at a time
Stream = Literal["stdout", "stderr"]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX)]
Search = Annotated[str, Query(max_length=256)]


@router.get("/projects/{project}/runs/{run_id}/log")
async def log_page(
    request: Request,
    session: SessionDep,
    where: ProjectPage,
    run_id: str,
    offset: Offset | None = None,
    q: Search = "",
    stream: Literal["", "stdout", "stderr"] = "",  # the form's "both" is the empty value
) -> HTMLResponse:
    """The log: a search form, one page of lines (the last page when no offset is asked for and the
    log is not filtered), and what the script needs to take over."""
    require(request, where, Permission.RUNS_VIEW)
    t = translator(request).t
    run = await page_run(request, session, where, run_id)
    if offset is None:
        total = (await telemetry_service.read_logs(session, run, 0, 1, None, None)).total
        offset = 0 if q or stream else max(0, total - PAGE_LINES)
    page = await telemetry_service.read_logs(session, run, offset, PAGE_LINES, q or None, stream or None)
    base = f"{run_url(where.project.name, run.id)}log"
    context = where.context(
        run=run,
        page=page,
        offset=offset,
        q=q,
        stream=stream or "",
        active=is_active(run),
        run_url=run_url(where.project.name, run.id),
        lines_url=f"{base}/lines",
        base=base,
        page_lines=PAGE_LINES,
        template_name=str(run.config.get("template") or ""),
        states={status.value: t(f"logs.state.{status.value}") for status in RunStatus},
    )
    return render(request, "logs/log.html", context, signed_in=where.signed_in)


@router.get("/projects/{project}/runs/{run_id}/log/lines")
async def log_lines(
    project: str,
    run_id: uuid.UUID,
    session: SessionDep,
    notifier: NotifierDep,
    signed_in: SignedIn,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=telemetry.MAX_LOG_PAGE)] = 1000,
    q: Annotated[str | None, Query(max_length=256)] = None,
    stream: Stream | None = None,
    follow: Annotated[float, Query(ge=0, le=MAX_POLL_WAIT_SECONDS)] = 0,
) -> LogsRead:
    """The page's script reads lines here: `GET /api/v1/projects/<p>/runs/<id>/logs`, as that route
    answers it (problem documents for refusals), for a person signed in to the console."""
    await json_project(session, signed_in, project, Permission.RUNS_VIEW)
    return await telemetry.get_logs(
        project=project,
        run_id=run_id,
        session=session,
        notifier=notifier,
        _=signed_in.principal,
        offset=offset,
        limit=limit,
        q=q or None,
        stream=stream,
        follow=follow,
    )
