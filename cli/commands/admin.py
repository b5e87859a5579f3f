"""`trainyard projects`, `model-types`, `base-packages`, `machines`: the objects outside any project
(and projects)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli import config, output
from cli.client import segment
from cli.commands._listing import listed
from cli.options import JsonOpt, LimitOpt, api

projects = typer.Typer(help="Projects: the scope of templates, processes, packages, datasets and models.")
model_types = typer.Typer(help="Model types: the administrators' list of kinds of task.")
machines = typer.Typer(help="Target machines: where the agent runs training.")
base_packages = typer.Typer(
    help="Built-in base packages: what a template may name as its base package with no upload."
)

NameArg = Annotated[str, typer.Argument(help="Its name.")]
DescriptionOpt = Annotated[str, typer.Option("--description", "-d", help="What it is for.")]


def _show(value: dict[str, Any], as_json: bool, pairs: list[tuple[str, object]]) -> None:
    if as_json:
        output.print_json(value)
    else:
        output.fields(pairs)


# --- projects


def _project_fields(p: dict[str, Any]) -> list[tuple[str, object]]:
    return [
        ("name", p["name"]),
        ("description", p["description"]),
        ("templates", p["template_count"]),
        ("created", output.when(p["created_at"])),
    ]


@projects.command("list")
def projects_list(limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """The projects you may see."""
    default = config.settings().project
    listed(
        "/projects",
        limit=limit,
        as_json=as_json,
        columns=[
            ("", lambda p: "*" if p["name"] == default else ""),
            ("NAME", lambda p: p["name"]),
            ("TEMPLATES", lambda p: p["template_count"]),
            ("DESCRIPTION", lambda p: p["description"]),
        ],
        empty="no projects yet: `trainyard projects create NAME`",
    )


@projects.command("show")
def projects_show(name: NameArg, as_json: JsonOpt = False) -> None:
    """One project."""
    with api() as client:
        found = client.get(f"/projects/{segment(name)}")
    _show(found, as_json, _project_fields(found))


@projects.command("create")
def projects_create(name: NameArg, description: DescriptionOpt = "", as_json: JsonOpt = False) -> None:
    """Create a project."""
    with api() as client:
        made = client.post("/projects", {"name": name, "description": description})
    _show(made, as_json, _project_fields(made))


@projects.command("use")
def projects_use(name: NameArg, as_json: JsonOpt = False) -> None:
    """Make NAME the default project of every command (saved beside the token)."""
    with api() as client:
        found = client.get(f"/projects/{segment(name)}")
    saved = config.load()
    saved.project = found["name"]
    config.save(saved)
    if as_json:
        output.print_json(found)
    else:
        output.out.print(output.text(f"Default project: {found['name']}"))


# --- model types


@model_types.command("list")
def model_types_list(limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """The model types."""
    listed(
        "/model-types",
        limit=limit,
        as_json=as_json,
        columns=[("NAME", lambda t: t["name"]), ("DESCRIPTION", lambda t: t["description"])],
        empty="no model types yet: `trainyard model-types create NAME` (administrators)",
    )


@base_packages.command("list")
def base_packages_list(
    model_type: Annotated[
        str | None, typer.Option("--model-type", "-t", help="Only those for this model type.")
    ] = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The built-in base packages (docs/base-packages.md)."""
    listed(
        "/base-packages",
        params=None if model_type is None else {"model_type": model_type},
        limit=limit,
        as_json=as_json,
        columns=[
            ("NAME", lambda p: p["name"]),
            ("LATEST", lambda p: p["latest_version"] or "-"),
            ("MODEL TYPES", lambda p: ", ".join(p["model_types"])),
            ("DESCRIPTION", lambda p: p["description"]),
        ],
        empty="no base packages: `trainyard-api migrate` installs them",
    )


@model_types.command("show")
def model_types_show(name: NameArg, as_json: JsonOpt = False) -> None:
    """One model type."""
    with api() as client:
        found = client.get(f"/model-types/{segment(name)}")
    _show(found, as_json, [("name", found["name"]), ("description", found["description"])])


@model_types.command("create")
def model_types_create(name: NameArg, description: DescriptionOpt = "", as_json: JsonOpt = False) -> None:
    """Create a model type (administrators)."""
    with api() as client:
        made = client.post("/model-types", {"name": name, "description": description})
    _show(made, as_json, [("name", made["name"]), ("description", made["description"])])


# --- machines


def _gpus(m: dict[str, Any]) -> str:
    return ", ".join(str(gpu.get("name", "?")) for gpu in m.get("gpus") or []) or "-"


def _machine_fields(m: dict[str, Any]) -> list[tuple[str, object]]:
    return [
        ("name", m["name"]),
        ("address", m["address"]),
        ("state", ("online" if m["online"] else "offline") + ("" if m["enabled"] else ", disabled")),
        ("last seen", output.when(m["last_seen_at"]) or "never"),
        ("agent", m["agent_version"] or "-"),
        ("gpus", _gpus(m)),
        ("capacity", m["capacity"]),
        ("processes", m["process_count"]),
        ("description", m["description"]),
    ]


@machines.command("list")
def machines_list(limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """The target machines, online or not."""
    listed(
        "/machines",
        limit=limit,
        as_json=as_json,
        columns=[
            ("NAME", lambda m: m["name"]),
            ("ADDRESS", lambda m: m["address"]),
            (
                "STATE",
                lambda m: ("online" if m["online"] else "offline") + ("" if m["enabled"] else ", disabled"),
            ),
            ("GPUS", _gpus),
            ("PROCESSES", lambda m: m["process_count"]),
            ("LAST SEEN", lambda m: output.when(m["last_seen_at"]) or "never"),
        ],
        empty="no machines yet: `trainyard machines create NAME --address HOST` (administrators)",
    )


@machines.command("show")
def machines_show(name: NameArg, as_json: JsonOpt = False) -> None:
    """One machine: online state, agent version, GPUs."""
    with api() as client:
        found = client.get(f"/machines/{segment(name)}")
    _show(found, as_json, _machine_fields(found))


@machines.command("create")
def machines_create(
    name: NameArg,
    address: Annotated[str, typer.Option("--address", help="Its host name or address.")],
    capacity: Annotated[int | None, typer.Option("--capacity", min=1, help="Runs at once.")] = None,
    description: DescriptionOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Register a machine (administrators). Its agent token is shown this once: keep it."""
    body: dict[str, Any] = {"name": name, "address": address, "description": description}
    if capacity is not None:
        body["capacity"] = capacity
    with api() as client:
        made = client.post("/machines", body)
    if as_json:
        output.print_json(made)
        return
    output.fields([*_machine_fields(made), ("agent token", made["agent_token"])])
    output.note("the agent token is shown once: give it to the machine's agent (TRAINYARD_AGENT_TOKEN_FILE)")
