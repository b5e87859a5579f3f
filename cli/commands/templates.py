"""`trainyard templates`: what to train, on which data, with which parameters."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cli import output
from cli.client import segment
from cli.commands._listing import listed
from cli.errors import UsageProblem
from cli.options import JsonOpt, LimitOpt, ProjectOpt, api, project

templates = typer.Typer(help="Training templates: package, dataset, parameters; a process runs one.")


def _parameter(item: str) -> tuple[str, Any]:
    """`KEY=VALUE`: VALUE as JSON when it is JSON (5, 0.01, true), else as the string it is."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UsageProblem(f"--param takes KEY=VALUE, not {item!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _version(value: str | None) -> int | str | None:
    if value is None or value == "latest":
        return value
    if not value.isdigit():
        raise UsageProblem(f"a dataset version is a number or `latest`, not {value!r}")
    return int(value)


def _fields(t: dict[str, Any]) -> list[tuple[str, object]]:
    def data(name: str) -> str:
        if not t.get(name):
            return "-"
        version = t.get(f"{name}_version") or "latest"
        path = t.get(f"{name}_path")
        return f"{t[name]} {version}" + (f" ({path})" if path else "")

    package = f"{t['base_package']} {t['base_version'] or 'latest'}" if t.get("base_package") else "-"
    return [
        ("name", t["name"]),
        ("model type", t["model_type"]),
        ("pipeline", t["pipeline_type"]),
        ("package", package),
        ("dataset", data("dataset")),
        ("test dataset", data("test_dataset")),
        ("augmentation", t["augmentation"]),
        ("parameters", json.dumps(t["parameters"], ensure_ascii=False)),
        ("max duration", output.duration(t["max_duration_seconds"])),
        ("gpus, processes", f"{t['gpus']}, {t['processes']}"),
        ("description", t["description"]),
    ]


@templates.command("list")
def templates_list(
    project_name: ProjectOpt = None,
    model_type: Annotated[str | None, typer.Option("--model-type", help="Only of this model type.")] = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The project's templates."""
    params = {"model_type": model_type} if model_type else None
    listed(
        f"/projects/{segment(project(project_name))}/templates",
        params=params,
        limit=limit,
        as_json=as_json,
        columns=[
            ("NAME", lambda t: t["name"]),
            ("MODEL TYPE", lambda t: t["model_type"]),
            ("PIPELINE", lambda t: t["pipeline_type"]),
            ("PACKAGE", lambda t: f"{t['base_package'] or '-'} {t['base_version'] or ''}".strip()),
            ("DATASET", lambda t: t["dataset"] or "-"),
        ],
        empty="no templates yet: `trainyard templates create NAME --model-type TYPE --package PACKAGE`",
    )


@templates.command("show")
def templates_show(name: str, project_name: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """One template."""
    with api() as client:
        found = client.get(f"/projects/{segment(project(project_name))}/templates/{segment(name)}")
    if as_json:
        output.print_json(found)
    else:
        output.fields(_fields(found))


@templates.command("create")
def templates_create(
    name: str,
    model_type: Annotated[str, typer.Option("--model-type", help="Its model type.")],
    package: Annotated[str | None, typer.Option("--package", help="The base package.")] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="The base package's version (default: its latest).")
    ] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="The dataset to train on.")] = None,
    dataset_version: Annotated[str | None, typer.Option(help="A number or `latest` (the default).")] = None,
    dataset_path: Annotated[str | None, typer.Option(help="A sub-folder of the dataset.")] = None,
    test_dataset: Annotated[str | None, typer.Option(help="The dataset to evaluate on.")] = None,
    test_dataset_version: Annotated[str | None, typer.Option(help="A number or `latest`.")] = None,
    test_dataset_path: Annotated[str | None, typer.Option(help="A sub-folder of the test dataset.")] = None,
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", help="`training` (default), `evaluation` or `full`.")
    ] = None,
    augmentation: Annotated[str | None, typer.Option(help="`none`, `rotations`, ...")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="KEY=VALUE, repeated: the package's parameters.")
    ] = None,
    max_duration: Annotated[int | None, typer.Option(min=1, help="Seconds a run may take (3600).")] = None,
    gpus: Annotated[int | None, typer.Option(min=0, help="GPUs per run (0: CPU only).")] = None,
    processes: Annotated[
        int | None, typer.Option(min=1, help="Processes per run (torchrun workers).")
    ] = None,
    save_training_data: Annotated[bool, typer.Option(help="Keep the data snapshot with the run.")] = False,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    project_name: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a template."""
    body: dict[str, Any] = {
        "name": name,
        "model_type": model_type,
        "description": description,
        "parameters": dict(_parameter(item) for item in param or []),
        "save_training_data": save_training_data,
    }
    optional = {
        "base_package": package,
        "base_version": version,
        "dataset": dataset,
        "dataset_version": _version(dataset_version),
        "dataset_path": dataset_path,
        "test_dataset": test_dataset,
        "test_dataset_version": _version(test_dataset_version),
        "test_dataset_path": test_dataset_path,
        "pipeline_type": pipeline,
        "augmentation": augmentation,
        "max_duration_seconds": max_duration,
        "gpus": gpus,
        "processes": processes,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    with api() as client:
        made = client.post(f"/projects/{segment(project(project_name))}/templates", body)
    if as_json:
        output.print_json(made)
    else:
        output.fields(_fields(made))
