"""`trainyard NOUN VERB`: the app's wiring and the one place errors become exit codes."""

from __future__ import annotations

import sys
from typing import Annotated, Any, cast

import typer
from typer import rich_utils

from cli import __version__, output
from cli.commands import admin, assets, auth, processes, runs, templates
from cli.errors import CliError, Exit

# Click's UsageError and ClickException, by way of typer's public BadParameter: typer vendors click as a
# private module in newer releases and imports it in older ones, and this finds them either way.
UsageError = cast(type[Exception], typer.BadParameter.__mro__[1])
ClickException = cast(type[Exception], typer.BadParameter.__mro__[2])
assert (UsageError.__name__, ClickException.__name__) == ("UsageError", "ClickException")

app = typer.Typer(
    name="trainyard",
    help="Drive a Trainyard API from a shell: projects, templates, processes, runs, packages, datasets, "
    "models, machines. Every command takes --json. Exit codes: 0 ok (a followed run succeeded), 1 the "
    "run failed, 2 the run stopped, 3 the API refused, 4 the API is unreachable, 64 a usage error, "
    "130 interrupted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"trainyard {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """The Trainyard command-line client."""


app.command()(auth.login)
app.command()(auth.logout)
app.command()(auth.whoami)
app.add_typer(admin.projects, name="projects", no_args_is_help=True)
app.add_typer(admin.model_types, name="model-types", no_args_is_help=True)
app.add_typer(admin.base_packages, name="base-packages", no_args_is_help=True)
app.add_typer(templates.templates, name="templates", no_args_is_help=True)
app.add_typer(processes.processes, name="processes", no_args_is_help=True)
app.add_typer(runs.runs, name="runs", no_args_is_help=True)
app.command("logs")(runs.logs)
app.add_typer(assets.packages, name="packages", no_args_is_help=True)
app.add_typer(assets.datasets, name="datasets", no_args_is_help=True)
app.add_typer(assets.models, name="models", no_args_is_help=True)
app.add_typer(admin.machines, name="machines", no_args_is_help=True)


def main(argv: list[str] | None = None) -> None:
    """Run one command; every way it can end is an exit code of `Exit` (docs/clients.md)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="trainyard", standalone_mode=False)
    except CliError as error:
        output.error_line(error.line())
        code = error.exit_code
    except UsageError as error:
        error.exit_code = Exit.USAGE  # type: ignore[attr-defined]  # not click's 2: a stopped run's here
        rich_utils.rich_format_error(cast(Any, error))
        code = Exit.USAGE
    except ClickException as error:
        rich_utils.rich_format_error(cast(Any, error))
        code = getattr(error, "exit_code", Exit.USAGE)
    except (typer.Abort, KeyboardInterrupt):
        output.err.print("interrupted", style="dim")
        code = Exit.INTERRUPTED
    except BrokenPipeError:  # `trainyard logs RUN | head`: the reader had enough
        sys.stderr.close()
        code = Exit.OK
    sys.exit(code if isinstance(code, int) else Exit.OK)
