"""The options every command shares, and how a command finds its API, token and project."""

from __future__ import annotations

from typing import Annotated

import httpx
import typer

from cli import config
from cli.client import Api, connect
from cli.errors import CliError, UsageProblem


def _complete_projects(incomplete: str) -> list[str]:
    """The projects the saved login sees, for the shell's completion; nothing when it cannot ask
    (completion must never print an error into a command line being typed)."""
    try:
        with api() as client:
            names = [project["name"] for project in client.items("/projects")]
    except (CliError, httpx.HTTPError, KeyError, TypeError, ValueError):
        return []
    return [name for name in names if name.startswith(incomplete)]


JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print the API's JSON (a list's items as one array) instead of a table."),
]
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "--project",
        "-p",
        envvar=config.PROJECT_VARIABLE,
        show_envvar=True,
        help="The project (default: the one `trainyard projects use` or `login --project` saved).",
        autocompletion=_complete_projects,
    ),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=1, help="At most this many items (default: all of them).")
]


def api() -> Api:
    found = config.settings()
    return connect(found.url, found.token)


def project(option: str | None) -> str:
    """`--project` (or TRAINYARD_PROJECT, which typer reads into it), else the saved default."""
    chosen = option or config.settings().project
    if not chosen:
        raise UsageProblem(
            "which project? pass --project NAME, set TRAINYARD_PROJECT, or run `trainyard projects use NAME`"
        )
    return chosen
