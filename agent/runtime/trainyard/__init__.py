"""`from trainyard import report`: a package's progress and metrics, from inside a training run.

Standard library only. Outside a run (no `TRAINYARD_SPOOL` in the environment) `report()` does
nothing; inside, it appends one JSON line to the run's spool file, which the agent tails. It costs
microseconds, never blocks on anything but a local file append and never raises into training.
Under torchrun only rank 0 records.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "report"]

SPOOL_ENV = "TRAINYARD_SPOOL"
MAX_NAME = 128

_lock = threading.Lock()
_fd: int | None = None
_fd_path: object = None  # the value of TRAINYARD_SPOOL the descriptor was opened for
_seq = 0
_time_ns = time.time_ns
# The environment as CPython keeps it behind `os.environ` (encoded names and values): a lookup there
# is one dict lookup in C, where `os.environ.get` runs Python code (and raises and catches inside for
# a name that is not set). In a training loop that leaves the caches cold, the two lookups cost 10 us
# of a 36 us call. They are still made at every call: a change of the environment is seen at once.
_environ: Mapping[Any, Any] = os.environ
_encode: Callable[[str], Any] = str
if isinstance(getattr(os.environ, "_data", None), dict) and callable(getattr(os.environ, "encodekey", None)):
    _environ, _encode = os.environ._data, os.environ.encodekey  # type: ignore[attr-defined]
_SPOOL_KEY = _encode(SPOOL_ENV)
_RANK_KEY = _encode("RANK")
_RANK_ZERO = (_encode(""), _encode("0"))


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork() would never be released in the child.
    global _lock
    _lock = threading.Lock()


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
# learning rate a scheduler holds): per name, its JSON, the float last written, its text, and whether
# it is kept here. A float's repr (its shortest round-trip digits) is the dearest part of the line, some
# 5 us in a loop that leaves the caches cold; the same object again is written from its text.
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
    global _fd, _fd_path, _seq
    try:
        path = _environ.get(_SPOOL_KEY)
        if not path:
            return
        rank = _environ.get(_RANK_KEY)
        if rank is not None and rank.strip() not in _RANK_ZERO:
            return
        # JSON written by hand, in as few steps as will do: in a loop that leaves the caches cold each
        # step costs several times what it costs warm (json.dumps of the record cost as much as the rest).
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
            if type(value) is float and known[3]:
                _names[name] = (known[0], value, text, True)  # one store: never half an update
            values.append(text)
        if epoch is None and total_epochs is None and type(step) is int and type(total_steps) is int:
            counts = f'"epoch":null,"total_epochs":null,"step":{step},"total_steps":{total_steps},'
        elif epoch is None and total_epochs is None and step is None and total_steps is None:
            counts = _NO_COUNTS
        else:
            counts = _counts(epoch, total_epochs, step, total_steps)
        named = "null" if stage is None else json.dumps(str(stage)[:MAX_NAME])
        tail = f'{counts}"stage":{named},"series":{{{",".join(values)}}}}}\n'
        # The time as seconds with 6 decimals, from integers: not a float's repr.
        now = _time_ns() // 1000
        with _lock:
            fd = _fd
            if fd is None or path is not _fd_path:
                if fd is not None:
                    _fd = None
                    os.close(fd)
                fd = _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                _fd_path = path
            _seq += 1
            line = f'{{"t":{now // 1_000_000}.{now % 1_000_000:06d},"seq":{_seq},{tail}'
            os.write(fd, line.encode())  # one append: a whole line
    except Exception:
        return
