"""Min/max downsampling: each bucket keeps its lowest and its highest point, so no spike is lost.

A point is `(idx, step, value, time)`, `idx` being its place in the run. Every function keeps points in
`idx` order; the first and the last point of what they are given are kept exactly.
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

Point = tuple[int, float, float, float]
# (idx, step, value, time) of the lowest point, then of the highest: a bucket's summary.
Extremes = tuple[Point, Point]

ROLLUP_FACTOR = 16
ROLLUP_LEVELS = (1, 2, 3, 4)  # buckets of 16, 256, 4,096 and 65,536 points


def bucket_extremes(points: Sequence[Point], buckets: int) -> list[Extremes]:
    """The points cut into `buckets` runs of nearly equal length, each summed up by its extremes."""
    n = len(points)
    values = [point[2] for point in points]
    found: list[Extremes] = []
    for b in range(buckets):
        start, end = b * n // buckets, (b + 1) * n // buckets
        if start == end:
            continue
        chunk = values[start:end]
        low = min(chunk)
        high = max(chunk)
        found.append((points[start + chunk.index(low)], points[start + chunk.index(high)]))
    return found


def merge_extremes(rows: Sequence[Extremes], buckets: int) -> list[Extremes]:
    """Summaries (in order) merged into at most `buckets` summaries, keeping each one's extremes."""
    n = len(rows)
    merged: list[Extremes] = []
    for b in range(buckets):
        start, end = b * n // buckets, (b + 1) * n // buckets
        if start == end:
            continue
        part = rows[start:end]
        lows = [row[0][2] for row in part]
        highs = [row[1][2] for row in part]
        merged.append((part[lows.index(min(lows))][0], part[highs.index(max(highs))][1]))
    return merged


def assemble(first: Point, extremes: Sequence[Extremes], last: Point) -> list[Point]:
    """First, each bucket's extremes in the order they happened, last; each point once."""
    out = [first]
    seen = {first[0], last[0]}
    for low, high in extremes:
        for point in sorted((low, high)):
            if point[0] not in seen:
                seen.add(point[0])
                out.append(point)
    if last[0] != first[0]:
        out.append(last)
    return out


def downsample(points: Sequence[Point], max_points: int) -> list[Point]:
    """At most `max_points` of `points` (>= 4): exact first and last, each bucket's min and max."""
    if len(points) <= max_points:
        return list(points)
    inner = points[1:-1]
    return assemble(points[0], bucket_extremes(inner, (max_points - 2) // 2), points[-1])


def rollup_level(count: int, buckets: int) -> int | None:
    """The coarsest rollup level holding at least half of `buckets` rows for `count` points (so a chart
    reads at most 8 rows a bucket, and gets at least half the buckets asked), else None: then the raw
    points are few enough to read."""
    chosen = None
    for level in ROLLUP_LEVELS:
        if 2 * -(-count // ROLLUP_FACTOR**level) >= buckets:
            chosen = level
    return chosen


Ints = NDArray[np.int64]
Floats = NDArray[np.float64]


@dataclass(frozen=True)
class Rollups:
    """Rollup rows as columns: the group (series) of each, its level and bucket, how many of the new
    values fall in it, and where (in the values given) its lowest and its highest are."""

    group: Ints
    level: Ints
    bucket: Ints
    count: Ints
    low: Ints
    high: Ints


def _first_extremes(reduce: np.ufunc, values: Floats, starts: Ints) -> Ints:
    """Per run of `values` (the runs begin at `starts`), where its extreme is, the first of equals."""
    lengths = np.empty_like(starts)
    lengths[:-1] = starts[1:] - starts[:-1]
    lengths[-1] = len(values) - starts[-1]
    found = np.flatnonzero(values == np.repeat(reduce.reduceat(values, starts), lengths))
    return found[np.searchsorted(found, starts)]


def rollup_rows(firsts: Ints, counts: Ints, values: Floats) -> Rollups:
    """The rollup buckets the new values of several series touch, level by level, as columns.

    `values` holds them grouped by series: group g is `counts[g]` values, whose ordinals in their series
    are firsts[g], firsts[g] + 1, ... (the series held firsts[g] points before them). These rows are
    merged with what is stored. Level 1 is found from the values, each next level from the rows of the
    one below (16 of its buckets make one); the work is numpy's, over all the series at once."""
    n = len(values)
    group = np.repeat(np.arange(len(counts)), counts)
    # The level below as runs, each keyed by its bucket: for level 1, the values keyed by their ordinal.
    key = np.arange(n) + np.repeat(firsts - (np.cumsum(counts) - counts), counts)
    low = high = np.arange(n)
    lows = highs = values
    count = np.ones(n, dtype=np.int64)
    levels: list[Rollups] = []
    for level in ROLLUP_LEVELS if n else ():
        key = key // ROLLUP_FACTOR
        new = np.ones(len(key), dtype=bool)
        new[1:] = (key[1:] != key[:-1]) | (group[1:] != group[:-1])
        starts = np.flatnonzero(new)
        low_runs = _first_extremes(np.minimum, lows, starts)
        high_runs = _first_extremes(np.maximum, highs, starts)
        low, high, lows, highs = low[low_runs], high[high_runs], lows[low_runs], highs[high_runs]
        group, key, count = group[starts], key[starts], np.add.reduceat(count, starts)
        levels.append(Rollups(group, np.full(len(key), level), key, count, low, high))
    return Rollups(
        *(
            np.concatenate([getattr(rows, f.name) for rows in levels]) if levels else np.zeros(0, np.int64)
            for f in fields(Rollups)
        )
    )


def rollup_extremes(
    first_ordinal: int, values: Sequence[float]
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """`rollup_rows` of one series, as lists: level, bucket, count, where the lowest and the highest are."""
    rows = rollup_rows(
        np.array([first_ordinal]), np.array([len(values)]), np.asarray(values, dtype=np.float64)
    )
    return (
        rows.level.tolist(),
        rows.bucket.tolist(),
        rows.count.tolist(),
        rows.low.tolist(),
        rows.high.tolist(),
    )
