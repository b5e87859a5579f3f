"""A run's telemetry, from its files on disk to the API, exactly once (docs/telemetry.md).

The run's files are the spool: `spool.jsonl` (what `trainyard.report()` appends) and the bounded
`stdout.log`/`stderr.log` the runner writes. `RunTelemetry` cuts them into batches at whole lines and
ships them with a per-run `seq`. Before a batch is sent, its boundaries (byte ranges of the three
files) and the progress it carries are written to `telemetry.json` in the run folder, atomically, so a
batch sent again after an agent restart has the same seq and the same content, and the API (which
stores each seq once, in order) neither loses nor duplicates a point. While the API is away the files
grow on disk and the client retries; everything arrives, in order, when it is back.
"""

import asyncio
import contextlib
import json
import logging
import math
import os
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import metrics
from agent.client import ApiClient, ApiRejected
from agent.workdir import RunFolder, open_run_file
from shared.protocol import (
    MAX_LOG_LINE_CHARS,
    MAX_SERIES_NAME,
    PackedPoints,
    TelemetryBatch,
    TelemetryLogs,
)

logger = logging.getLogger(__name__)

STATE_FILE = "telemetry.json"
INTERVAL_SECONDS = 0.5
# A batch takes what was written since the last one, up to these: a few hundred points every 0.5 s
# in the steady state, 50,000 when a backlog drains, where one round trip a batch is what limits the
# rate (bench/telemetry.py). Half the protocol's MAX_TELEMETRY_POINTS: the count is estimated from the
# spool's commas. A batch holds a few MiB in memory.
BATCH_POINTS = 50_000
BATCH_LOG_BYTES = 256 * 1024
BATCH_SPOOL_BYTES = 4 * 1024 * 1024
ETA_SMOOTHING = 0.3  # weight of the newest rate in the moving average
STAMP_BYTES = len("2026-01-01T00:00:00.000000Z ")
FILES = ("spool", "stdout", "stderr")


@dataclass
class Pending:
    """A batch cut but not yet acknowledged: enough to send it again, byte for byte."""

    seq: int
    ranges: dict[str, list[int]]  # file -> [start, end)
    progress: float | None = None
    stage: str | None = None
    eta_seconds: float | None = None


@dataclass
class Tracker:
    """What the package last said of its progress, and the ETA's moving average."""

    epoch: float | None = None
    total_epochs: float | None = None
    step: float | None = None
    total_steps: float | None = None
    stage: str | None = None
    at: float | None = None  # when the progress was last seen to move
    progress: float | None = None
    rate: float | None = None  # seconds per unit of progress, smoothed

    def fraction(self) -> float | None:
        for done, total in ((self.step, self.total_steps), (self.epoch, self.total_epochs)):
            if done is not None and total:
                return min(max(done / total, 0.0), 1.0)
        return None

    def observe(self, record: dict[str, Any], started_at: float) -> None:
        for name in ("epoch", "total_epochs", "step", "total_steps"):
            if _finite(record.get(name)):
                setattr(self, name, float(record[name]))
        if isinstance(record.get("stage"), str) and record["stage"]:
            self.stage = record["stage"][:128]
        progress, at = self.fraction(), record.get("t")
        if (
            progress is None
            or not isinstance(at, int | float)
            or not _finite(at)
            or progress == self.progress
        ):
            return
        if self.progress is not None and self.at is not None and progress > self.progress and at > self.at:
            recent = (at - self.at) / (progress - self.progress)
            self.rate = (
                recent if self.rate is None else ETA_SMOOTHING * recent + (1 - ETA_SMOOTHING) * self.rate
            )
        elif progress > 0 and at > started_at:
            self.rate = (at - started_at) / progress  # the average so far, until a second observation
        self.progress, self.at = progress, at

    def eta(self) -> float | None:
        if self.progress is None or self.rate is None:
            return None
        return max(0.0, self.rate * (1.0 - self.progress))


@dataclass
class State:
    acked: int = 0
    next_seq: int = 1
    offsets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILES, 0))
    pending: list[Pending] = field(default_factory=list)
    tracker: Tracker = field(default_factory=Tracker)

    @classmethod
    def load(cls, path: Path) -> "State":
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        return cls(
            acked=raw["acked"],
            next_seq=raw["next_seq"],
            offsets=raw["offsets"],
            pending=[Pending(**entry) for entry in raw["pending"]],
            tracker=Tracker(**raw["tracker"]),
        )

    def save(self, path: Path) -> None:
        temporary = path.with_name(f".{path.name}.tmp")
        with open(temporary, "w") as file:
            json.dump(asdict(self), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _read(path: Path, start: int, limit: int, *, spool: bool = False) -> bytes:
    """Up to `limit` bytes of `path` from `start`, cut after the last whole line (in the spool, of
    those before its first NUL: `report()` writes into a mapping of zeros, docs/telemetry.md)."""
    file = open_run_file(path)
    if file is None:
        return b""
    with file:
        file.seek(start)
        data = file.read(limit)
    if spool and (end := data.find(b"\0")) >= 0:
        data = data[:end]
    return data[: data.rfind(b"\n") + 1]


def spool_end(path: Path) -> int:
    """Where the lines of a spool end: its first NUL byte, found by bisection (the lines hold none, the
    zeros ahead of them are contiguous), or its size."""
    file = open_run_file(path)
    if file is None:
        return 0
    with file:
        low, high = 0, os.fstat(file.fileno()).st_size
        while low < high:  # the answer lies in [low, high]
            middle = (low + high) // 2
            file.seek(middle)
            if file.read(1) == b"\0":
                high = middle
            else:
                low = middle + 1
        return low


class RunTelemetry:
    """Ships one run's telemetry; `ship_forever()` while it runs, `flush()` once it has exited."""

    def __init__(self, client: ApiClient, run_id: uuid.UUID, folder: RunFolder, *, started_at: float) -> None:
        self.client, self.run_id, self.folder, self.started_at = client, run_id, folder, started_at
        self.paths = {"spool": folder.spool, "stdout": folder.stdout, "stderr": folder.stderr}
        self.state_path = folder.root / STATE_FILE
        self.state = State.load(self.state_path)
        self.gone = False  # the API no longer knows the run: nothing more to ship
        self._lock = asyncio.Lock()

    async def ship_forever(self) -> None:
        while True:
            await self.flush()
            await asyncio.sleep(INTERVAL_SECONDS)

    async def flush(self) -> None:
        """Ship everything written so far; returns once the API has acknowledged all of it."""
        async with self._lock:
            while not self.gone:
                if not self.state.pending and not await asyncio.to_thread(self._cut):
                    break
                await self._send(self.state.pending[0])
            metrics.set_backlog(self.run_id, await asyncio.to_thread(self._backlog))

    # Cutting a batch: its boundaries are on disk before it is ever sent.

    def _cut(self) -> bool:
        state = self.state
        ranges: dict[str, list[int]] = {}
        for name, limit in (
            ("spool", BATCH_SPOOL_BYTES),
            ("stdout", BATCH_LOG_BYTES),
            ("stderr", BATCH_LOG_BYTES),
        ):
            start = state.offsets[name]
            data = _read(self.paths[name], start, limit, spool=name == "spool")
            if name == "spool":
                data = data[: _points_cut(data)]
            if data:
                ranges[name] = [start, start + len(data)]
        if not ranges:
            return False
        tracker = replace(state.tracker)
        for record in _records(_read_range(self.paths["spool"], ranges.get("spool"))):
            tracker.observe(record, self.started_at)
        pending = Pending(state.next_seq, ranges, tracker.fraction(), tracker.stage, tracker.eta())
        cut = replace(
            state,
            next_seq=state.next_seq + 1,
            offsets={**state.offsets, **{name: end for name, (_, end) in ranges.items()}},
            pending=[*state.pending, pending],
            tracker=tracker,
        )
        # Saved before it is adopted: a failed save (a full disk) leaves the state as it was, so no
        # batch is ever sent whose bounds are not on disk (a restarted agent would cut the same seq
        # over more lines, which the API takes for a repeat: those lines would be lost).
        cut.save(self.state_path)
        self.state = cut
        return True

    def _batch(self, pending: Pending) -> TelemetryBatch:
        """The batch `pending` bounds, rebuilt from the files: the same content every time."""
        names: dict[str, int] = {}
        series: list[int] = []
        steps: list[float] = []
        values: list[float] = []
        times: list[float] = []
        for record in _records(_read_range(self.paths["spool"], pending.ranges.get("spool"))):
            at = record.get("t")
            step = next((record[k] for k in ("step", "epoch", "seq") if _finite(record.get(k))), 0)
            if (
                not isinstance(at, int | float)
                or not _finite(at)
                or not isinstance(record.get("series"), dict)
            ):
                continue
            for name, value in record["series"].items():
                if not _finite(value) or not isinstance(name, str) or not name or "\x00" in name:
                    continue
                series.append(names.setdefault(name[:MAX_SERIES_NAME], len(names)))
                steps.append(float(step))
                values.append(float(value))
                times.append(float(at))
        lines: list[tuple[float, int, str, str]] = []
        for stream in ("stdout", "stderr"):
            for order, line in enumerate(
                _read_range(self.paths[stream], pending.ranges.get(stream)).splitlines()
            ):
                at, text = _log_line(line, self.started_at)
                lines.append((at, order, stream, text))
        lines.sort(key=lambda entry: (entry[0], entry[2] == "stderr", entry[1]))
        return TelemetryBatch(
            seq=pending.seq,
            names=list(names),
            packed=PackedPoints.pack(series, steps, values, times),  # the API decodes it in microseconds
            logs=TelemetryLogs(
                stream=[entry[2] for entry in lines],
                time=[entry[0] for entry in lines],
                text=[entry[3] for entry in lines],
            ),
            progress=pending.progress,
            stage=pending.stage,
            eta_seconds=pending.eta_seconds,
        )

    # Sending.

    async def _send(self, pending: Pending) -> None:
        batch = await asyncio.to_thread(self._batch, pending)
        try:
            reply = await self.client.telemetry(self.run_id, batch)
        except ApiRejected as error:
            if error.status == 404:
                logger.warning("run %s: the API no longer knows it; its telemetry stays on disk", self.run_id)
                self.gone = True
                return
            raise
        state = self.state
        if reply.acked_through >= pending.seq or not reply.missing:
            state = replace(
                state,
                pending=[p for p in state.pending if p.seq > reply.acked_through],
                acked=max(state.acked, reply.acked_through),
            )
        elif state.pending[0].seq > reply.acked_through + 1:
            # The API lacks batches this agent no longer holds (its database was restored from a
            # backup): number what is left after what it has, so that newer telemetry flows again.
            logger.error(
                "run %s: the API has telemetry through seq %d only; seqs %d-%d are lost",
                self.run_id,
                reply.acked_through,
                reply.acked_through + 1,
                state.pending[0].seq - 1,
            )
            first = reply.acked_through + 1
            renumbered = [replace(entry, seq=seq) for seq, entry in enumerate(state.pending, start=first)]
            state = replace(state, pending=renumbered, next_seq=first + len(renumbered))
        # Saved before it is adopted, as in `_cut`: a renumbering that never reached the disk must
        # not be sent (a restarted agent would send the old numbers again, which the API takes as new).
        await asyncio.to_thread(state.save, self.state_path)
        self.state = state
        metrics.pushed()

    def _backlog(self) -> int:
        total = 0
        acked = self.state.pending[0].ranges if self.state.pending else {}
        for name, path in self.paths.items():
            with contextlib.suppress(OSError):
                end = spool_end(path) if name == "spool" else os.lstat(path).st_size
                total += max(0, end - acked.get(name, [self.state.offsets[name]])[0])
        return total


def _read_range(path: Path, span: list[int] | None) -> bytes:
    if not span:
        return b""
    file = open_run_file(path)
    if file is None:
        return b""  # a file the package removed or replaced since: nothing of it is sent
    with file:
        file.seek(span[0])
        return file.read(span[1] - span[0])


def read_spool(path: Path) -> list[dict[str, Any]]:
    """Every record of a spool, in order (its lines before the first NUL; a line that is not a JSON
    object skipped, as when shipping)."""
    file = open_run_file(path)
    if file is None:
        return []
    with file:
        data = file.read()
    end = data.find(b"\0")
    return _records(data if end < 0 else data[:end])


def _records(data: bytes) -> list[dict[str, Any]]:
    records = []
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line the package wrote by hand, or cut by a crash: skipped, the same each time
        if isinstance(record, dict):
            records.append(record)
    return records


def _points_cut(data: bytes) -> int:
    """Where to cut spool `data` (whole lines) so the batch holds about BATCH_POINTS points."""
    points = end = 0
    while end < len(data) and points < BATCH_POINTS:
        newline = data.index(b"\n", end)
        points += max(1, data.count(b",", end, newline) - 6)  # a record's fields, less the fixed ones
        end = newline + 1
    return end


def _log_line(line: bytes, default_time: float) -> tuple[float, str]:
    """A line of the runner's log: its stamp as Unix seconds, its text."""
    stamp, text = line[: STAMP_BYTES - 1], line[STAMP_BYTES:]
    try:
        at = datetime.fromisoformat(stamp.decode("ascii").replace("Z", "+00:00")).timestamp()
    except ValueError:
        at, text = default_time, line  # not the runner's format: the text whole, the same each time
    return at, text.decode("utf-8", "backslashreplace")[:MAX_LOG_LINE_CHARS]
