"""`trainyard processes`: a template bound to a machine, and Primo's actions on it."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli import output
from cli.client import segment
from cli.commands._listing import listed
from cli.errors import UsageProblem
from cli.follow import follow
from cli.options import JsonOpt, LimitOpt, ProjectOpt, YesOpt, api, project

processes = typer.Typer(help="Training processes: start, stop, restart, disable, enable, delete.")

ProcessArg = Annotated[str, typer.Argument(help="The process's id.")]
FollowOpt = Annotated[
    bool,
    typer.Option(
        "--follow", "-f", help="Follow the run live until it ends; exit 0 succeeded, 1 failed, 2 stopped."
    ),
]


def _latest(p: dict[str, Any]) -> str:
    run = p.get("latest_run")
    if not run:
        return "-"
    progress = run.get("progress")
    return f"#{run['number']}" + (f" {progress * 100:.0f}%" if progress is not None else "")


def _fields(p: dict[str, Any]) -> list[tuple[str, object]]:
    run = p.get("latest_run") or {}
    return [
        ("id", p["id"]),
        ("template", p["template"]),
        ("machine", p["machine"]),
        ("status", output.status_text(p["status"])),
        ("enabled", "yes" if p["enabled"] else "no"),
        ("runs", p["run_count"]),
        ("latest run", f"{run['id']} (#{run['number']}, {run['status']})" if run else "-"),
        ("restart pending", "yes" if p["restart_pending"] else "no"),
        ("created", output.when(p["created_at"])),
    ]


def _base(project_name: str | None) -> str:
    return f"/projects/{segment(project(project_name))}"


def _show(found: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.print_json(found)
    else:
        output.fields(_fields(found))


@processes.command("list")
def processes_list(
    template: Annotated[str | None, typer.Option("--template", "-t", help="Only this template's.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only those in this status.")] = None,
    project_name: ProjectOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The project's processes with their status and latest run."""
    base = _base(project_name)
    path = f"{base}/templates/{segment(template)}/processes" if template else f"{base}/processes"
    listed(
        path,
        params={"status": status} if status else None,
        limit=limit,
        as_json=as_json,
        columns=[
            ("ID", lambda p: p["id"]),
            ("TEMPLATE", lambda p: p["template"]),
            ("MACHINE", lambda p: p["machine"]),
            ("STATUS", lambda p: output.status_text(p["status"] + ("" if p["enabled"] else " (disabled)"))),
            ("RUNS", lambda p: p["run_count"]),
            ("LATEST", _latest),
        ],
        empty="no processes yet: `trainyard processes create --template NAME --machine NAME`",
    )


@processes.command("show")
def processes_show(process_id: ProcessArg, project_name: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """One process and its latest run."""
    with api() as client:
        _show(client.get(f"{_base(project_name)}/processes/{segment(process_id)}"), as_json)


@processes.command("create")
def processes_create(
    template: Annotated[str, typer.Option("--template", "-t", help="The template it runs.")],
    machine: Annotated[str, typer.Option("--machine", "-m", help="The target machine it runs on.")],
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
    project_name: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bind a template to a machine (one process per machine and template)."""
    body = {"machine": machine, "enabled": not disabled}
    with api() as client:
        made = client.post(f"{_base(project_name)}/templates/{segment(template)}/processes", body)
    _show(made, as_json)


def _act(action: str, process_id: str, project_name: str | None, as_json: bool) -> dict[str, Any]:
    base = _base(project_name)
    with api() as client:
        answer: dict[str, Any] = client.post(f"{base}/processes/{segment(process_id)}/{action}")
    if as_json:
        output.print_json(answer)
    return answer


def _said(text: str, as_json: bool) -> None:
    if not as_json:
        output.out.print(output.text(text))


@processes.command("start")
def processes_start(
    process_id: ProcessArg,
    follow_run: FollowOpt = False,
    project_name: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a new run of the process (refused while a run is active)."""
    base = _base(project_name)
    with api() as client:
        started = client.post(f"{base}/processes/{segment(process_id)}/start")
        run = started["latest_run"]
        if not follow_run:
            if as_json:
                output.print_json(started)
            else:
                output.out.print(output.text(f"Started run #{run['number']} ({run['id']}): {run['status']}."))
            return
        if not as_json:
            output.note(f"started run #{run['number']} ({run['id']}); Ctrl-C stops following, not the run")
        code = follow(client, project(project_name), run["id"], as_json=as_json)
    raise typer.Exit(code)


@processes.command("stop")
def processes_stop(process_id: ProcessArg, project_name: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Stop the active run (SIGTERM, a grace period, then SIGKILL on the machine)."""
    answer = _act("stop", process_id, project_name, as_json)
    _said(f"Stopping: the process is {answer['status']}.", as_json)


@processes.command("restart")
def processes_restart(
    process_id: ProcessArg, project_name: ProjectOpt = None, as_json: JsonOpt = False
) -> None:
    """Start again: at once after an ended run; after the active run stopped otherwise."""
    answer = _act("restart", process_id, project_name, as_json)
    pending = " (a new run starts once the active one stopped)" if answer["restart_pending"] else ""
    _said(f"Restarted: the process is {answer['status']}{pending}.", as_json)


@processes.command("disable")
def processes_disable(
    process_id: ProcessArg, project_name: ProjectOpt = None, as_json: JsonOpt = False
) -> None:
    """Disable: it refuses start, stop and restart until enabled (refused while a run is active)."""
    _act("disable", process_id, project_name, as_json)
    _said("Disabled.", as_json)


@processes.command("enable")
def processes_enable(
    process_id: ProcessArg, project_name: ProjectOpt = None, as_json: JsonOpt = False
) -> None:
    """Enable a disabled process."""
    _act("enable", process_id, project_name, as_json)
    _said("Enabled.", as_json)


@processes.command("delete")
def processes_delete(
    process_id: ProcessArg, yes: YesOpt = False, project_name: ProjectOpt = None, as_json: JsonOpt = False
) -> None:
    """Delete the process and its runs' records (refused while a run is active)."""
    base = _base(project_name)
    if not yes:
        if not typer.get_text_stream("stdin").isatty():
            raise UsageProblem("deleting asks for confirmation: pass --yes when no one is at the terminal")
        typer.confirm(f"Delete process {output.safe(process_id)}?", abort=True, err=True)
    with api() as client:
        client.delete(f"{base}/processes/{segment(process_id)}")
    if as_json:
        output.print_json({"id": process_id, "deleted": True})
    else:
        output.out.print(output.text(f"Deleted process {process_id}."))
