"""A run's telemetry: metric series and points, their pre-aggregated levels, and log lines.

Points and rollups are `WITHOUT ROWID` on SQLite: the primary key is the table, so an insert writes
one b-tree, not a table and an index. Times are Unix seconds (floats), not timestamps: a point costs
8 bytes of time instead of a 26-character text on SQLite, and the chart wants numbers anyway.
"""

import uuid
from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, utcnow


class RunTelemetry(Base):
    """Per run: the last batch stored (`acked_through`) and the counters that number what comes next."""

    __tablename__ = "run_telemetry"

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    acked_through: Mapped[int] = mapped_column(Integer, default=0)
    point_count: Mapped[int] = mapped_column(Integer, default=0)
    log_count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricSeries(Base):
    """One named curve of a run, with its point count and its latest point."""

    __tablename__ = "metric_series"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    count: Mapped[int] = mapped_column(Integer, default=0)
    last_step: Mapped[float | None] = mapped_column(Float, default=None)
    last_value: Mapped[float | None] = mapped_column(Float, default=None)
    last_time: Mapped[float | None] = mapped_column(Float, default=None)


class MetricPoint(Base):
    """(series, idx) -> (step, value, time); `idx` numbers the run's points 0, 1, 2... as stored."""

    __tablename__ = "metric_points"
    __table_args__ = {"sqlite_with_rowid": False}

    series_id: Mapped[int] = mapped_column(
        ForeignKey("metric_series.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    step: Mapped[float] = mapped_column(Float)
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[float] = mapped_column(Float)


class MetricRollup(Base):
    """The min and max point of each bucket of 16**level consecutive points of a series, kept at ingest
    so a chart of millions of points reads thousands of rows (docs/telemetry.md)."""

    __tablename__ = "metric_rollups"
    __table_args__ = {"sqlite_with_rowid": False}

    series_id: Mapped[int] = mapped_column(
        ForeignKey("metric_series.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(Integer)
    min_idx: Mapped[int] = mapped_column(Integer)
    min_step: Mapped[float] = mapped_column(Float)
    min_value: Mapped[float] = mapped_column(Float)
    min_time: Mapped[float] = mapped_column(Float)
    max_idx: Mapped[int] = mapped_column(Integer)
    max_step: Mapped[float] = mapped_column(Float)
    max_value: Mapped[float] = mapped_column(Float)
    max_time: Mapped[float] = mapped_column(Float)


class RunLogLine(Base):
    """A line of the run's stdout or stderr; `idx` numbers the run's lines 0, 1, 2... as stored."""

    __tablename__ = "run_log_lines"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    stream: Mapped[str] = mapped_column(String(8))
    time: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)
