"""What a route on one dataset (or one of its versions) is handed: the caller authorised, the project
and the dataset (and the version) loaded once."""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi import Path as PathParam

from api.core.db import SessionDep
from api.core.security import Permission, Principal, requires
from api.datasets.service import get_dataset, resolve_version
from api.models import Dataset, DatasetVersion, Project
from api.projects.deps import checked_project

VersionRef = Annotated[
    str,
    PathParam(
        pattern=r"^(latest|[1-9][0-9]{0,9})$",
        description="A version number, or `latest` for the highest that exists.",
        examples=["3", "latest"],
    ),
]


@dataclass(frozen=True, slots=True)
class DatasetTarget:
    """Who acts on which dataset, in which project."""

    principal: Principal
    project: Project
    dataset: Dataset


@dataclass(frozen=True, slots=True)
class DatasetVersionTarget:
    """Who acts on which version of which dataset, in which project."""

    principal: Principal
    project: Project
    dataset: Dataset
    version: DatasetVersion


def dataset_for(permission: Permission) -> Any:
    """The dependency of a route under `/projects/{project}/datasets/{dataset}` (and no path parameter
    after it): `Annotated[DatasetTarget, dataset_for(...)]`.

    The permission is checked first, by `requires` (401, then 404 `project_not_found`, then 403); then
    the dataset is read (404 `dataset_not_found`). The dependency declares the path's parameters in
    the path's order, so the OpenAPI document lists them as when the route declared them.
    """
    authorised = requires(permission)

    async def load(
        project: str,
        dataset: str,
        request: Request,
        session: SessionDep,
        principal: Annotated[Principal, authorised],
    ) -> DatasetTarget:
        found = await checked_project(session, request, project)
        return DatasetTarget(principal, found, await get_dataset(session, found, dataset))

    load.__name__ = f"dataset_for_{permission.name.lower()}"
    return Depends(load)


def dataset_version_for(permission: Permission) -> Any:
    """The dependency of a route under `/projects/{project}/datasets/{dataset}/versions/{version}` (and
    no path parameter after it): `Annotated[DatasetVersionTarget, dataset_version_for(...)]`; as
    `dataset_for`, then the version, `latest` resolved (404 `dataset_version_not_found`, 409
    `dataset_empty`). The version is read, not locked: a route that changes it locks it itself."""
    authorised = requires(permission)

    async def load(
        project: str,
        dataset: str,
        version: VersionRef,
        request: Request,
        session: SessionDep,
        principal: Annotated[Principal, authorised],
    ) -> DatasetVersionTarget:
        found = await checked_project(session, request, project)
        ds = await get_dataset(session, found, dataset)
        resolved = await resolve_version(session, ds, version, lock=False)
        return DatasetVersionTarget(principal, found, ds, resolved)

    load.__name__ = f"dataset_version_for_{permission.name.lower()}"
    return Depends(load)
