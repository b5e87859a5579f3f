"""`trainyard packages`, `datasets`, `models`: what a project trains from, on, and into."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import download, output, upload
from cli.client import segment
from cli.commands._listing import listed
from cli.options import JsonOpt, LimitOpt, ProjectOpt, api, project

packages = typer.Typer(help="ML packages and their versions (1.0 uploaded, 1.1 trained, ...).")
datasets = typer.Typer(help="Datasets and their versions (1, 2, ...).")
models = typer.Typer(help="Trained models: the versions successful runs made.")

VersionArg = Annotated[str | None, typer.Argument(help="One version (default: the package or dataset).")]
PathArg = Annotated[Path, typer.Argument(help="A zip, or a folder (zipped on the way).", exists=True)]


def _base(project_name: str | None, kind: str) -> str:
    return f"/projects/{segment(project(project_name))}/{kind}"


def _show(
    project_name: str | None,
    kind: str,
    name: str,
    version: str | None,
    as_json: bool,
    version_fields: Callable[[dict[str, Any]], list[tuple[str, object]]],
    versions_table: Callable[[list[dict[str, Any]]], None],
) -> None:
    """`show`: one package or dataset (its name, description and versions), or one of its versions."""
    base = f"{_base(project_name, kind)}/{segment(name)}"
    with api() as client:
        if version is not None:
            found = client.get(f"{base}/versions/{segment(version)}")
            return output.print_json(found) if as_json else output.fields(version_fields(found))
        item = client.get(base)
        versions = client.items(f"{base}/versions")
    if as_json:
        output.print_json({**item, "versions": versions})
        return
    output.fields([(kind[:-1], item["name"]), ("description", item["description"])])
    versions_table(versions)


def _version_fields(v: dict[str, Any]) -> list[tuple[str, object]]:
    metrics = (v.get("lineage") or {}).get("metrics") or {}
    return [
        ("package", v["package"]),
        ("version", v["version"]),
        ("origin", v["origin"] + (f" from {v['parent_version']}" if v.get("parent_version") else "")),
        ("run", v.get("run_id") or "-"),
        ("size", output.size(v["size"])),
        ("sha256", v["sha256"]),
        ("metrics", ", ".join(f"{k} {_number(x)}" for k, x in sorted(metrics.items())) or "-"),
        ("created", output.when(v["created_at"])),
    ]


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


_VERSION_COLUMNS: list[output.Column] = [
    ("PACKAGE", lambda v: v["package"]),
    ("VERSION", lambda v: v["version"]),
    ("ORIGIN", lambda v: v["origin"]),
    ("PARENT", lambda v: v.get("parent_version") or "-"),
    ("ACCURACY", lambda v: _number(((v.get("lineage") or {}).get("metrics") or {}).get("accuracy", "-"))),
    ("CREATED", lambda v: output.when(v["created_at"])),
]


def _versions_table(rows: list[dict[str, Any]], empty: str) -> None:
    output.table(rows, _VERSION_COLUMNS, empty=empty)


# --- packages


@packages.command("list")
def packages_list(project_name: ProjectOpt = None, limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """The project's packages, with their latest versions."""
    listed(
        _base(project_name, "packages"),
        limit=limit,
        as_json=as_json,
        columns=[
            ("NAME", lambda p: p["name"]),
            ("LATEST", lambda p: p["latest_version"] or "-"),
            ("VERSIONS", lambda p: p["version_count"]),
            ("DESCRIPTION", lambda p: p["description"]),
        ],
        empty="no packages yet: `trainyard packages upload NAME PACKAGE.zip`",
    )


@packages.command("show")
def packages_show(
    name: str, version: VersionArg = None, project_name: ProjectOpt = None, as_json: JsonOpt = False
) -> None:
    """A package and its versions, or one version."""
    _show(
        project_name,
        "packages",
        name,
        version,
        as_json,
        _version_fields,
        lambda versions: _versions_table(versions, "no versions"),
    )


@packages.command("upload")
def packages_upload(
    name: str, path: PathArg, project_name: ProjectOpt = None, as_json: JsonOpt = False
) -> None:
    """Upload a package zip (or folder) as the next major version, creating the package on its first."""
    with upload.zipped(path) as file, api() as client:
        made = upload.send_files(
            client,
            f"{_base(project_name, 'packages')}/{segment(name)}/versions",
            [("file", file, path.name)],
            data={},
            quiet=as_json,
        )
    if as_json:
        output.print_json(made)
    else:
        output.out.print(output.text(f"Uploaded {made['package']} {made['version']}."))


@packages.command("download")
def packages_download(
    name: str,
    version: str,
    output_path: download.OutputOpt = None,
    project_name: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Save a version's zip (NAME-VERSION.zip), checked against its sha256."""
    base = f"{_base(project_name, 'packages')}/{segment(name)}/versions/{segment(version)}"
    with api() as client:
        found = client.get(base)  # the file is named by the version as the API writes it
        destination = download.target(output_path, f"{found['package']}-{found['version']}.zip")
        saved = download.save(client, f"{base}/download", destination, quiet=as_json)
    download.report(saved, as_json)


# --- datasets


def _dataset_version_fields(v: dict[str, Any]) -> list[tuple[str, object]]:
    return [
        ("dataset", v["dataset"]),
        ("version", v["number"]),
        ("files", v["file_count"]),
        ("size", output.size(v["total_bytes"])),
        ("content", v["content_hash"]),
        ("created", output.when(v["created_at"])),
    ]


@datasets.command("list")
def datasets_list(project_name: ProjectOpt = None, limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """The project's datasets."""
    listed(
        _base(project_name, "datasets"),
        limit=limit,
        as_json=as_json,
        columns=[
            ("NAME", lambda d: d["name"]),
            ("LATEST", lambda d: d["latest_version"] or "-"),
            ("DESCRIPTION", lambda d: d["description"]),
        ],
        empty="no datasets yet: `trainyard datasets upload NAME FOLDER`",
    )


@datasets.command("show")
def datasets_show(
    name: str, version: VersionArg = None, project_name: ProjectOpt = None, as_json: JsonOpt = False
) -> None:
    """A dataset and its versions, or one version (a number or `latest`)."""
    _show(project_name, "datasets", name, version, as_json, _dataset_version_fields, _dataset_versions_table)


def _dataset_versions_table(versions: list[dict[str, Any]]) -> None:
    output.table(
        versions,
        [
            ("VERSION", lambda v: v["number"]),
            ("FILES", lambda v: v["file_count"]),
            ("SIZE", lambda v: output.size(v["total_bytes"])),
            ("CREATED", lambda v: output.when(v["created_at"])),
        ],
        empty="no versions",
    )


@datasets.command("upload")
def datasets_upload(
    name: str,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="One zip or folder: the new version is exactly its files. Other files: the new "
            "version is the previous one with these added or replaced.",
            exists=True,
        ),
    ],
    sub_folder: Annotated[str | None, typer.Option("--path", help="The sub-folder they go to.")] = None,
    project_name: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload the dataset's next version, creating the dataset on its first upload."""
    route = f"{_base(project_name, 'datasets')}/{segment(name)}/versions"
    data = {"path": sub_folder} if sub_folder else {}
    whole = len(paths) == 1 and (paths[0].is_dir() or zipfile.is_zipfile(paths[0]))
    with api() as client:
        if whole:
            with upload.zipped(paths[0]) as file:
                made = upload.send_files(
                    client, route, [("file", file, paths[0].name)], data=data, quiet=as_json
                )
        else:
            parts = [("files", path, path.name) for path in paths]
            made = upload.send_files(client, route, parts, data=data, quiet=as_json)
    if as_json:
        output.print_json(made)
    else:
        output.out.print(
            output.text(f"Uploaded {made['dataset']} version {made['number']} ({made['file_count']} files).")
        )


# --- models


@models.command("list")
def models_list(project_name: ProjectOpt = None, limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """Versions that training runs made, with their metrics."""
    listed(
        _base(project_name, "models"),
        limit=limit,
        as_json=as_json,
        columns=_VERSION_COLUMNS,
        empty="no trained models yet: start a process",
    )


@models.command("show")
def models_show(
    package: str, version: str, project_name: ProjectOpt = None, as_json: JsonOpt = False
) -> None:
    """One trained version: where it came from and its final metrics."""
    with api() as client:
        found = client.get(
            f"{_base(project_name, 'packages')}/{segment(package)}/versions/{segment(version)}"
        )
    if as_json:
        output.print_json(found)
    else:
        output.fields(_version_fields(found))
