"""What a route on one package (or one of its versions) is handed: the caller authorised, the project
and the package (and the version) loaded once."""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from api.core.db import SessionDep
from api.core.security import Permission, Principal, requires
from api.models import Package, PackageVersion, Project
from api.packages.service import get_package, get_version
from api.projects.deps import checked_project


@dataclass(frozen=True, slots=True)
class PackageTarget:
    """Who acts on which package, in which project."""

    principal: Principal
    project: Project
    package: Package


@dataclass(frozen=True, slots=True)
class PackageVersionTarget:
    """Who acts on which version of which package, in which project."""

    principal: Principal
    project: Project
    package: Package
    version: PackageVersion


def package_for(permission: Permission) -> Any:
    """The dependency of a route under `/projects/{project}/packages/{package}` (and no path parameter
    after it): `Annotated[PackageTarget, package_for(...)]`.

    The permission is checked first, by `requires` (401, then 404 `project_not_found`, then 403); then
    the package is read (404 `package_not_found`). The dependency declares the path's parameters in
    the path's order, so the OpenAPI document lists them as when the route declared them.
    """
    authorised = requires(permission)

    async def load(
        project: str,
        package: str,
        request: Request,
        session: SessionDep,
        principal: Annotated[Principal, authorised],
    ) -> PackageTarget:
        found = await checked_project(session, request, project)
        return PackageTarget(principal, found, await get_package(session, found, package))

    load.__name__ = f"package_for_{permission.name.lower()}"
    return Depends(load)


def package_version_for(permission: Permission) -> Any:
    """The dependency of a route under `/projects/{project}/packages/{package}/versions/{version}`:
    `Annotated[PackageVersionTarget, package_version_for(...)]`; as `package_for`, then the version
    (404 `package_version_not_found`, for a number that is not one too)."""
    authorised = requires(permission)

    async def load(
        project: str,
        package: str,
        version: str,
        request: Request,
        session: SessionDep,
        principal: Annotated[Principal, authorised],
    ) -> PackageVersionTarget:
        found = await checked_project(session, request, project)
        pkg = await get_package(session, found, package)
        return PackageVersionTarget(principal, found, pkg, await get_version(session, pkg, version))

    load.__name__ = f"package_version_for_{permission.name.lower()}"
    return Depends(load)
