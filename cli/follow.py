"""Following a run until it ends: a live display for people, JSON lines for programs.

Waiting never busy-polls: each read is `GET .../runs/{run_id}?wait=S` with `If-None-Match` set to
the `ETag` of the last answer, which the API holds until the status, stage or progress change (200
with the new state) or S seconds pass (304). An API that does not know `wait` answers at once with
what the client had; then the follower waits a second before it asks again, so it works against
either. The chart's latest values come from the metrics route, from where the last read ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import httpx
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cli import output
from cli.client import Api, patiently, segment
from cli.errors import Exit
from shared.enums import ENDED_RUN_STATUSES, RunStatus

SERIES = ("learning_rate", "loss", "accuracy")
UNCHANGED_PAUSE_SECONDS = 1.0  # an API that ignores `wait` answers at once: ask once a second


class Read(Enum):
    CHANGED = "changed"  # a new state
    SAME = "same"  # the state we had, at once
    WAITED = "waited"  # 304 after `wait`: nothing changed meanwhile


EXIT_CODES = {
    RunStatus.SUCCEEDED: Exit.OK,
    RunStatus.FAILED: Exit.RUN_FAILED,
    RunStatus.STOPPED: Exit.RUN_STOPPED,
}


def wait_seconds() -> int:
    # The agent long-poll's limit is the `wait` limit too (issue 13's contract); pydantic is loaded
    # only by a command that follows.
    from shared.protocol import MAX_POLL_WAIT_SECONDS

    return MAX_POLL_WAIT_SECONDS


@dataclass
class Follower:
    """A run's latest state and metric values, read from the API as they change."""

    api: Api
    project: str
    run_id: str
    run: dict[str, Any] = field(default_factory=dict)
    read_at: float = 0.0  # monotonic time of the last answer: elapsed and ETA tick from it
    latest: dict[str, float] = field(default_factory=dict)
    metrics_since: int | None = None
    etag: str | None = None
    trouble: str | None = None  # why the API does not answer right now (retried: `patiently`)
    on_trouble: Callable[[str], None] | None = None

    def _waiting(self, why: str) -> None:
        self.trouble = why
        if self.on_trouble is not None:
            self.on_trouble(why)

    @property
    def path(self) -> str:
        return f"/projects/{segment(self.project)}/runs/{segment(self.run_id)}"

    @property
    def ended(self) -> bool:
        return self.run.get("status") in ENDED_RUN_STATUSES

    def read(self) -> Read:
        """One read of the run, held by the API until something changes, and what it found."""
        if not self.run:  # the first read: nothing to wait on
            response = self.api.send("GET", self.path, expect=(200,))
        else:
            wait = wait_seconds()
            response = self.api.send(
                "GET",
                self.path,
                params={"wait": wait},
                headers={"If-None-Match": self.etag} if self.etag else {},
                expect=(200, 304),
                timeout=httpx.Timeout(wait + 30.0, connect=10.0),
            )
        self.read_metrics()
        if response.status_code == 304:
            return Read.WAITED
        body, tag = response.json(), response.headers.get("ETag")
        same = (tag is not None and tag == self.etag) or body == self.run
        self.run, self.etag, self.read_at = body, tag, time.monotonic()
        return Read.SAME if same else Read.CHANGED

    def read_metrics(self) -> None:
        params: list[tuple[str, Any]] = [("series", name) for name in SERIES] + [("max_points", 4)]
        if self.metrics_since is not None:
            params.append(("since", self.metrics_since))
        chart = self.api.get(f"{self.path}/metrics", params)
        self.metrics_since = chart["next_since"]
        for series in chart["series"]:
            if series.get("latest") is not None:
                self.latest[series["name"]] = series["latest"]["value"]

    def states(self) -> Iterator[dict[str, Any]]:
        """The run each time it changed, the first read included, until it ended."""
        self.read()
        yield self.run
        while not self.ended:
            found = patiently(self.read, self._waiting)
            self.trouble = None
            if found is Read.CHANGED:
                yield self.run
            elif found is Read.SAME:  # answered at once with what we had: this API ignores `wait`
                time.sleep(UNCHANGED_PAUSE_SECONDS)

    def exit_code(self) -> int:
        return int(EXIT_CODES.get(RunStatus(self.run["status"]), Exit.RUN_FAILED))

    # --- what a person sees

    def ticking(self) -> tuple[float | None, float | None]:
        """Elapsed and ETA now: the last answer's, moved on by the time since it while running."""
        elapsed, eta = self.run.get("elapsed_seconds"), self.run.get("eta_seconds")
        if self.run.get("status") == RunStatus.RUNNING and self.read_at:
            since = time.monotonic() - self.read_at
            elapsed = None if elapsed is None else elapsed + since
            eta = None if eta is None else max(0.0, eta - since)
        return elapsed, eta

    def render(self) -> RenderableType:
        run = self.run
        elapsed, eta = self.ticking()
        progress = run.get("progress")
        head = Text.assemble(
            ("run ", "bold"),
            (f"#{run.get('number', '?')}", "bold"),
            "  ",
            output.status_text(run.get("status")),
            "  ",
            output.text(run.get("stage") or "", "italic"),
            ("  (agent offline)", "yellow") if run.get("agent_offline") else "",
        )
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(
                total=1.0, completed=progress or 0.0, width=40, pulse=progress is None and not self.ended
            ),
            Text(f"{progress * 100:5.1f}%" if progress is not None else "    -"),
            Text(f"elapsed {output.duration(elapsed)}", "cyan"),
            Text(f"ETA {output.duration(eta) if eta is not None else '-'}", "cyan"),
        )
        values = Text.assemble(
            *(
                part
                for name in SERIES
                for part in (
                    (name.replace("_", " ") + " ", "dim"),
                    (_value(self.latest.get(name)), "bold"),
                    "   ",
                )
            )
        )
        where = output.text(f"on {run.get('machine', '?')} · {self.project} · {self.run_id}", "dim")
        if self.trouble:
            return Group(head, bar, values, where, output.text(f"retrying: {self.trouble}", "yellow"))
        return Group(head, bar, values, where)

    def summary(self) -> str:
        run = self.run
        elapsed = output.duration(run.get("elapsed_seconds"))
        reason = f" ({run['reason_code']})" if run.get("reason_code") else ""
        return f"Run #{run.get('number')} {run.get('status')}{reason} after {elapsed}."

    def line(self) -> str:
        """One line per change, for a log file or CI (no live display there)."""
        run = self.run
        progress = run.get("progress")
        parts = [
            str(run.get("status")),
            run.get("stage") or "",
            f"{progress * 100:.0f}%" if progress is not None else "",
        ]
        parts += [f"{name} {_value(self.latest[name])}" for name in SERIES if name in self.latest]
        return "  ".join(output.safe(part) for part in parts if part)


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def follow(api: Api, project: str, run_id: str, *, as_json: bool, console: Console | None = None) -> int:
    """Follow the run to its end; the exit code its status means (0 succeeded, 1 failed, 2 stopped)."""
    follower = Follower(api, project, run_id)
    console = console or output.err
    if as_json:
        for state in follower.states():
            output.print_json_line(state)
    elif console.is_interactive:
        with Live(get_renderable=follower.render, console=console, refresh_per_second=4, transient=False):
            for _ in follower.states():
                pass
    else:
        follower.on_trouble = lambda why: console.print(Text(f"retrying: {output.safe(why)}"))
        for _ in follower.states():
            console.print(Text(follower.line()))
    if not as_json:
        _report(api, follower)
    return follower.exit_code()


def _report(api: Api, follower: Follower) -> None:
    """The end, on stdout: how the run ended and what it made; why it failed on stderr."""
    run = follower.run
    made = ""
    if run["status"] == RunStatus.SUCCEEDED:
        results = api.send("GET", f"{follower.path}/results", expect=(200, 404))
        outputs = (
            (results.json().get("run_summary") or {}).get("outputs") or {}
            if results.status_code == 200
            else {}
        )
        if outputs.get("version"):
            made = f" Made {outputs.get('package') or 'version'} {outputs['version']}."
    output.out.print(output.text(follower.summary() + made))
    if run["status"] != RunStatus.SUCCEEDED and run.get("detail"):
        tail = run["detail"].strip().splitlines()[-10:]
        output.err.print(
            Text("\n".join(output.safe(line) for line in tail)), style="red" if output.err.is_terminal else ""
        )
