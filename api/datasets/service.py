"""Datasets: versions 1, 2, ... each a manifest of (path, sha256, size) over content-addressed blobs.

A version is written in one short transaction once its files are in the blob store (`staging.py`):
its number comes from one `UPDATE datasets SET highest_version = highest_version + 1 ... RETURNING`,
which also locks the dataset's row until the commit, so an upload that builds on the previous version
sees every version committed before it, and a deleted version's number is never given again.

On PostgreSQL a version that a run is being started on is locked `FOR SHARE` (`resolve_version`) and
a delete locks what it deletes `FOR UPDATE` before it looks for users: whichever comes second waits
for the first and then sees what it did. SQLite has one writer at a time, so it needs no locks.
"""

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import Conflict, InvalidInput, NotFound
from api.core.repository import get_by_name, get_or_create_named, record_blobs
from api.core.schemas import Page, PageParams, paged
from api.datasets.schemas import DatasetRead, DatasetVersionRead
from api.datasets.staging import MAX_PATH_LENGTH, ManifestEntry, StagedUpload, check_folder
from api.models import Dataset, DatasetFile, DatasetVersion, Project, Run, Template
from shared.enums import ACTIVE_RUN_STATUSES
from shared.names import InvalidName, normalize_name
from shared.protocol import INT32_MAX

_BATCH = 500  # rows per INSERT: under SQLite's limit of bound parameters
_CREATE_ATTEMPTS = 3

LATEST_NUMBER = (
    select(func.max(DatasetVersion.number))
    .where(DatasetVersion.dataset_id == Dataset.id)
    .correlate(Dataset)
    .scalar_subquery()
)


def check_name(name: str) -> str:
    """A new dataset's name, normalised; 422 `invalid_name` when it is not one."""
    try:
        return normalize_name(name)
    except InvalidName as error:
        raise InvalidInput(f"dataset name {name!r} {error}", code="invalid_name", field="dataset") from None


async def get_dataset(session: AsyncSession, project: Project, name: str) -> Dataset:
    return await get_by_name(session, Dataset, name, "dataset", project_id=project.id)


async def latest_number(session: AsyncSession, dataset: Dataset) -> int | None:
    number: int | None = await session.scalar(
        select(func.max(DatasetVersion.number)).where(DatasetVersion.dataset_id == dataset.id)
    )
    return number


def dataset_read(project: Project, dataset: Dataset, latest: int | None) -> DatasetRead:
    return DatasetRead(
        id=dataset.id,
        project=project.name,
        name=dataset.name,
        description=dataset.description,
        latest_version=latest,
        created_at=dataset.created_at,
    )


def version_read(dataset: Dataset, version: DatasetVersion) -> DatasetVersionRead:
    return DatasetVersionRead(
        id=version.id,
        dataset=dataset.name,
        number=version.number,
        file_count=version.file_count,
        total_bytes=version.total_bytes,
        content_hash=version.content_hash,
        created_at=version.created_at,
    )


async def list_datasets(session: AsyncSession, project: Project, page: PageParams) -> Page[DatasetRead]:
    """A project's datasets, each with its latest version's number."""

    def item(dataset: Dataset, latest: int | None) -> DatasetRead:
        return dataset_read(project, dataset, latest)

    statement = select(Dataset, LATEST_NUMBER).where(Dataset.project_id == project.id)
    return await paged(session, statement, Dataset.id, page, item)


async def list_versions(
    session: AsyncSession, dataset: Dataset, page: PageParams
) -> Page[DatasetVersionRead]:
    def item(version: DatasetVersion) -> DatasetVersionRead:
        return version_read(dataset, version)

    statement = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
    return await paged(session, statement, DatasetVersion.id, page, item)


def parse_version(version: int | str) -> int | Literal["latest"]:
    """A version as a client or a template names it: a number from 1 to INT32_MAX (the column's
    width: past it PostgreSQL's INTEGER overflows, so such a number is invalid, not merely absent),
    or `latest`."""
    if isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= INT32_MAX:
        return version
    if version == "latest":
        return "latest"
    digits = isinstance(version, str) and version.isascii() and version.isdigit() and len(version) <= 10
    if digits and 1 <= int(version) <= INT32_MAX:
        return int(version)
    raise InvalidInput(
        f"a dataset version is a number from 1 to {INT32_MAX} or 'latest', not {version!r}",
        code="invalid_version",
        field="version",
    )


def _version_not_found(dataset: Dataset, number: int | str) -> NotFound:
    return NotFound(f"dataset {dataset.name!r} has no version {number}", code="dataset_version_not_found")


async def resolve_version(
    session: AsyncSession, dataset: Dataset, version: int | str, *, lock: bool = True
) -> DatasetVersion:
    """The version numbered `version`, or with `"latest"` the highest that exists.

    404 `dataset_version_not_found`; 409 `dataset_empty` for `latest` when there is no version. With
    `lock` (the default: callers resolve to use the version) the row is locked `FOR SHARE` until the
    transaction ends, so a concurrent delete waits and then finds the run that uses it.
    """
    wanted = parse_version(version)
    for _ in range(_CREATE_ATTEMPTS):
        number = wanted if wanted != "latest" else await latest_number(session, dataset)
        if number is None:
            raise Conflict(f"dataset {dataset.name!r} has no versions yet", code="dataset_empty")
        statement = select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id, DatasetVersion.number == number
        )
        found = await session.scalar(statement.with_for_update(read=True) if lock else statement)
        if found is not None:
            return found
        if wanted != "latest":
            break
        # The latest was deleted between the two reads: the one before it is the latest now.
    raise _version_not_found(dataset, wanted)


def _path_key(session: AsyncSession) -> ColumnElement[str]:
    """Paths in code-point order on both databases (PostgreSQL's default collation is linguistic)."""
    collation = "C" if session.get_bind().dialect.name == "postgresql" else "BINARY"
    return DatasetFile.path.collate(collation)


def _under(session: AsyncSession, folder: str) -> list[ColumnElement[bool]]:
    """Paths inside `folder`: a range, so no LIKE wildcard in a name can widen it ('0' follows '/')."""
    key = _path_key(session)
    return [key >= f"{folder}/", key < f"{folder}0"]


def _files(session: AsyncSession, version: DatasetVersion, folder: str | None) -> Select[str, str, int]:
    statement = select(DatasetFile.path, DatasetFile.sha256, DatasetFile.size).where(
        DatasetFile.version_id == version.id
    )
    if folder is not None:
        statement = statement.where(*_under(session, folder))
    return statement.order_by(_path_key(session))


def _path_not_found(version: DatasetVersion, folder: str) -> NotFound:
    return NotFound(
        f"version {version.number} holds no files under {folder!r}",
        code="dataset_path_not_found",
        field="path",
    )


async def manifest(
    session: AsyncSession, version: DatasetVersion, prefix: str | None
) -> list[tuple[str, str, int]]:
    """(path relative to `prefix`, sha256, size) of every file of the version under the sub-folder
    `prefix` (all with None), sorted by path; 404 `dataset_path_not_found` when it holds no file."""
    folder = check_folder(prefix, "path") if prefix else None
    rows = (await session.execute(_files(session, version, folder))).all()
    if folder is None:
        return [(path, sha256, size) for path, sha256, size in rows]
    if not rows:
        raise _path_not_found(version, folder)
    cut = len(folder) + 1
    return [(path[cut:], sha256, size) for path, sha256, size in rows]


def encode_path_cursor(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")


def decode_path_cursor(cursor: str) -> str:
    try:
        path = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError):
        path = ""
    if not path or len(path) > MAX_PATH_LENGTH or any(ord(char) < 0x20 for char in path):
        raise InvalidInput("the cursor is not one this API gave out", code="invalid_cursor", field="cursor")
    return path


async def files_page(
    session: AsyncSession, version: DatasetVersion, prefix: str | None, limit: int, cursor: str | None
) -> tuple[list[ManifestEntry], str | None]:
    """One page of the manifest by path (full paths), and the cursor of the next page."""
    folder = check_folder(prefix, "prefix") if prefix else None
    statement = _files(session, version, folder)
    if cursor is not None:
        statement = statement.where(_path_key(session) > decode_path_cursor(cursor))
    rows = [(path, sha256, size) for path, sha256, size in await session.execute(statement.limit(limit + 1))]
    if folder is not None and not rows and cursor is None:
        raise _path_not_found(version, folder)
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_path_cursor(rows[limit - 1][0])


async def get_file(session: AsyncSession, version: DatasetVersion, path: str) -> DatasetFile:
    found = await session.get(DatasetFile, (version.id, path))
    if found is None:
        raise NotFound(f"version {version.number} holds no file {path!r}", code="dataset_file_not_found")
    return found


def content_hash(files: Iterable[ManifestEntry]) -> str:
    """sha256 over the sorted lines `path\\tsha256\\tsize\\n`: the same content, the same hash."""
    digest = hashlib.sha256()
    for path, sha256, size in sorted(files):
        digest.update(f"{path}\t{sha256}\t{size}\n".encode())
    return digest.hexdigest()


def _check_clashes(paths: Iterable[str]) -> None:
    """A path may not be both a file and a folder: the version could not be written to a disk."""
    files = set(paths)
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in files:
                raise Conflict(
                    f"{folder!r} would be both a file and the folder of {path!r}",
                    code="path_clash",
                    field="path",
                )


async def _allocate(session: AsyncSession, project: Project, name: str) -> tuple[Dataset, int]:
    """The dataset (created on its first upload) and the next number; its row stays locked."""
    for _ in range(_CREATE_ATTEMPTS):
        dataset = await get_or_create_named(
            session, Dataset, "dataset", {"name": name}, {"project_id": project.id}
        )
        number = await session.scalar(
            update(Dataset)
            .where(Dataset.id == dataset.id)
            .values(highest_version=Dataset.highest_version + 1)
            .returning(Dataset.highest_version),
            execution_options={"synchronize_session": False},
        )
        if number is not None:
            dataset.highest_version = number
            return dataset, number
        # Deleted between the read and the update: create it again.
    raise Conflict(f"dataset {name!r} was deleted while this upload arrived", code="dataset_deleted")


async def _previous_files(session: AsyncSession, dataset: Dataset, number: int) -> dict[str, tuple[str, int]]:
    previous = await session.scalar(
        select(DatasetVersion.id)
        .where(DatasetVersion.dataset_id == dataset.id, DatasetVersion.number < number)
        .order_by(DatasetVersion.number.desc())
        .limit(1)
    )
    if previous is None:
        return {}
    rows = await session.execute(
        select(DatasetFile.path, DatasetFile.sha256, DatasetFile.size).where(
            DatasetFile.version_id == previous
        )
    )
    return {path: (sha256, size) for path, sha256, size in rows}


async def add_version(
    session: AsyncSession, project: Project, name: str, staged: StagedUpload, created_by: Any
) -> tuple[Dataset, DatasetVersion]:
    """Record an upload whose files are in the blob store as the dataset's next version."""
    dataset, number = await _allocate(session, project, name)
    files: dict[str, tuple[str, int]] = {}
    if not staged.replaces:
        files = await _previous_files(session, dataset, number)
    files.update((path, (sha256, size)) for path, sha256, size in staged.files)
    _check_clashes(files)
    entries = sorted((path, sha256, size) for path, (sha256, size) in files.items())
    await record_blobs(session, staged.blobs)
    version = DatasetVersion(
        dataset_id=dataset.id,
        number=number,
        file_count=len(entries),
        total_bytes=sum(size for _, _, size in entries),
        content_hash=content_hash(entries),
        created_by=created_by,
    )
    session.add(version)
    if staged.description is not None:
        dataset.description = staged.description
    await session.flush()
    rows = [{"version_id": version.id, "path": p, "sha256": s, "size": z} for p, s, z in entries]
    for start in range(0, len(rows), _BATCH):
        await session.execute(insert(DatasetFile).values(rows[start : start + _BATCH]))
    return dataset, version


def _active_runs_on(versions: Any) -> Select[Any]:
    return select(func.count()).where(
        Run.status.in_([status.value for status in ACTIVE_RUN_STATUSES]),
        or_(Run.dataset_version_id.in_(versions), Run.test_dataset_version_id.in_(versions)),
    )


def _names(found: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in sorted(found))


async def delete_dataset(session: AsyncSession, project: Project, dataset: Dataset) -> None:
    """Delete a dataset and its versions (the blobs stay: other versions may share them). Refused while
    a template names it or a run is active on one of its versions."""
    # Lock the dataset (an upload's number) and every version (a run start's FOR SHARE) first.
    await session.execute(select(Dataset.id).where(Dataset.id == dataset.id).with_for_update())
    await session.execute(
        select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset.id).with_for_update()
    )
    templates = (
        await session.scalars(
            select(Template.name).where(
                Template.project_id == project.id,
                or_(Template.dataset == dataset.name, Template.test_dataset == dataset.name),
            )
        )
    ).all()
    if templates:
        raise Conflict(
            f"dataset {dataset.name!r} is used by the templates {_names(templates)}", code="dataset_in_use"
        )
    versions = select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset.id)
    if await session.scalar(_active_runs_on(versions)):
        raise Conflict(f"a run is active on a version of dataset {dataset.name!r}", code="dataset_in_use")
    options = {"synchronize_session": False}
    await session.execute(
        delete(DatasetFile).where(DatasetFile.version_id.in_(versions)), execution_options=options
    )
    await session.execute(
        delete(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id), execution_options=options
    )
    await session.execute(delete(Dataset).where(Dataset.id == dataset.id), execution_options=options)


async def delete_version(
    session: AsyncSession, project: Project, dataset: Dataset, found: DatasetVersion
) -> None:
    """Delete one version (its number is never given again), as read by `resolve_version(...,
    lock=False)`. Refused while a template pins its number or a run is active on it."""
    locked = await session.scalar(
        select(DatasetVersion.id).where(DatasetVersion.id == found.id).with_for_update()
    )
    if locked is None:
        raise _version_not_found(dataset, found.number)
    number = str(found.number)
    templates = (
        await session.scalars(
            select(Template.name).where(
                Template.project_id == project.id,
                or_(
                    (Template.dataset == dataset.name) & (Template.dataset_version == number),
                    (Template.test_dataset == dataset.name) & (Template.test_dataset_version == number),
                ),
            )
        )
    ).all()
    if templates:
        raise Conflict(
            f"version {number} of dataset {dataset.name!r} is pinned by the templates {_names(templates)}",
            code="dataset_version_in_use",
        )
    if await session.scalar(_active_runs_on([found.id])):
        raise Conflict(
            f"a run is active on version {number} of dataset {dataset.name!r}", code="dataset_version_in_use"
        )
    options = {"synchronize_session": False}
    await session.execute(
        delete(DatasetFile).where(DatasetFile.version_id == found.id), execution_options=options
    )
    await session.execute(
        delete(DatasetVersion).where(DatasetVersion.id == found.id), execution_options=options
    )
