"""A window of a run's chart at full resolution: what a zoom reads.

The overview (`service.read_metrics`) reads each series from its rollups; a zoom asks for the points
whose step lies in `[low, high]` and gets them all when they are at most `max_points`, else the same
min/max downsampling of exactly those points (every spike of the window kept). There is no index on
`step`: the window is found by a pass over the series' rows in key order, which the database does
without handing the rows outside it to Python (bench/console.py measures it at a million points).
The console's Monitoring page is its reader; the REST route could take `low`/`high` the same way.
"""

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.models import MetricPoint, MetricSeries, Run, RunTelemetry
from api.telemetry.downsample import Point, downsample
from api.telemetry.schemas import SeriesRead
from api.telemetry.service import _series_read

_POINT = (MetricPoint.idx, MetricPoint.step, MetricPoint.value, MetricPoint.time)


async def read_window(
    session: AsyncSession, run: Run, names: list[str] | None, low: float, high: float, max_points: int
) -> list[SeriesRead]:
    """Each series (all, or those named) between steps `low` and `high`, at most `max_points` each."""
    query = select(MetricSeries).where(MetricSeries.run_id == run.id).order_by(MetricSeries.name)
    if names:
        query = query.where(MetricSeries.name.in_(names))
    found = []
    for series in (await session.scalars(query)).all():
        rows = await session.execute(
            select(*_POINT)
            .where(MetricPoint.series_id == series.id, MetricPoint.step >= low, MetricPoint.step <= high)
            .order_by(MetricPoint.idx)
        )
        points: list[Point] = [tuple(row) for row in rows]  # type: ignore[misc]
        found.append(_series_read(series, downsample(points, max_points), len(points) > max_points))
    return found


async def series_names(session: AsyncSession, run_ids: list[uuid.UUID]) -> list[str]:
    """The names of the series these runs reported, each once (what Compare offers to overlay)."""
    if not run_ids:
        return []
    rows = await session.scalars(
        select(MetricSeries.name)
        .where(MetricSeries.run_id.in_(run_ids))
        .distinct()
        .order_by(MetricSeries.name)
    )
    return list(rows)


async def stored_points(session: AsyncSession, run: Run) -> int:
    """How many points the run has stored: `next_since` of a read made now."""
    count = await session.scalar(select(RunTelemetry.point_count).where(RunTelemetry.run_id == run.id))
    return count or 0
