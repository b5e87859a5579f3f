"""A template's references: its base package version, datasets and parameters, checked against what
exists and what the package declares.

Checked when a template is written (unknown references refused, the package's declared defaults
filled in: Primo's "other technical parameters keep their defaults") and again at every start, when
`latest` dataset versions are resolved to numbers and recorded on the run.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from api.base_packages import service as base_packages
from api.core.errors import InvalidInput, NotFound
from api.datasets import service as datasets
from api.models import DatasetVersion, Package, PackageVersion, Project, Template
from api.packages import service as packages
from api.packages.inspect import PARAMETER_RULES, coerce_parameter, kind_of
from shared.names import EXECUTOR_PARAMETERS
from shared.versions import Version


@dataclass(frozen=True)
class ResolvedInputs:
    package_version: PackageVersion | None
    dataset_version: DatasetVersion | None
    test_dataset_version: DatasetVersion | None
    parameters: dict[str, Any]


async def resolve_package(
    session: AsyncSession,
    project: Project,
    package_name: str | None,
    version: str | None,
    *,
    at_start: bool = True,
) -> PackageVersion | None:
    """The base version; with no version named, the package's latest. A built-in base package
    (api/base_packages/) is the project's copy of it, made on the first template that names it and
    brought the catalogue's new versions at each template write (not at a start: the template pinned
    its version)."""
    if package_name is None:
        if version is not None:
            raise InvalidInput(
                "base_version needs base_package", code="base_package_required", field="base_package"
            )
        return None
    if at_start and version is not None:  # what every start does: its template pinned the version
        found = await packages.find_version(session, project, package_name, version)
        if found is not None:
            return found
    try:
        package = await packages.get_package(session, project, package_name)
    except NotFound:
        if at_start:
            raise
        package = await base_packages.adopt(session, project, package_name)
    else:
        if package.builtin and not at_start:
            await base_packages.sync_copy(session, package)
    if version is not None:
        return await packages.get_version(session, package, version)
    latest = await packages.latest_version(session, package)
    if latest is None:
        raise InvalidInput(
            f"package {package_name!r} has no versions", code="package_empty", field="base_package"
        )
    return latest


def check_parameters(version: PackageVersion | None, parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters validated strictly against the package's declaration, its defaults filled in
    (`coerce_parameter`: no integer past int64, no text or boolean taken for a number). A package that
    declares nothing (no parameters.json) takes any parameter, each held to the type its JSON has.
    The executor's parameters (`slurm_partition`...) are text, declared or not."""
    declared = (
        None
        if version is None or version.declared_parameters is None
        else {item["name"]: item for item in version.declared_parameters}
    )
    checked: dict[str, Any] = {}
    for name, value in parameters.items():
        if name in EXECUTOR_PARAMETERS and (declared is None or name not in declared):
            if not isinstance(value, str) or not value:
                raise InvalidInput(
                    f"parameter {name!r} must be text: it names the executor's {name.removeprefix('slurm_')}",
                    code="invalid_parameter",
                    field=f"parameters.{name}",
                )
            checked[name] = value
            continue
        if declared is not None and name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise InvalidInput(
                f"parameter {name!r} is not declared by the package (it declares {known})",
                code="unknown_parameter",
                field=f"parameters.{name}",
            )
        kind = kind_of(value) if declared is None else declared[name]["type"]
        coerced = None if kind is None else coerce_parameter(value, kind)
        if coerced is None:
            rule = PARAMETER_RULES.get(kind or "", "text, a number or a boolean")
            raise InvalidInput(
                f"parameter {name!r} must be {rule}"
                + ("" if declared is None else f": the package declares it {kind}"),
                code="invalid_parameter",
                field=f"parameters.{name}",
            )
        checked[name] = coerced
    for name, item in (declared or {}).items():
        if name not in checked and item.get("default") is not None:
            checked[name] = item["default"]
    return checked


async def _dataset_version(
    session: AsyncSession,
    project: Project,
    name: str | None,
    version: str | None,
    path: str | None,
    field: str,
    *,
    at_start: bool,
) -> DatasetVersion | None:
    if name is None:
        if path is not None:
            raise InvalidInput(f"{field}_path needs {field}", code="dataset_required", field=field)
        return None
    dataset = await datasets.get_dataset(session, project, name)
    wanted: int | str = int(version) if version is not None and version.isdigit() else "latest"
    if wanted == "latest" and not at_start:
        return None  # resolved at each start; the dataset may still be empty now
    resolved = await datasets.resolve_version(session, dataset, wanted)
    if path is not None and at_start:
        await datasets.manifest(session, resolved, path)  # the sub-folder must hold files
    return resolved


async def resolve(
    session: AsyncSession, project: Project, template: Template, *, at_start: bool
) -> ResolvedInputs:
    package_version = await resolve_package(
        session, project, template.base_package, template.base_version, at_start=at_start
    )
    return ResolvedInputs(
        package_version=package_version,
        dataset_version=await _dataset_version(
            session,
            project,
            template.dataset,
            template.dataset_version,
            template.dataset_path,
            "dataset",
            at_start=at_start,
        ),
        test_dataset_version=await _dataset_version(
            session,
            project,
            template.test_dataset,
            template.test_dataset_version,
            template.test_dataset_path,
            "test_dataset",
            at_start=at_start,
        ),
        parameters=check_parameters(package_version, template.parameters),
    )


async def apply_references(session: AsyncSession, project: Project, template: Template) -> None:
    """Check a template being written and complete it: the base version pinned, defaults filled in."""
    resolved = await resolve(session, project, template, at_start=False)
    if resolved.package_version is not None:
        package = await session.get(Package, resolved.package_version.package_id)
        assert package is not None
        await base_packages.check_model_type(session, package, template.model_type_id)
        template.base_version = str(Version(resolved.package_version.major, resolved.package_version.minor))
    template.parameters = resolved.parameters
