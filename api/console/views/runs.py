"""Monitoring (a run) and Compare (several runs): Primo's chart of learning rate, loss and accuracy, live
while the run reports, with the run's header and audit trail; and one metric of several runs overlaid.

A client of `api/runs/service.py` and `api/telemetry/` with the REST routes' permission (`runs.view`):
the chart reads the downsampled overview of `read_metrics`, a zoom reads its window at full resolution
(`telemetry/ranges.read_window`), and `live?wait=S&since=N` (with `If-None-Match`) holds until the run
changes (a status, its telemetry: one wake-up key, the run's id), then answers the header, the audit
trail and the points stored since `N`. No module-level PAGE: the pages live under a run, linked from
Processes.
"""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import HTMLResponse, JSONResponse, Response

from api.console.common import InProject, ProjectPage, refuse, require
from api.console.i18n import Translator
from api.console.nav import project_url
from api.console.pages import render, translator
from api.console.views.processes import duration
from api.core.db import SessionDep
from api.core.deps import NotifierDep
from api.core.errors import NotFound
from api.core.schemas import MAX_PAGE_SIZE, PageParams
from api.core.security import Permission
from api.core.watch import IfNoneMatch, WaitQuery, answer_when_changed, etag_of
from api.models import Project, Run
from api.runs import service as runs
from api.telemetry import ranges
from api.telemetry.router import MAX_POINTS_LIMIT
from api.telemetry.schemas import SeriesRead
from api.telemetry.service import read_metrics
from shared.protocol import INT32_MAX

router = APIRouter(prefix="/ui", include_in_schema=False)

OVERVIEW_POINTS = 2000  # per series: about one point per pixel of a wide chart
PRIMO_SERIES = ("learning_rate", "loss", "accuracy")
MAX_COMPARED = 12
SeriesQuery = Annotated[list[str] | None, Query(max_length=64)]


def runs_url(project: str) -> str:
    return f"{project_url(project)}runs/"


async def _run(request: Request, session: SessionDep, where: InProject, run_id: uuid.UUID) -> tuple[Run, str]:
    """The run, in the page's project, for a person who may view runs (404 and 403 pages, as the API)."""
    require(request, where, Permission.RUNS_VIEW)
    try:
        run, _, machine = await runs.load_run(session, where.project_id, where.project.name, run_id)
    except NotFound:
        raise refuse(request, where.signed_in, 404, "runs.no_run") from None
    return run, machine


class RunHeader(BaseModel):
    """The run's header fields, as the page renders them and as the live route sends them."""

    status: str
    status_label: str
    stage: str
    progress: int | None
    progress_text: str
    elapsed: str
    elapsed_seconds: float | None
    ticking: bool
    eta: str
    reason: str
    detail: str
    offline: str


class TrailEvent(BaseModel):
    id: str
    at: str
    when: str
    who: str
    kind: str
    change: str
    reason: str
    detail: str


class RunLive(BaseModel):
    fields: RunHeader
    events: list[TrailEvent]
    next_since: int = Field(description="Points stored so far: `since` of the next read.")
    series: list[SeriesRead] = Field(default_factory=list, description="The points stored since `since`.")


# Left out of the ETag: elapsed moves with the clock, and the points follow from `next_since`.
VOLATILE = {"fields": {"elapsed", "elapsed_seconds"}, "series": True}


def header(words: Translator, run: Run, project: Project, machine: str) -> RunHeader:
    t = words.t
    read = runs.run_read(run, project.name, machine)
    status = read.status.value
    progress = None if read.progress is None else round(read.progress * 100)
    ticking = read.launched_at is not None and read.ended_at is None
    return RunHeader(
        status=status,
        status_label=t(f"processes.status.{status}"),
        stage=read.stage or "",
        progress=progress,
        progress_text="" if progress is None else t("processes.percent", value=progress),
        elapsed=duration(read.elapsed_seconds),
        elapsed_seconds=read.elapsed_seconds,
        ticking=ticking,
        eta=f"~{duration(read.eta_seconds)}" if read.eta_seconds is not None and ticking else "",
        reason=read.reason_code or "",
        detail=read.detail if read.ended_at is not None else "",
        offline=t("runs.offline") if read.agent_offline else "",
    )


async def trail(session: AsyncSession, words: Translator, run: Run) -> list[TrailEvent]:
    """The run's audit trail: every transition, who, when, why (the API's `runs/{id}/events`)."""
    page = await runs.list_events(session, run, PageParams(limit=MAX_PAGE_SIZE))
    return [
        TrailEvent(
            id=str(event.id),
            at=event.at.isoformat(),
            when=words.when(event.at),
            who=event.actor_name,
            kind=event.kind,
            change=" → ".join(s for s in (event.from_status, event.to_status) if s),
            reason=event.reason_code or "",
            detail=event.detail,
        )
        for event in page.items
    ]


@router.get("/projects/{project}/runs/{run_id}/")
async def monitoring_page(
    request: Request, session: SessionDep, where: ProjectPage, run_id: uuid.UUID
) -> HTMLResponse:
    run, machine = await _run(request, session, where, run_id)
    t = translator(request)
    metrics = await read_metrics(session, run, None, 4, None)  # the series' names and latest values
    fields = header(t, run, where.project, machine)
    events = await trail(session, t, run)
    base = f"{runs_url(where.project.name)}{run.id}/"
    config = run.config
    context = where.context(
        run=run,
        machine=machine,
        template=str(config.get("template", "")),
        max_duration=duration(config.get("max_duration_seconds")),
        fields=fields,
        events=events,
        series=metrics.series,
        primo=PRIMO_SERIES,
        base=base,
        version=etag_of(RunLive(fields=fields, events=events, next_since=metrics.next_since), VOLATILE),
        next_since=metrics.next_since,
        process_link=f"{project_url(where.project.name)}processes/#process-{run.process_id}",
        compare_link=f"{runs_url(where.project.name)}?run={run.id}",
        active="processes",
    )
    return render(request, "runs/monitoring.html", context, signed_in=where.signed_in)


@router.get("/projects/{project}/runs/{run_id}/metrics")
async def metrics(
    request: Request,
    session: SessionDep,
    where: ProjectPage,
    run_id: uuid.UUID,
    series: SeriesQuery = None,
    max_points: Annotated[int, Query(ge=4, le=MAX_POINTS_LIMIT)] = OVERVIEW_POINTS,
    low: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    high: Annotated[float | None, Query(allow_inf_nan=False)] = None,
) -> JSONResponse:
    """The chart's data: the overview (the REST metrics route's service), or with `low` and `high` the
    window between those steps at full resolution (a zoom)."""
    run, _ = await _run(request, session, where, run_id)
    if low is not None and high is not None:
        window = await ranges.read_window(session, run, series, low, high, max_points)
        body: dict[str, Any] = {"series": [s.model_dump(mode="json") for s in window]}
    else:
        body = (await read_metrics(session, run, series, max_points, None)).model_dump(mode="json")
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/projects/{project}/runs/{run_id}/live")
async def live(
    request: Request,
    response: Response,
    session: SessionDep,
    notifier: NotifierDep,
    where: ProjectPage,
    run_id: uuid.UUID,
    if_none_match: IfNoneMatch = None,
    wait: WaitQuery = 0,
    since: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
) -> Response:
    """The header, the audit trail and the points stored since `since` (downsampled as the overview),
    with their ETag; held as the API's `wait=` GETs are (`api/core/watch.py`) until the run changes:
    its status and its telemetry both wake the run's id."""
    run, machine = await _run(request, session, where, run_id)
    t = translator(request)
    again = False

    async def read() -> tuple[RunLive, list[uuid.UUID]]:
        nonlocal again, run
        if again:  # after a wake: what committed since, not the identity map's copies
            session.expunge_all()
            run, _ = await _run(request, session, where, run_id)
        again = True
        answer = RunLive(
            fields=header(t, run, where.project, machine),
            events=await trail(session, t, run),
            next_since=await ranges.stored_points(session, run),
        )
        if answer.next_since > since:
            added = await read_metrics(session, run, None, OVERVIEW_POINTS, since)
            answer.series = [found for found in added.series if found.step]
        return answer, [run.id]

    answer = await answer_when_changed(if_none_match, response, session, notifier, wait, read, VOLATILE)
    if isinstance(answer, Response):
        return answer
    return JSONResponse(answer.model_dump(mode="json"), headers={"ETag": response.headers["ETag"]})


@router.get("/projects/{project}/runs/")
async def compare_page(
    request: Request,
    session: SessionDep,
    where: ProjectPage,
    run: Annotated[list[uuid.UUID] | None, Query(max_length=MAX_COMPARED)] = None,
    metric: Annotated[str, Query(max_length=128)] = "loss",
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> HTMLResponse:
    """Compare: pick runs (of one template or across), one metric, their curves on one chart."""
    require(request, where, Permission.RUNS_VIEW)
    page = await runs.list_runs(session, where.project, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor), None)
    chosen = list(dict.fromkeys(run or []))
    picked = []
    for run_id in chosen:
        try:
            found, _, _ = await runs.load_run(session, where.project_id, where.project.name, run_id)
        except NotFound:
            raise refuse(request, where.signed_in, 404, "runs.no_run") from None
        picked.append(found)
    names = await ranges.series_names(session, [found.id for found in picked])
    base = runs_url(where.project.name)
    context = where.context(
        runs=list(reversed(page.items)),
        next_cursor=page.next_cursor,
        chosen={str(run_id) for run_id in chosen},
        picked=[
            {
                "url": f"{base}{found.id}/metrics",
                "label": f"{found.config.get('template', '')} #{found.number}",
                "link": f"{base}{found.id}/",
            }
            for found in picked
        ],
        metric=metric,
        names=sorted(set(names) | set(PRIMO_SERIES)),
        base=base,
        active="processes",
    )
    return render(request, "runs/compare.html", context, signed_in=where.signed_in)
