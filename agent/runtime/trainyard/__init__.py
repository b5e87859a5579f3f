"""`from trainyard import report`: a package's progress and metrics, from inside a training run.

Standard library only. Outside a run (no `TRAINYARD_SPOOL` in the environment) `report()` does
nothing; inside, it appends one JSON line to the run's spool file, which the agent tails. It costs
microseconds, never blocks and never raises into training. Under torchrun only rank 0 records.

A report that comes 50 ms or more after the one before it (an epoch's, a stage's) is formatted and
stored before `report()` returns. Reports that come faster than that (a step's) are kept in a queue,
which a thread of this module stores within 50 ms, in order; a report whose series are not plain
floats or ints (a tensor, which could change before then) is stored at once with what waits before
it. `flush()` stores what waits; so does a clean exit. A SIGKILL or a crash of the process loses at
most the last 50 ms of fast reports (docs/telemetry.md says why that trade is made).

`should_stop()` turns true once the run is asked to finish at its maximum duration: a training loop
that checks it (once an epoch, or a step) returns from `train()`, and the runner then calls `save()`,
so the model as it is then is kept (docs/runs-cut-short.md).

The spool is written through a shared mapping of the file: a line is stored into the page cache with
a `memcpy`, no system call, so it is in the file, for the agent to read and safe from a SIGKILL of
this process, once stored. The file is extended ahead of the lines, in blocks allocated on disk
before they are mapped (a full disk is an error then, never a SIGBUS at a store); the lines end at
the first NUL byte, and the file is cut back to its lines when the process exits. One process writes
a spool (an exclusive `flock` while it holds it): another that reports into it (a forked child, a
subprocess) records nothing while the first lives, and says so once on stderr.
"""

from __future__ import annotations

import atexit
import collections
import fcntl
import itertools
import json
import math
import mmap
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__version__ = "0.2.0"
__all__ = ["__version__", "checkpoint_directory", "flush", "report", "should_stop"]

SPOOL_ENV = "TRAINYARD_SPOOL"
MAX_NAME = 128
GROWTH = 4 * 1024 * 1024  # the spool is extended this much at a time: about 25,000 reports
WINDOW = 0.05  # seconds: a report this close to the one before it waits, this long at most
QUEUE_LIMIT = 4096  # reports waiting; one more is stored at once, with them

# Formatting and storing, opening, growing, closing; never taken by a queued report. Reentrant: a
# signal handler that reports runs in the thread it interrupts, which may hold it.
_lock = threading.RLock()
_seq = itertools.count(1)
_WINDOW_NS = int(WINDOW * 1e9)
_Report = tuple[int, Any, Any, Any, Any, Any, dict[str, Any]]  # time, the counts, stage, series
_queue: collections.deque[_Report] = collections.deque()  # append and popleft are atomic
_last = 0  # time_ns() of the last report
_flusher: threading.Thread | None = None
_time_ns = time.time_ns
# The environment as CPython keeps it behind `os.environ` (encoded names and values): a lookup there
# is one dict lookup in C, where `os.environ.get` runs Python code (and raises and catches inside for
# a name that is not set). `TRAINYARD_SPOOL` is looked up at every call and compared by identity with
# the value the open spool was chosen for, so a change is seen at once; `RANK` (a torchrun worker's
# is fixed for its life) is read when the spool is chosen.
_environ: Mapping[Any, Any] = os.environ
_encode: Callable[[str], Any] = str
if isinstance(getattr(os.environ, "_data", None), dict) and callable(getattr(os.environ, "encodekey", None)):
    _environ, _encode = os.environ._data, os.environ.encodekey  # type: ignore[attr-defined]
_SPOOL_KEY = _encode(SPOOL_ENV)
_RANK_KEY = _encode("RANK")
_RANK_ZERO = (_encode(""), _encode("0"))
_UNSET = object()  # an environment value no lookup returns: the next report chooses again
# Set by the runner when the run is asked to finish (its maximum duration); whether the package ever
# asked tells the runner whether to interrupt `train()` or let it return by itself.
_stop_asked = threading.Event()
_stop_checked = False


class _Spool:
    """What this process writes to: the spool chosen for a value of TRAINYARD_SPOOL, or nothing."""

    __slots__ = ("fd", "map", "path")

    def __init__(self, path: object, mapping: mmap.mmap | None = None, fd: int = -1) -> None:
        self.path, self.map, self.fd = path, mapping, fd


_out = _Spool(None)  # outside a run: no TRAINYARD_SPOOL
_warned: set[object] = set()


def _switch() -> _Spool:
    """The spool for the environment as it is now: the open one kept, closed or another opened."""
    global _out
    with _lock:
        path, rank = _environ.get(_SPOOL_KEY), _environ.get(_RANK_KEY)
        old = _out
        if path is old.path:
            return old  # another thread chose it
        records = bool(path) and (rank is None or rank.strip() in _RANK_ZERO)
        if records and old.map is not None and path == old.path:
            _out = _Spool(path, old.map, old.fd)  # the same file under a new value: kept
            return _out
        _drain(old)
        _close(old)
        mapping, fd = _open(path) if records else (None, -1)
        _out = _Spool(path, mapping, fd)
        return _out


def _open(path: Any) -> tuple[mmap.mmap | None, int]:
    """The spool mapped for writing from the end of its lines, or nothing (why is said on stderr)."""
    fd = -1
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(path, "another process of this run records into its spool: this one does not")
            os.close(fd)
            return None, -1
        size = os.fstat(fd).st_size
        os.posix_fallocate(fd, size, GROWTH)
        mapping = mmap.mmap(fd, size + GROWTH)
        # The lines end at the first NUL: a spool of an earlier process (one killed, or one that wrote
        # before this one) is continued after its last byte.
        end = mapping.find(b"\0")
        mapping.seek(end if end >= 0 else size + GROWTH)
        _start_flusher()
        return mapping, fd
    except Exception as error:
        _say(path, f"its spool cannot be written ({error}): reports are dropped")
        if fd >= 0:
            os.close(fd)
        return None, -1


def _say(path: object, message: str) -> None:
    if path not in _warned:
        _warned.add(path)
        print(f"trainyard: process {os.getpid()}: {message}", file=sys.stderr, flush=True)


def _write(out: _Spool, data: bytes) -> None:
    """Store `data` (whole lines) at the end of the spool, extending it when it does not fit (the
    caller holds the lock)."""
    mapping = out.map
    if mapping is None or mapping.closed:
        return  # the spool was closed: the environment changed
    try:
        mapping.write(data)  # a memcpy at the mapping's position, which it moves
        return
    except ValueError:  # it does not fit
        pass
    size, more = len(mapping), max(GROWTH, len(data))
    try:
        os.posix_fallocate(out.fd, size, more)
        mapping.resize(size + more)
    except Exception as error:
        _say(out.path, f"its spool cannot grow ({error}): reports are dropped until it can")
        return
    mapping.write(data)


def _drain(out: _Spool, last: _Report | None = None) -> None:
    """Store the queued reports, in order, then `last` (the caller holds the lock)."""
    lines = []
    while _queue:
        lines.append(_line(*_queue.popleft()))
    if last is not None:
        lines.append(_line(*last))
    if lines:
        _write(out, b"".join(lines))


def _flush_forever() -> None:
    while True:
        time.sleep(WINDOW)
        if _queue:
            with _lock:
                _drain(_out)


def _start_flusher() -> None:
    global _flusher
    if _flusher is None:
        _flusher = threading.Thread(target=_flush_forever, name="trainyard report", daemon=True)
        _flusher.start()


def flush() -> None:
    """Store the reports that wait (those that came less than 50 ms after the one before them)."""
    try:
        with _lock:
            _drain(_out)
    except Exception:
        return


def should_stop() -> bool:
    """True once the run is asked to finish (its maximum duration is reached): return from `train()`
    soon, and the runner calls `save()` within the stop's grace. False outside a run and until then.

    A package that calls it at least once is trusted to return by itself; one that never does has
    `train()` interrupted at the stop instead (the runner raises in it), and is saved all the same.
    """
    global _stop_checked
    _stop_checked = True
    return _stop_asked.is_set()


def _ask_to_stop() -> bool:
    """The runner's side of `should_stop()`: turn it true; whether the package checks it."""
    _stop_asked.set()
    return _stop_checked


def _close(out: _Spool) -> None:
    """Stop writing `out`'s spool and cut the file back to its lines."""
    mapping, fd = out.map, out.fd
    out.map, out.fd = None, -1
    if mapping is None:
        return
    try:
        hint = mapping.tell()
        mapping.seek(len(mapping))  # a store another thread is about to make fails now (ValueError)
        end = mapping.find(b"\0", hint)
        mapping.close()
        os.ftruncate(fd, end if end >= 0 else hint)
    except Exception:
        pass
    finally:
        os.close(fd)


def _at_exit() -> None:
    with _lock:
        _drain(_out)
        _close(_out)


atexit.register(_at_exit)


def _after_fork_in_child() -> None:
    # The child shares the parent's mapping and lock; it lets go of both (closing its copies leaves
    # the parent's untouched) and chooses again at its first report. A lock held by another thread at
    # fork() would never be released in the child: a new one. The queue is the parent's to store, and
    # the flusher thread was not forked.
    global _lock, _out, _flusher, _last
    _lock = threading.RLock()
    _queue.clear()
    _flusher, _last = None, 0
    out, _out = _out, _Spool(_UNSET)
    if out.map is not None:
        out.map.close()
        os.close(out.fd)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _number(value: object) -> float | None:
    """`value` as a finite float, or None (strings and anything non-numeric are dropped)."""
    if value is None or isinstance(value, str | bytes | bytearray):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]  # ints, numpy scalars, 0-d tensors
    except Exception:
        return None
    return number if math.isfinite(number) else None


def _count(value: object) -> int | float | None:
    """An epoch or step as given when it is a finite number (ints stay ints), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return _number(value)


def _json_count(value: object) -> str:
    if value is None:
        return "null"
    number = _count(value)
    return "null" if number is None else repr(number)


def _counts(epoch: object, total_epochs: object, step: object, total_steps: object) -> str:
    return (
        f'"epoch":{_json_count(epoch)},"total_epochs":{_json_count(total_epochs)},'
        f'"step":{_json_count(step)},"total_steps":{_json_count(total_steps)},'
    )


def _known(name: object) -> tuple[str, object, str, bool]:
    """A series name first seen: its JSON, kept (up to 10,000 names)."""
    found = (json.dumps(str(name)[:MAX_NAME]), _NOTHING, "", len(_names) < 10_000)
    if found[3]:
        _names[name] = found
    return found


# A loop reports the same few names again and again, often with the same float object (a constant, a
# learning rate the optimiser holds): per name, its JSON, the first float written under it, that
# float's text, and whether the name is kept here. A float's repr (its shortest round-trip digits) is
# the dearest part of the line, some 9 us in a loop that leaves the caches cold; the same object again
# is written from its text. Only the first is kept: a value that changes at every call (a loss) would
# pay a store at every call for nothing.
_NOTHING = object()
_names: dict[object, tuple[str, object, str, bool]] = {}
_NO_COUNTS = '"epoch":null,"total_epochs":null,"step":null,"total_steps":null,'


def report(
    epoch: int | None = None,
    total_epochs: int | None = None,
    step: int | None = None,
    total_steps: int | None = None,
    stage: str | None = None,
    **series: float,
) -> None:
    """Record progress (`epoch`/`step` of their totals, `stage`) and any named series (`loss=0.3`)."""
    global _last
    try:
        out = _out
        if _environ.get(_SPOOL_KEY) is not out.path:
            out = _switch()
        if out.map is None:
            return
        now = _time_ns()
        if now - _last < _WINDOW_NS and len(_queue) < QUEUE_LIMIT:
            _last = now
            for value in series.values():
                if type(value) is not float and type(value) is not int:
                    break  # a tensor, say: read now, it could change before the queue is stored
            else:
                _queue.append((now, epoch, total_epochs, step, total_steps, stage, series))
                return
        _last = now
        with _lock:
            _drain(out, (now, epoch, total_epochs, step, total_steps, stage, series))
    except Exception:
        return


def _line(
    now: int, epoch: Any, total_epochs: Any, step: Any, total_steps: Any, stage: Any, series: dict[str, Any]
) -> bytes:
    """A report's JSON line (b"" for one that cannot be written)."""
    try:
        # JSON written by hand, in as few steps as will do (json.dumps of the record cost as much as
        # everything else together).
        values = []
        for name, value in series.items():
            known = _names.get(name) or _known(name)
            if value is known[1]:  # the very float written last time
                values.append(known[2])
                continue
            number: float | None = value
            if type(value) is not float or value - value != 0.0:  # not a finite float: look closer
                number = _number(value)
                if number is None:
                    continue
            text = f"{known[0]}:{number!r}"
            if known[1] is _NOTHING and known[3] and type(value) is float:
                _names[name] = (known[0], value, text, True)  # one store: never half an update
            values.append(text)
        if epoch is None and total_epochs is None and type(step) is int and type(total_steps) is int:
            counts = f'"epoch":null,"total_epochs":null,"step":{step},"total_steps":{total_steps},'
        elif epoch is None and total_epochs is None and step is None and total_steps is None:
            counts = _NO_COUNTS
        else:
            counts = _counts(epoch, total_epochs, step, total_steps)
        named = "null" if stage is None else json.dumps(str(stage)[:MAX_NAME])
        # The time in integer nanoseconds with an exponent (a JSON number: the reader gets the float
        # seconds): the cheapest exact text of it.
        return (
            f'{{"t":{now}e-9,"seq":{next(_seq)},{counts}"stage":{named},"series":{{{",".join(values)}}}}}\n'
        ).encode()
    except Exception:
        return b""


def checkpoint_directory() -> str | None:
    """The folder a package keeps its checkpoints in, or None outside a run.

    It survives the run: when the run fails or is stopped, the agent uploads what is in it, and a
    restart of that run finds it here again, filled, before `train()` begins (empty when the run
    starts over). Write each checkpoint whole (to a temporary name, then `os.replace`), so that a
    stop in the middle of a write leaves the previous one (docs/pipelines.md)."""
    return os.environ.get("TRAINYARD_CHECKPOINT_DIRECTORY") or None
