"""The rollups kept at ingest: the buckets a batch touches, their counts and extremes, from any start."""

from hypothesis import given
from hypothesis import strategies as st

from api.telemetry.downsample import ROLLUP_FACTOR, ROLLUP_LEVELS, rollup_extremes


def naive(first_ordinal: int, values: list[float]) -> list[tuple[int, int, int, int, int]]:
    """(level, bucket, count, where the lowest is, where the highest is), one value at a time."""
    rows = []
    for level in ROLLUP_LEVELS:
        size = ROLLUP_FACTOR**level
        members: dict[int, list[int]] = {}
        for i in range(len(values)):
            members.setdefault((first_ordinal + i) // size, []).append(i)
        for bucket, where in members.items():
            low = min(where, key=lambda i: (values[i], i))
            high = min(where, key=lambda i: (-values[i], i))
            rows.append((level, bucket, len(where), low, high))
    return rows


@given(
    st.integers(min_value=0, max_value=3 * 16**4),
    st.lists(st.sampled_from([0.0, 1.0, -2.5, 3.25, 1e300]), max_size=600)
    | st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=5000),
)
def test_rollup_extremes_match_a_value_at_a_time(first_ordinal: int, values: list[float]) -> None:
    columns = rollup_extremes(first_ordinal, values)
    assert list(zip(*columns, strict=True)) == naive(first_ordinal, values)


def test_a_batch_across_the_largest_bucket() -> None:
    values = [float(i % 7) for i in range(70_000)]
    levels, buckets, counts, lows, highs = rollup_extremes(16**4 - 5, values)
    top = [i for i, level in enumerate(levels) if level == 4]
    assert [buckets[i] for i in top] == [0, 1, 2] and [counts[i] for i in top] == [
        5,
        16**4,
        70_000 - 5 - 16**4,
    ]
    assert [(values[lows[i]], values[highs[i]]) for i in top] == [(0.0, 4.0), (0.0, 6.0), (0.0, 6.0)]
