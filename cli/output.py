"""What the command prints: the API's JSON for programs (`--json`), tables and lines for people.

Results go to stdout; progress, live displays and errors to stderr, so stdout stays parseable while a
person watches. Names, details and log lines come from other people (a package's author, a
dataset's uploader): they are printed as text, never as rich markup, with control characters shown
escaped, so no name can restyle the terminal, move its cursor or hide what follows.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Piped, a table is as wide as it needs (up to 240 columns) rather than folded at 80: a script or a
# person with `| less` gets whole ids.
out = Console(
    highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 240
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# C0 and C1 controls (tab excepted), DEL, and the bidirectional overrides and isolates that reorder text.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def safe(value: object) -> str:
    """`value` as one line a terminal shows literally: `\\x1b`, `\\n`, `\\u202e` instead of the codes."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def text(value: object, style: str = "") -> Text:
    return Text(safe("" if value is None else value), style=style)


def print_json(value: Any) -> None:
    """The API's JSON on stdout, as it came: keys in its order, non-ASCII as is."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def print_json_line(value: Any) -> None:
    """One JSON document per line (a stream: a followed run's states, log lines)."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def write_line(value: str) -> None:
    """One line of someone else's text (a log line) as it is, its control characters escaped."""
    sys.stdout.write(safe(value) + "\n")


def error_line(message: str) -> None:
    err.print(Text(f"error: {safe(message)}"), style="red" if err.is_terminal else "")


def note(message: str) -> None:
    """A remark for the person at the terminal (stderr: never mixed into a result)."""
    err.print(Text(safe(message)), style="dim")


STATUS_STYLES = {
    "created": "dim",
    "starting": "yellow",
    "running": "cyan",
    "stopping": "yellow",
    "succeeded": "green",
    "failed": "red",
    "stopped": "magenta",
}


def status_text(status: str | None) -> Text:
    return text(status or "", STATUS_STYLES.get(status or "", ""))


def when(value: str | None) -> str:
    """An API timestamp as a person reads it: local date and time to the second."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def size(count: int | None) -> str:
    if count is None:
        return ""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


Column = tuple[str, Callable[[dict[str, Any]], object]]


def table(rows: Iterable[dict[str, Any]], columns: Sequence[Column], *, empty: str = "nothing here") -> None:
    """A table of `rows`, one column per (heading, cell function); a note on stderr when empty."""
    rows = list(rows)
    if not rows:
        note(empty)
        return
    grid = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    for heading, _ in columns:
        grid.add_column(heading, overflow="fold", no_wrap=heading == "ID")  # an id is copied whole
    for row in rows:
        grid.add_row(*(cell if isinstance(cell := get(row), Text) else text(cell) for _, get in columns))
    out.print(grid)


def fields(pairs: Sequence[tuple[str, object]]) -> None:
    """One object as `name: value` lines."""
    grid = Table(box=None, show_header=False, pad_edge=False, show_edge=False)
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name, value in pairs:
        grid.add_row(name, value if isinstance(value, Text) else text(value))
    out.print(grid)
