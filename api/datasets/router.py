import unicodedata
from contextlib import ExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.core.db import SessionDep
from api.core.deps import BlobsDep, SettingsDep
from api.core.downloads import (
    ScratchFileResponse,
    attachment,
    blob_response,
    etag_matches,
    etag_of,
    media_type_of,
    not_modified,
)
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep, fetch_page
from api.core.security import Permission, Principal, requires
from api.core.unit_of_work import commit_early
from api.core.uploads import receive_multipart
from api.datasets import export, service, staging
from api.datasets.schemas import UPLOAD_BODY, DatasetFileRead, DatasetRead, DatasetVersionRead
from api.models import Dataset, DatasetVersion, Project
from api.projects.service import get_project

router = APIRouter(
    prefix="/projects/{project}/datasets", tags=["datasets"], responses=error_responses(401, 403, 404, 422)
)

Viewer = Annotated[Principal, requires(Permission.DATASETS_VIEW)]
Uploader = Annotated[Principal, requires(Permission.DATASETS_UPLOAD)]
Deleter = Annotated[Principal, requires(Permission.DATASETS_DELETE)]
VersionRef = Annotated[
    str,
    PathParam(
        pattern=r"^(latest|[1-9][0-9]{0,9})$",
        description="A version number, or `latest` for the highest that exists.",
        examples=["3", "latest"],
    ),
]
IfNoneMatch = Annotated[str | None, Header(description="`ETag`s the client holds: 304 if one matches.")]
MAX_FILES_PAGE = 1000


def _binary(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": description,
            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}},
        },
        304: {"description": "Not modified: the `ETag` sent in `If-None-Match` is current."},
    }


def _dataset_read(project: Project, dataset: Dataset, latest: int | None) -> DatasetRead:
    return DatasetRead(
        id=dataset.id,
        project=project.name,
        name=dataset.name,
        description=dataset.description,
        latest_version=latest,
        created_at=dataset.created_at,
    )


def _version_read(dataset: Dataset, version: DatasetVersion) -> DatasetVersionRead:
    return DatasetVersionRead(
        id=version.id,
        dataset=dataset.name,
        number=version.number,
        file_count=version.file_count,
        total_bytes=version.total_bytes,
        content_hash=version.content_hash,
        created_at=version.created_at,
    )


async def _version(
    session: SessionDep, project: str, dataset: str, version: str
) -> tuple[Dataset, DatasetVersion]:
    found = await service.get_dataset(session, await get_project(session, project), dataset)
    return found, await service.resolve_version(session, found, version, lock=False)


@router.post(
    "/{dataset}/versions",
    operation_id="datasets_versions_upload",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 413),
    openapi_extra=UPLOAD_BODY,
)
async def upload_version(
    project: str,
    dataset: str,
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    principal: Uploader,
) -> DatasetVersionRead:
    """Upload the dataset's next version, creating the dataset on its first upload. Either one zip as
    `file` (the new version is exactly its files) or any files as `files`, not unpacked (the new
    version is the previous one with these added or replaced); both go under the sub-folder `path`."""
    name = service.check_name(dataset)
    await get_project(session, project)
    await commit_early(session, "the dataset's body streams in next: an upload holds no connection")
    async with receive_multipart(
        request, blobs, max_bytes=settings.max_dataset_bytes, max_files=settings.max_archive_files
    ) as upload:
        staged = await staging.stage(blobs, upload, settings.archive_limits())
    found, version = await service.add_version(
        session, await get_project(session, project), name, staged, principal.id
    )
    return _version_read(found, version)


@router.get("", operation_id="datasets_list")
async def list_datasets(project: str, session: SessionDep, _: Viewer, page: PageDep) -> Page[DatasetRead]:
    found = await get_project(session, project)
    statement = select(Dataset, service.LATEST_NUMBER).where(Dataset.project_id == found.id)
    rows, cursor = await fetch_page(session, statement, Dataset.id, page)
    return Page(items=[_dataset_read(found, dataset, latest) for dataset, latest in rows], next_cursor=cursor)


@router.get("/{dataset}", operation_id="datasets_get")
async def get_dataset(project: str, dataset: str, session: SessionDep, _: Viewer) -> DatasetRead:
    found = await get_project(session, project)
    ds = await service.get_dataset(session, found, dataset)
    return _dataset_read(found, ds, await service.latest_number(session, ds))


@router.delete(
    "/{dataset}",
    operation_id="datasets_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(409),
)
async def delete_dataset(project: str, dataset: str, session: SessionDep, _: Deleter) -> Response:
    """Delete the dataset with every version. Refused while a template names it or a run uses it."""
    await service.delete_dataset(session, await get_project(session, project), dataset)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{dataset}/versions", operation_id="datasets_versions_list")
async def list_versions(
    project: str, dataset: str, session: SessionDep, _: Viewer, page: PageDep
) -> Page[DatasetVersionRead]:
    found = await service.get_dataset(session, await get_project(session, project), dataset)
    statement = select(DatasetVersion).where(DatasetVersion.dataset_id == found.id)
    rows, cursor = await fetch_page(session, statement, DatasetVersion.id, page)
    return Page(items=[_version_read(found, row[0]) for row in rows], next_cursor=cursor)


@router.get(
    "/{dataset}/versions/{version}", operation_id="datasets_versions_get", responses=error_responses(409)
)
async def get_version(
    project: str, dataset: str, version: VersionRef, session: SessionDep, _: Viewer
) -> DatasetVersionRead:
    return _version_read(*await _version(session, project, dataset, version))


@router.delete(
    "/{dataset}/versions/{version}",
    operation_id="datasets_versions_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(409),
)
async def delete_version(
    project: str, dataset: str, version: VersionRef, session: SessionDep, _: Deleter
) -> Response:
    """Delete one version; its number is never given again. Refused while a template pins it or a run
    uses it."""
    found = await get_project(session, project)
    await service.delete_version(session, found, await service.get_dataset(session, found, dataset), version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{dataset}/versions/{version}/files", operation_id="datasets_files_list", responses=error_responses(409)
)
async def list_files(
    project: str,
    dataset: str,
    version: VersionRef,
    session: SessionDep,
    _: Viewer,
    prefix: Annotated[
        str | None, Query(max_length=1024, description="Only files inside this folder.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_FILES_PAGE, description="Files per page.")] = 200,
    cursor: Annotated[
        str | None, Query(max_length=6000, description="`next_cursor` of the page before.")
    ] = None,
) -> Page[DatasetFileRead]:
    """The version's manifest, sorted by path: each file's path, sha256 and size."""
    found = (await _version(session, project, dataset, version))[1]
    files, next_cursor = await service.files_page(session, found, prefix, limit, cursor)
    return Page(
        items=[DatasetFileRead(path=path, sha256=sha256, size=size) for path, sha256, size in files],
        next_cursor=next_cursor,
    )


@router.get(
    "/{dataset}/versions/{version}/files/{path:path}",
    operation_id="datasets_files_download",
    response_class=StreamingResponse,
    responses={**error_responses(409), **_binary("application/octet-stream", "The file's content.")},
)
async def download_file(
    project: str,
    dataset: str,
    version: VersionRef,
    path: str,
    session: SessionDep,
    blobs: BlobsDep,
    _: Viewer,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """One file of the version (a badcase image, say), with its sha256 as `ETag`."""
    found = (await _version(session, project, dataset, version))[1]
    file = await service.get_file(session, found, unicodedata.normalize("NFC", path))
    return await blob_response(
        blobs, file.sha256, file.size, media_type_of(file.path), if_none_match, filename=file.path
    )


@router.get(
    "/{dataset}/versions/{version}/download",
    operation_id="datasets_versions_download",
    response_class=StreamingResponse,
    responses={**error_responses(409), **_binary("application/zip", "The version as one zip.")},
)
async def download_version(
    project: str,
    dataset: str,
    version: VersionRef,
    session: SessionDep,
    blobs: BlobsDep,
    _: Viewer,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The whole version as one zip, with its sha256 as `ETag` (one version always makes the same zip)."""
    found, resolved = await _version(session, project, dataset, version)
    files = await service.manifest(session, resolved, None)
    await commit_early(session, "the zip is written next: building it holds no database connection")
    scratch = ExitStack()
    try:
        target = scratch.enter_context(blobs.temp_file())
        built = await export.write_zip(blobs, files, target, resolved.created_at)
        if etag_matches(if_none_match, built.sha256):
            scratch.close()
            return not_modified(built.sha256)
    except BaseException:
        scratch.close()
        raise
    headers = {
        "ETag": etag_of(built.sha256),
        "Content-Length": str(built.size),
        "Content-Disposition": attachment(f"{found.name}-{resolved.number}.zip"),
    }
    return ScratchFileResponse(target, scratch.close, media_type="application/zip", headers=headers)
