"""The agent's telemetry route and the chart and log reads of a run."""

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials

from api.core import prometheus
from api.core.db import SessionDep
from api.core.deps import NotifierDep
from api.core.errors import InvalidInput, error_responses
from api.core.security import Permission, Principal, agent_for, bearer_digest, bearer_scheme, requires
from api.core.unit_of_work import commit_early
from api.models import Run
from api.models.base import utcnow
from api.projects.service import get_project
from api.runs.deps import RunTarget, run_for
from api.runs.service import get_run
from api.telemetry import ingest, service, wire
from api.telemetry.schemas import LogsRead, MetricsRead
from api.telemetry.wire import Batch
from shared.protocol import INT32_MAX, MAX_POLL_WAIT_SECONDS, TelemetryReply

agent_router = APIRouter(prefix="/agent", tags=["agent"], responses=error_responses(401, 403))
router = APIRouter(prefix="/projects/{project}", tags=["runs"], responses=error_responses(401, 403, 404))

ViewedRun = Annotated[RunTarget, run_for(Permission.RUNS_VIEW)]
RunViewer = Annotated[Principal, requires(Permission.RUNS_VIEW)]
MAX_POINTS_LIMIT = 20_000
MAX_LOG_PAGE = 5_000
FOLLOW_ENDED_GRACE = timedelta(seconds=60)
# The body is declared by hand (it is parsed by hand, below); its schema is in the document's components.
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TelemetryBatch"}}},
    }
}


def _counted(batch: Batch) -> None:
    """The batch in /metrics: points, lines, batches, and the lag of its newest point or line."""
    prometheus.POINTS.inc(len(batch.value))
    prometheus.LOG_LINES.inc(len(batch.logs.text))
    prometheus.BATCHES.inc()
    newest = max(float(batch.time.max(initial=0.0)), max(batch.logs.time, default=0.0))
    if newest > 0:
        prometheus.LAG.observe(max(0.0, time.time() - newest))


@agent_router.post(
    "/runs/{run_id}/telemetry",
    operation_id="agent_runs_telemetry_push",
    responses=error_responses(404, 413, 422),
    openapi_extra=_BATCH_BODY,
)
async def push_telemetry(
    run_id: uuid.UUID,
    request: Request,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> TelemetryReply:
    """One batch of metric points and log lines. Stored once per `seq` and in order: a repeat is a
    no-op, a batch after a gap is refused with the seqs `missing`; `acked_through` is what is stored.
    Takes a machine's agent token, looked up with the batch's own statements (`ingest`)."""
    # No session dependency: the body is read before any database connection is taken (none waits on
    # a slow upload), and `ingest` holds its unit of work and commits it, in one call on SQLite.
    body = await request.body()
    digest = bearer_digest(request)
    state = request.app.state
    try:
        batch = wire.from_json(body)
    except (RequestValidationError, InvalidInput):
        async with state.sessionmaker() as session:
            await agent_for(session, digest)  # who may not post learns that first, as before
        raise
    engine, sessionmaker, notifier = state.engine, state.sessionmaker, state.notifier
    reply, stored = await ingest.ingest(engine, sessionmaker, notifier, digest, run_id, batch)
    if stored:
        _counted(batch)
    return reply


@router.get("/runs/{run_id}/metrics", operation_id="runs_metrics_get", responses=error_responses(422))
async def get_metrics(
    target: ViewedRun,
    session: SessionDep,
    series: Annotated[
        list[str] | None, Query(description="Only these series (repeat the parameter).")
    ] = None,
    max_points: Annotated[
        int, Query(ge=4, le=MAX_POINTS_LIMIT, description="Points per series, at most.")
    ] = 2000,
    since: Annotated[
        int | None,
        Query(ge=0, le=INT32_MAX, description="Only points stored from here on: `next_since` of a read."),
    ] = None,
) -> MetricsRead:
    """The run's chart: each series downsampled to `max_points` keeping every bucket's min and max and
    the exact first and last points; its latest value; the run's progress, stage, elapsed and ETA."""
    return await service.read_metrics(session, target.run, series, max_points, since)


def _long_ended(run: Run) -> bool:
    """Ended a while ago: nothing more will come (the agent ships the last lines before `finished`)."""
    return run.ended_at is not None and utcnow() - run.ended_at > FOLLOW_ENDED_GRACE


@router.get("/runs/{run_id}/logs", operation_id="runs_logs_get", responses=error_responses(422))
async def get_logs(
    project: str,
    run_id: uuid.UUID,
    session: SessionDep,
    notifier: NotifierDep,
    _: RunViewer,
    offset: Annotated[
        int, Query(ge=0, le=INT32_MAX, description="The first line to return: `next_offset` of a read.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_PAGE)] = 1000,
    q: Annotated[
        str | None, Query(max_length=256, description="Only lines holding this text (any case).")
    ] = None,
    stream: Annotated[Literal["stdout", "stderr"] | None, Query()] = None,
    follow: Annotated[
        float, Query(ge=0, le=MAX_POLL_WAIT_SECONDS, description="With no line yet, wait up to S seconds.")
    ] = 0,
) -> LogsRead:
    """The run's log lines from `offset`, searchable. With `follow=S` and nothing new, the request is
    held until a line is stored (answered at once) or S seconds pass; pass `next_offset` on."""
    # Not a `RunTarget`: the console's log page calls this function with these arguments
    # (api/console/views/logs.py).
    run = await get_run(session, await get_project(session, project), run_id)
    with notifier.listen(run.id) as woken:  # listen first, then look: nothing slips between
        page = await service.read_logs(session, run, offset, limit, q, stream)
        if page.lines or follow == 0 or _long_ended(run):
            return page
        await commit_early(session, "the request is held for a new line: it holds no connection")
        prometheus.FOLLOWERS.inc()
        try:
            async with asyncio.timeout(follow):
                await woken.wait()
        except TimeoutError:
            return page
        finally:
            prometheus.FOLLOWERS.dec()
    await session.refresh(run)
    return await service.read_logs(session, run, page.next_offset, limit, q, stream)
