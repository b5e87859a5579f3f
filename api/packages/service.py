"""ML packages and their versions: upload, numbering, deletion rules and lineage."""

import unicodedata
import uuid
from pathlib import Path
from typing import Any

import anyio.to_thread
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.blobs import StoredBlob
from api.core.errors import Conflict, InvalidInput, NotFound
from api.core.repository import get_by_name, get_or_create_named, record_blobs
from api.core.schemas import Page, PageParams, paged
from api.models import Package, PackageLine, PackageVersion, Project, Run, Service, Template
from api.packages.inspect import PackageInfo, inspect_package
from api.packages.schemas import LineageNode, LineageRead, PackageRead, PackageVersionRead
from api.webhooks import outbox
from shared.archive import ArchiveLimits
from shared.enums import ACTIVE_RUN_STATUSES
from shared.names import InvalidName, normalize_name
from shared.versions import Version

MAX_LINEAGE_DEPTH = 10_000


def check_name(name: str) -> str:
    """A new package's name, normalised; 422 `invalid_name` when it is not one."""
    try:
        return normalize_name(name)
    except InvalidName as error:
        raise InvalidInput(f"package name {name!r} {error}", code="invalid_name", field="package") from None


async def get_package(session: AsyncSession, project: Project, name: str) -> Package:
    return await get_by_name(session, Package, name, "package", project_id=project.id)


def parse_version(text: str) -> Version:
    try:
        return Version.parse(text)
    except ValueError as error:
        raise NotFound(str(error), code="package_version_not_found", field="version") from None


# Built once: every start reads a package version by one of these.
_VERSION = select(PackageVersion).where(
    PackageVersion.package_id == bindparam("package_id"),
    PackageVersion.major == bindparam("major"),
    PackageVersion.minor == bindparam("minor"),
)
_LATEST_VERSION = (
    select(PackageVersion)
    .where(PackageVersion.package_id == bindparam("package_id"))
    .order_by(PackageVersion.major.desc(), PackageVersion.minor.desc())
    .limit(1)
)


async def get_version(session: AsyncSession, package: Package, version: str) -> PackageVersion:
    number = parse_version(version)
    found = await session.scalar(
        _VERSION, {"package_id": package.id, "major": number.major, "minor": number.minor}
    )
    if found is None:
        raise NotFound(f"package {package.name!r} has no version {version}", code="package_version_not_found")
    return found


# A start's base version, pinned by its template: the package and its version in one statement.
_VERSION_BY_NAME = (
    select(PackageVersion)
    .join(Package, Package.id == PackageVersion.package_id)
    .where(
        Package.project_id == bindparam("project_id"),
        Package.name == bindparam("name"),
        PackageVersion.major == bindparam("major"),
        PackageVersion.minor == bindparam("minor"),
    )
)


async def find_version(
    session: AsyncSession, project: Project, name: str, version: str
) -> PackageVersion | None:
    """The version `version` of the project's package `name`, in one statement; None when either is
    missing or `version` is no version number (`get_package` and `get_version` then say which)."""
    try:
        number = Version.parse(version)
    except ValueError:
        return None
    found: PackageVersion | None = await session.scalar(
        _VERSION_BY_NAME,
        {
            "project_id": project.id,
            "name": unicodedata.normalize("NFC", name),
            "major": number.major,
            "minor": number.minor,
        },
    )
    return found


async def latest_version(session: AsyncSession, package: Package) -> PackageVersion | None:
    return await session.scalar(_LATEST_VERSION, {"package_id": package.id})


async def check_package(path: Path, limits: ArchiveLimits) -> PackageInfo:
    """Inspect off the event loop: zips are read from disk and train.py parsed."""
    return await anyio.to_thread.run_sync(inspect_package, path, limits)


async def add_uploaded_version(
    session: AsyncSession,
    project: Project,
    package_name: str,
    stored: StoredBlob,
    info: PackageInfo,
    created_by: uuid.UUID | None,
) -> tuple[Package, PackageVersion]:
    """The next major version (1.0, 2.0, ...), creating the package on its first upload."""
    package = await get_or_create_named(
        session, Package, "package", {"name": normalize_name(package_name)}, {"project_id": project.id}
    )
    major = (
        await session.execute(
            update(Package)
            .where(Package.id == package.id)
            .values(highest_major=Package.highest_major + 1)
            .returning(Package.highest_major),
            execution_options={"synchronize_session": False},
        )
    ).scalar_one()
    session.add(PackageLine(package_id=package.id, major=major, highest_minor=0))
    await record_blobs(session, [stored])
    version = PackageVersion(
        package_id=package.id,
        major=major,
        minor=0,
        origin="upload",
        created_by=created_by,
        **_stored_fields(stored, info),
    )
    session.add(version)
    await session.flush()
    await outbox.package_version_created(session, version)
    return package, version


async def add_trained_version(
    session: AsyncSession,
    parent: PackageVersion,
    stored: StoredBlob,
    info: PackageInfo,
    run_id: uuid.UUID,
    lineage: dict[str, Any],
) -> PackageVersion:
    """The next minor in the parent's major line: one above the highest ever given there, taken by one
    conditional UPDATE so two runs finishing at once get distinct numbers."""
    minor = (
        await session.execute(
            update(PackageLine)
            .where(PackageLine.package_id == parent.package_id, PackageLine.major == parent.major)
            .values(highest_minor=PackageLine.highest_minor + 1)
            .returning(PackageLine.highest_minor),
            execution_options={"synchronize_session": False},
        )
    ).scalar_one()
    await record_blobs(session, [stored])
    version = PackageVersion(
        package_id=parent.package_id,
        major=parent.major,
        minor=minor,
        origin="trained",
        parent_id=parent.id,
        run_id=run_id,
        lineage=lineage,
        **_stored_fields(stored, info),
    )
    session.add(version)
    await session.flush()
    await outbox.package_version_created(session, version)
    return version


def _stored_fields(stored: StoredBlob, info: PackageInfo) -> dict[str, Any]:
    return {
        "blob_sha256": stored.sha256,
        "size": stored.size,
        "root_prefix": info.root_prefix,
        "has_evaluate": info.has_evaluate,
        "has_process_data": info.has_process_data,
        "has_predict": info.has_predict,
        "has_requirements": info.has_requirements,
        "declared_parameters": (
            None
            if info.declared_parameters is None
            else [parameter.__dict__ for parameter in info.declared_parameters]
        ),
    }


async def delete_version(
    session: AsyncSession, project: Project, package: Package, found: PackageVersion
) -> None:
    """Refused while a template names it, an active run uses it, a service publishes it, or versions
    were trained from it (the lineage would lose a link). Its number is never given again."""
    text = str(Version(found.major, found.minor))
    templates = await session.scalar(
        select(func.count()).where(
            Template.project_id == project.id,
            Template.base_package == package.name,
            Template.base_version == text,
        )
    )
    if templates:
        raise Conflict(f"version {text} is the base of {templates} templates", code="package_version_in_use")
    active = await session.scalar(
        select(func.count()).where(
            Run.package_version_id == found.id,
            Run.status.in_([status.value for status in ACTIVE_RUN_STATUSES]),
        )
    )
    if active:
        raise Conflict(f"version {text} is used by an active run", code="package_version_in_use")
    services = await session.scalar(select(func.count()).where(Service.package_version_id == found.id))
    if services:
        raise Conflict(
            f"version {text} is published by {services} services: delete them first",
            code="package_version_in_use",
        )
    children = await session.scalar(select(func.count()).where(PackageVersion.parent_id == found.id))
    if children:
        raise Conflict(
            f"{children} versions were trained from {text}: delete them first",
            code="package_version_has_descendants",
        )
    await session.delete(found)
    await session.flush()


async def _version_count(session: AsyncSession, package: Package) -> int:
    return int(await session.scalar(select(func.count()).where(PackageVersion.package_id == package.id)) or 0)


async def delete_package(session: AsyncSession, package: Package) -> None:
    """Refused while the package has versions left."""
    count = await _version_count(session, package)
    if count:
        raise Conflict(f"package {package.name!r} still has {count} versions", code="package_not_empty")
    await session.delete(package)
    await session.flush()


def _package_read(
    project: Project, package: Package, latest: PackageVersion | None, count: int
) -> PackageRead:
    return PackageRead(
        id=package.id,
        project=project.name,
        name=package.name,
        description=package.description,
        latest_version=None if latest is None else str(Version(latest.major, latest.minor)),
        version_count=count,
        builtin=package.builtin,
        model_types=package.model_types,
        created_at=package.created_at,
    )


async def package_read(session: AsyncSession, project: Project, package: Package) -> PackageRead:
    latest = await latest_version(session, package)
    return _package_read(project, package, latest, await _version_count(session, package))


_VERSION_COUNT = (
    select(func.count()).where(PackageVersion.package_id == Package.id).correlate(Package).scalar_subquery()
)


async def list_packages(session: AsyncSession, project: Project, page: PageParams) -> Page[PackageRead]:
    """A project's packages, each with its latest version and how many it has."""

    async def item(package: Package, count: int) -> PackageRead:
        return _package_read(project, package, await latest_version(session, package), count)

    statement = select(Package, _VERSION_COUNT).where(Package.project_id == project.id)
    return await paged(session, statement, Package.id, page, item)


async def read_version(
    session: AsyncSession, project: Project, package: Package, version: PackageVersion
) -> PackageVersionRead:
    return version_read(project, package, version, await parent_text(session, version))


async def list_versions(
    session: AsyncSession, project: Project, package: Package, page: PageParams
) -> Page[PackageVersionRead]:
    async def item(version: PackageVersion) -> PackageVersionRead:
        return await read_version(session, project, package, version)

    statement = select(PackageVersion).where(PackageVersion.package_id == package.id)
    return await paged(session, statement, PackageVersion.id, page, item)


async def list_models(session: AsyncSession, project: Project, page: PageParams) -> Page[PackageVersionRead]:
    """Trained models (Primo's Models page): the versions successful runs made."""

    async def item(version: PackageVersion, package: Package) -> PackageVersionRead:
        return await read_version(session, project, package, version)

    statement = (
        select(PackageVersion, Package)
        .join(Package, Package.id == PackageVersion.package_id)
        .where(Package.project_id == project.id, PackageVersion.origin == "trained")
    )
    return await paged(session, statement, PackageVersion.id, page, item)


def version_read(
    project: Project, package: Package, version: PackageVersion, parent: str | None
) -> PackageVersionRead:
    columns = {column.key: getattr(version, column.key) for column in PackageVersion.__table__.columns}
    return PackageVersionRead.model_validate(
        {
            **columns,
            "project": project.name,
            "package": package.name,
            "version": str(Version(version.major, version.minor)),
            "sha256": version.blob_sha256,
            "parent_version": parent,
        }
    )


async def parent_text(session: AsyncSession, version: PackageVersion) -> str | None:
    if version.parent_id is None:
        return None
    parent = await session.get(PackageVersion, version.parent_id)
    return None if parent is None else str(Version(parent.major, parent.minor))


async def lineage(
    session: AsyncSession, version: PackageVersion
) -> tuple[list[LineageNode], list[LineageNode]]:
    """Ancestors back to the uploaded version, and the tree of descendants."""
    ancestors: list[LineageNode] = []
    current = version
    while current.parent_id is not None and len(ancestors) < MAX_LINEAGE_DEPTH:
        parent = await session.get(PackageVersion, current.parent_id)
        if parent is None:
            break
        ancestors.append(_node(parent))
        current = parent
    # One query for the whole package, then the tree is assembled in memory.
    everything = (
        await session.scalars(select(PackageVersion).where(PackageVersion.package_id == version.package_id))
    ).all()
    children: dict[uuid.UUID, list[PackageVersion]] = {}
    for candidate in everything:
        if candidate.parent_id is not None:
            children.setdefault(candidate.parent_id, []).append(candidate)

    def tree(of: PackageVersion) -> list[LineageNode]:
        return [
            _node(child, tree(child))
            for child in sorted(children.get(of.id, []), key=lambda v: (v.major, v.minor))
        ]

    return ancestors, tree(version)


async def lineage_read(session: AsyncSession, package: Package, version: PackageVersion) -> LineageRead:
    """Where the model came from and what was made from it, with the version's own record."""
    ancestors, descendants = await lineage(session, version)
    return LineageRead(
        package=package.name,
        version=str(Version(version.major, version.minor)),
        ancestors=ancestors,
        descendants=descendants,
        record=version.lineage,
    )


def _node(version: PackageVersion, children: list[LineageNode] | None = None) -> LineageNode:
    return LineageNode(
        version=str(Version(version.major, version.minor)),
        origin=version.origin,
        run_id=version.run_id,
        created_at=version.created_at,
        children=children or [],
    )
