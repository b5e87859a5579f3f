"""Reading a run's telemetry: the chart's series (downsampled from the rollups) and its log lines."""

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.models import MetricPoint, MetricRollup, MetricSeries, Run, RunLogLine, RunTelemetry
from api.models.base import utcnow
from api.telemetry.downsample import Point, assemble, downsample, merge_extremes, rollup_level
from api.telemetry.schemas import LogLineRead, LogsRead, MetricsRead, SeriesPoint, SeriesRead
from shared.enums import RunStatus

_POINT = (MetricPoint.idx, MetricPoint.step, MetricPoint.value, MetricPoint.time)


def _number(value: float) -> float | int:
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def elapsed_seconds(run: Run) -> float | None:
    if run.launched_at is None:
        return None
    return ((run.ended_at or utcnow()) - run.launched_at).total_seconds()


async def _points(session: AsyncSession, statement: Select[int, float, float, float]) -> list[Point]:
    return [tuple(row) for row in await session.execute(statement)]  # type: ignore[misc]


def _of(series_id: int) -> Select[int, float, float, float]:
    return select(*_POINT).where(MetricPoint.series_id == series_id)


async def _series_points(
    session: AsyncSession, series: MetricSeries, max_points: int, since: int | None
) -> tuple[list[Point], bool]:
    if since is not None:
        points = await _points(
            session, _of(series.id).where(MetricPoint.idx >= since).order_by(MetricPoint.idx)
        )
        return downsample(points, max_points), len(points) > max_points
    if series.count <= max_points:
        return await _points(session, _of(series.id).order_by(MetricPoint.idx)), False
    buckets = (max_points - 2) // 2
    level = rollup_level(series.count, buckets)
    if level is None:  # fewer than 16 points a bucket: the raw points are few enough to read
        return downsample(await _points(session, _of(series.id).order_by(MetricPoint.idx)), max_points), True
    first = await _points(session, _of(series.id).order_by(MetricPoint.idx).limit(1))
    last = await _points(session, _of(series.id).order_by(MetricPoint.idx.desc()).limit(1))
    rows = await session.execute(
        select(
            MetricRollup.min_idx,
            MetricRollup.min_step,
            MetricRollup.min_value,
            MetricRollup.min_time,
            MetricRollup.max_idx,
            MetricRollup.max_step,
            MetricRollup.max_value,
            MetricRollup.max_time,
        )
        .where(MetricRollup.series_id == series.id, MetricRollup.level == level)
        .order_by(MetricRollup.bucket)
    )
    summaries = [((r[0], r[1], r[2], r[3]), (r[4], r[5], r[6], r[7])) for r in rows]
    return assemble(first[0], merge_extremes(summaries, buckets), last[0]), True


def _series_read(series: MetricSeries, points: Sequence[Point], downsampled: bool) -> SeriesRead:
    latest = None
    if series.last_value is not None and series.last_step is not None and series.last_time is not None:
        latest = SeriesPoint(step=_number(series.last_step), value=series.last_value, time=series.last_time)
    return SeriesRead(
        name=series.name,
        count=series.count,
        latest=latest,
        downsampled=downsampled,
        step=[_number(p[1]) for p in points],
        value=[p[2] for p in points],
        time=[p[3] for p in points],
    )


async def read_metrics(
    session: AsyncSession, run: Run, names: list[str] | None, max_points: int, since: int | None
) -> MetricsRead:
    """Each series (all, or those named) in at most `max_points` points, the extremes kept; with
    `since`, only the points stored from that place of the run on (`next_since` of an earlier read)."""
    query = select(MetricSeries).where(MetricSeries.run_id == run.id).order_by(MetricSeries.name)
    if names:
        query = query.where(MetricSeries.name.in_(names))
    next_since = await session.scalar(select(RunTelemetry.point_count).where(RunTelemetry.run_id == run.id))
    series = []
    for found in (await session.scalars(query)).all():
        points, downsampled = await _series_points(session, found, max_points, since)
        series.append(_series_read(found, points, downsampled))
    return MetricsRead(
        run_id=run.id,
        status=RunStatus(run.status),
        progress=run.progress,
        stage=run.stage,
        elapsed_seconds=elapsed_seconds(run),
        eta_seconds=run.eta_seconds,
        next_since=next_since or 0,
        series=series,
    )


async def read_logs(
    session: AsyncSession,
    run: Run,
    offset: int,
    limit: int,
    search: str | None,
    stream: str | None,
) -> LogsRead:
    """Lines from `offset` on, oldest first, optionally only those of one stream or holding `search`."""
    total = await session.scalar(select(RunTelemetry.log_count).where(RunTelemetry.run_id == run.id)) or 0
    query = select(RunLogLine).where(RunLogLine.run_id == run.id, RunLogLine.idx >= offset)
    if stream is not None:
        query = query.where(RunLogLine.stream == stream)
    if search:
        query = query.where(RunLogLine.text.icontains(search, autoescape=True))
    lines = (await session.scalars(query.order_by(RunLogLine.idx).limit(limit))).all()
    if len(lines) == limit:
        next_offset = lines[-1].idx + 1
    else:  # looked to the end: every line before `total` was seen
        next_offset = max(offset, total, lines[-1].idx + 1 if lines else 0)
    return LogsRead(
        run_id=run.id,
        status=RunStatus(run.status),
        total=max(total, next_offset),
        next_offset=next_offset,
        lines=[
            LogLineRead(
                offset=line.idx,
                stream=line.stream,
                time=datetime.fromtimestamp(line.time, UTC),
                text=line.text,
            )
            for line in lines
        ],
    )
