"""`trainyard runs` and `trainyard logs`: a process's executions, followed live, and their output."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from cli import download, output
from cli.client import Patience, segment
from cli.commands._listing import listed
from cli.errors import ApiError, Unreachable
from cli.follow import follow, wait_seconds
from cli.options import JsonOpt, LimitOpt, ProjectOpt, api, project
from shared.enums import ENDED_RUN_STATUSES

runs = typer.Typer(help="Runs: one execution of a process each, with status, progress, metrics and logs.")

RunArg = Annotated[str, typer.Argument(help="The run's id.")]
LOG_PAGE = 1000


def _progress(r: dict[str, Any]) -> str:
    return "-" if r.get("progress") is None else f"{r['progress'] * 100:.0f}%"


def _fields(r: dict[str, Any]) -> list[tuple[str, object]]:
    return [
        ("id", r["id"]),
        ("number", r["number"]),
        ("process", r["process_id"]),
        ("machine", r["machine"] + (" (agent offline)" if r["agent_offline"] else "")),
        ("status", output.status_text(r["status"])),
        ("reason", r["reason_code"] or "-"),
        ("stage", r["stage"] or "-"),
        ("progress", _progress(r)),
        ("elapsed", output.duration(r["elapsed_seconds"])),
        ("eta", output.duration(r["eta_seconds"])),
        ("created", output.when(r["created_at"])),
        ("ended", output.when(r["ended_at"]) or "-"),
        ("detail", r["detail"].strip().splitlines()[-1] if r["detail"].strip() else "-"),
    ]


@runs.command("list")
def runs_list(
    process: Annotated[str | None, typer.Option("--process", help="Only this process's runs.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only those in this status.")] = None,
    project_name: ProjectOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The project's runs (or one process's)."""
    base = f"/projects/{segment(project(project_name))}"
    path = f"{base}/processes/{segment(process)}/runs" if process else f"{base}/runs"
    listed(
        path,
        params={"status": status} if status else None,
        limit=limit,
        as_json=as_json,
        columns=[
            ("ID", lambda r: r["id"]),
            ("#", lambda r: r["number"]),
            ("MACHINE", lambda r: r["machine"]),
            ("STATUS", lambda r: output.status_text(r["status"])),
            ("STAGE", lambda r: r["stage"] or "-"),
            ("PROGRESS", _progress),
            ("ELAPSED", lambda r: output.duration(r["elapsed_seconds"])),
            ("CREATED", lambda r: output.when(r["created_at"])),
        ],
        empty="no runs yet: `trainyard processes start ID`",
    )


@runs.command("show")
def runs_show(run_id: RunArg, project_name: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """One run: status, reason, stage, progress, elapsed and ETA."""
    with api() as client:
        found = client.get(f"/projects/{segment(project(project_name))}/runs/{segment(run_id)}")
    if as_json:
        output.print_json(found)
    else:
        output.fields(_fields(found))


@runs.command("artifact")
def runs_artifact(
    run_id: RunArg,
    path: Annotated[
        str, typer.Argument(help="The file's path in the run's artifacts folder (plots/curve.csv).")
    ],
    output_path: download.OutputOpt = None,
    project_name: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Save a file the run wrote into its artifacts folder, checked against its sha256."""
    route = f"/projects/{segment(project(project_name))}/runs/{segment(run_id)}/artifacts/"
    route += "/".join(segment(part) for part in path.split("/"))
    # The file's own name, here: no folder of the run's, nothing a shell or a filesystem reads as a path.
    name = "".join(c for c in path.rpartition("/")[2] if c.isprintable() and c not in "\\:")
    name = name if name not in ("", ".", "..") else "artifact"
    with api() as client:
        saved = download.save(client, route, download.target(output_path, name), quiet=as_json)
    download.report(saved, as_json)


@runs.command("follow")
def runs_follow(run_id: RunArg, project_name: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Follow a run live until it ends: status, stage, progress with elapsed and ETA, the latest
    learning rate, loss and accuracy. Exit 0 succeeded, 1 failed, 2 stopped. With --json, each new
    state of the run as one JSON line."""
    with api() as client:
        code = follow(client, project(project_name), run_id, as_json=as_json)
    raise typer.Exit(code)


def logs(
    run_id: RunArg,
    follow_lines: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ended.")
    ] = False,
    grep: Annotated[
        str | None, typer.Option("--grep", help="Only lines holding this text (any case).")
    ] = None,
    stream: Annotated[
        Literal["stdout", "stderr"] | None, typer.Option("--stream", help="Only this stream.")
    ] = None,
    project_name: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A run's log lines, oldest first (each line as JSON with --json)."""
    path = f"/projects/{segment(project(project_name))}/runs/{segment(run_id)}/logs"
    params: dict[str, Any] = {"limit": LOG_PAGE}
    if grep:
        params["q"] = grep
    if stream:
        params["stream"] = stream
    offset = 0
    active = False  # the last page said the run goes on: only then is a read held for new lines
    patience = Patience(output.note)
    with api() as client:
        while True:
            held = wait_seconds() if follow_lines and active else 0
            try:
                page = client.get(path, {**params, "offset": offset, "follow": held}, timeout=held + 30.0)
            except (Unreachable, ApiError) as error:
                if not follow_lines:
                    raise
                patience.bear(error)
                active = False  # it may have ended meanwhile: look before holding again
                continue
            patience = Patience(output.note)
            for line in page["lines"]:
                if as_json:
                    output.print_json_line(line)
                else:
                    output.write_line(line["text"])
            offset = page["next_offset"]
            active = page["status"] not in ENDED_RUN_STATUSES
            if len(page["lines"]) < LOG_PAGE and not (follow_lines and active):
                break
