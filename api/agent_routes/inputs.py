"""What a run reads, for its agent: its package version, its datasets' manifests, and whether a blob
is one of its inputs (an agent token reaches nothing else)."""

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import NotFound
from api.datasets import service as datasets
from api.models import Dataset, DatasetFile, DatasetVersion, PackageVersion, Run
from shared.protocol import DatasetManifest, ManifestFile


async def package_version(session: AsyncSession, run: Run) -> PackageVersion:
    """The package version the run trains; 404 `package_not_found` without one."""
    version = (
        None if run.package_version_id is None else await session.get(PackageVersion, run.package_version_id)
    )
    if version is None:
        raise NotFound("the run has no package", code="package_not_found")
    return version


async def manifest(session: AsyncSession, version_id: uuid.UUID | None, path: str | None) -> DatasetManifest:
    """The manifest of one of the run's dataset versions (`version_id`), under its sub-folder `path`;
    404 `dataset_not_found` when the run has none."""
    version = None if version_id is None else await session.get(DatasetVersion, version_id)
    if version is None:
        raise NotFound("the run has no such dataset", code="dataset_not_found")
    dataset = await session.get_one(Dataset, version.dataset_id)
    files = await datasets.manifest(session, version, path)
    return DatasetManifest(
        dataset=dataset.name,
        version=version.number,
        path=path,
        content_hash=version.content_hash,
        files=[ManifestFile(path=name, sha256=sha, size=size) for name, sha, size in files],
    )


async def input_size(session: AsyncSession, run: Run, sha256: str) -> int:
    """The size of the blob `sha256` if it is a file of the run's datasets or its package zip; 404
    `blob_not_found` if it is not one of the run's inputs."""
    versions = [v for v in (run.dataset_version_id, run.test_dataset_version_id) if v is not None]
    size = await session.scalar(
        select(DatasetFile.size)
        .where(DatasetFile.sha256 == sha256, DatasetFile.version_id.in_(versions))
        .limit(1)
    )
    if size is None and run.package_version_id is not None:
        size = await session.scalar(
            select(PackageVersion.size).where(
                PackageVersion.id == run.package_version_id, PackageVersion.blob_sha256 == sha256
            )
        )
    if size is None:
        raise NotFound(f"blob {sha256} is not one of this run's inputs", code="blob_not_found")
    return int(size)
