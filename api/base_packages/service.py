"""The built-in base packages in the database: the catalogue `trainyard-api migrate` keeps current, and
each project's copy of a base package, made when a template first names it.

The catalogue is packages with no project (`builtin`), one major version per content: a new version
only when the package's zip (a function of its files alone, `catalogue.package_zip`) has another
sha256 than the latest. A project never trains into the catalogue: a template naming a base package
gets the project's own copy, `builtin` too, holding the catalogue's versions (the same blobs, the same
numbers, origin `builtin`), so runs, trained versions (1.1, 1.2, ...), lineage, models, permissions
and deletes work as for an uploaded package, and what a project trains stays its own. The copy takes
no upload; a later template write brings it the catalogue's new versions. Nothing reaches the
catalogue itself: it belongs to no project, so no route finds it.
"""

import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.base_packages.catalogue import BASE_PACKAGES, MODEL_TYPES, BasePackageSpec, package_zip
from api.base_packages.schemas import BasePackageRead
from api.core.blobs import BlobStore
from api.core.config import Settings
from api.core.db import create_engine, create_sessionmaker
from api.core.errors import Conflict, InvalidInput, NotFound
from api.core.notify import Notifier
from api.core.repository import dialect_insert, get_or_create_named, record_blobs
from api.core.s3blobs import blob_store
from api.core.schemas import Page, PageParams, paged
from api.models import ModelType, Package, PackageLine, PackageVersion, Project
from api.packages.inspect import inspect_package
from api.packages.service import _stored_fields, check_name, latest_version
from shared.archive import ArchiveLimits
from shared.versions import Version

ORIGIN = "builtin"


@dataclass(frozen=True)
class Installed:
    name: str
    version: str
    sha256: str
    added: bool  # False: the latest version already had this content


async def catalogue_package(session: AsyncSession, name: str) -> Package | None:
    """The catalogue's package of that name (no project), if there is one."""
    found: Package | None = await session.scalar(
        select(Package).where(Package.project_id.is_(None), Package.name == name)
    )
    return found


async def catalogue_names(session: AsyncSession) -> list[str]:
    """The built-in base packages' names, sorted: every project may name them."""
    names = await session.scalars(
        select(Package.name).where(Package.project_id.is_(None)).order_by(Package.name)
    )
    return list(names)


async def _ensure_model_types(session: AsyncSession) -> None:
    """The model types the base packages are for, created when missing; an administrator's own
    description of one is left as it is."""
    for spec in MODEL_TYPES:
        await session.execute(
            dialect_insert(session)(ModelType)
            .values(name=spec.name, description=spec.description)
            .on_conflict_do_nothing()
        )


async def _install_one(
    session: AsyncSession, blobs: BlobStore, limits: ArchiveLimits, spec: BasePackageSpec, root: Path | None
) -> Installed:
    data = package_zip(spec) if root is None else package_zip(spec, root)
    with blobs.temp_file() as path:
        await anyio.to_thread.run_sync(path.write_bytes, data)
        # The same checks as an upload: a base package that could not run is never installed.
        info = await anyio.to_thread.run_sync(inspect_package, path, limits)
        stored = await blobs.put_file(path)
    await session.execute(
        dialect_insert(session)(Package)
        .values(name=spec.name, project_id=None, builtin=True, description="", model_types=[])
        .on_conflict_do_nothing()
    )
    # Locked until the commit (PostgreSQL; SQLite has one writer): two `migrate`s at once, as two
    # replicas may run it, compare with the latest version one after the other, so one content
    # makes one version.
    package = await session.scalar(
        select(Package).where(Package.project_id.is_(None), Package.name == spec.name).with_for_update()
    )
    assert package is not None
    package.description, package.model_types = spec.description, list(spec.model_types)
    latest = await latest_version(session, package)
    if latest is not None and latest.blob_sha256 == stored.sha256:
        return Installed(spec.name, str(Version(latest.major, latest.minor)), stored.sha256, added=False)
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
    fields = _stored_fields(stored, info)
    session.add(PackageVersion(package_id=package.id, major=major, minor=0, origin=ORIGIN, **fields))
    await session.flush()
    return Installed(spec.name, str(Version(major, 0)), stored.sha256, added=True)


async def install_base_packages(
    session: AsyncSession,
    blobs: BlobStore,
    limits: ArchiveLimits,
    specs: tuple[BasePackageSpec, ...] = BASE_PACKAGES,
    root: Path | None = None,
) -> list[Installed]:
    """Bring the catalogue up to the code: each base package's model types, the package, and a new
    major version when its content changed. Idempotent; the caller commits."""
    await _ensure_model_types(session)
    return [await _install_one(session, blobs, limits, spec, root) for spec in specs]


# -- a project's copy ------------------------------------------------------------------------------


async def sync_copy(session: AsyncSession, copy: Package) -> None:
    """Bring a project's copy the catalogue's versions newer than any it was given (and the
    catalogue's description). A version the project deleted from its copy stays deleted (its number is
    not given again); two writers at once insert each row once (ON CONFLICT DO NOTHING)."""
    source = await catalogue_package(session, copy.name)
    if source is None:
        return  # no longer shipped: the copy keeps what it has
    copy.description, copy.model_types = source.description, list(source.model_types)
    versions = await session.scalars(
        select(PackageVersion)
        .where(PackageVersion.package_id == source.id, PackageVersion.major > copy.highest_major)
        .order_by(PackageVersion.major)
    )
    insert = dialect_insert(session)
    for version in versions:
        await session.execute(
            insert(PackageLine).values(package_id=copy.id, major=version.major).on_conflict_do_nothing()
        )
        columns = {
            column.key: getattr(version, column.key)
            for column in PackageVersion.__table__.columns
            if column.key not in ("id", "package_id", "created_at")
        }
        await session.execute(
            insert(PackageVersion).values(**columns, package_id=copy.id).on_conflict_do_nothing()
        )
        await session.execute(
            update(Package)
            .where(Package.id == copy.id, Package.highest_major < version.major)
            .values(highest_major=version.major),
            execution_options={"synchronize_session": False},
        )
    await session.flush()
    await session.refresh(copy)


async def adopt(session: AsyncSession, project: Project, name: str) -> Package:
    """The project's copy of the base package `name`, made now with the catalogue's versions; 404
    `package_not_found` as for any package when the catalogue has none of that name."""
    try:
        source = await catalogue_package(session, check_name(name))
    except InvalidInput:  # no package has a name that is not one: a 404, as before there was a catalogue
        source = None
    if source is None:
        raise NotFound(f"no package named {name!r}", code="package_not_found")
    copy = await get_or_create_named(
        session,
        Package,
        "package",
        {"name": source.name, "builtin": True, "description": source.description},
        {"project_id": project.id},
    )
    await sync_copy(session, copy)
    return copy


async def refuse_builtin_upload(session: AsyncSession, project: Project, name: str) -> None:
    """409 `package_builtin` for an upload into a base package's name: a project's copy holds the
    catalogue's versions only (and what was trained from them), and a name of the catalogue is kept
    for it, so a template naming it always means the built-in package."""
    copy = await session.scalar(
        select(Package.builtin).where(Package.project_id == project.id, Package.name == name)
    )
    if copy is False:
        return  # the project's own package (made before the catalogue had that name): it stays its own
    if copy is True or await catalogue_package(session, name) is not None:
        raise Conflict(
            f"{name!r} is a built-in base package: upload your package under another name",
            code="package_builtin",
            field="package",
        )


async def check_model_type(session: AsyncSession, package: Package, model_type_id: uuid.UUID) -> None:
    """A template on a base package is for one of the model types the package is for."""
    if not package.builtin or not package.model_types:
        return
    model_type = await session.get(ModelType, model_type_id)
    if model_type is not None and model_type.name not in package.model_types:
        raise InvalidInput(
            f"the base package {package.name!r} is for the model types {', '.join(package.model_types)}, "
            f"not {model_type.name!r}",
            code="model_type_mismatch",
            field="model_type",
        )


async def install_now(settings: Settings) -> list[Installed]:
    """`trainyard-api migrate` and `trainyard-api base-packages install`: the catalogue brought up to
    this code, in one transaction, on a database already at its schema."""
    engine = create_engine(settings)
    try:
        sessionmaker = create_sessionmaker(engine, Notifier())  # nothing here wakes a long-poll
        async with sessionmaker() as session:
            installed = await install_base_packages(session, blob_store(settings), settings.archive_limits())
            await session.commit()
        return installed
    finally:
        await engine.dispose()


async def list_catalogue(
    session: AsyncSession, page: PageParams, model_type: str | None
) -> Page[BasePackageRead]:
    """The catalogue, a page of it; with `model_type`, only the packages for it."""

    async def item(package: Package) -> BasePackageRead:
        versions = list(
            await session.scalars(
                select(PackageVersion)
                .where(PackageVersion.package_id == package.id)
                .order_by(PackageVersion.major, PackageVersion.minor)
            )
        )
        latest = versions[-1] if versions else None
        return BasePackageRead(
            id=package.id,
            name=package.name,
            description=package.description,
            model_types=package.model_types,
            latest_version=None if latest is None else str(Version(latest.major, latest.minor)),
            versions=[str(Version(v.major, v.minor)) for v in versions],
            has_evaluate=latest is not None and latest.has_evaluate,
            has_predict=latest is not None and latest.has_predict,
            declared_parameters=None if latest is None else latest.declared_parameters,
            created_at=package.created_at,
        )

    statement = select(Package).where(Package.project_id.is_(None))
    if model_type is not None:
        # a JSON list on both databases: filtered here, the catalogue being a handful of rows
        names = [p.name for p in await session.scalars(statement) if model_type in p.model_types]
        statement = statement.where(Package.name.in_(names))
    return await paged(session, statement, Package.id, page, item)
