import unicodedata
from contextlib import ExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from api.core.db import SessionDep
from api.core.deps import BlobsDep, SettingsDep
from api.core.downloads import (
    REDIRECT_RESPONSE,
    ScratchFileResponse,
    attachment,
    blob_response,
    etag_matches,
    etag_of,
    media_type_of,
    not_modified,
)
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission, Principal, requires
from api.core.unit_of_work import commit_early
from api.core.uploads import receive_multipart
from api.datasets import export, service, staging
from api.datasets.deps import (
    DatasetTarget,
    DatasetVersionTarget,
    VersionRef,
    dataset_for,
    dataset_version_for,
)
from api.datasets.schemas import UPLOAD_BODY, DatasetFileRead, DatasetRead, DatasetVersionRead
from api.projects.deps import InProject, in_project
from api.projects.service import get_project

router = APIRouter(
    prefix="/projects/{project}/datasets", tags=["datasets"], responses=error_responses(401, 403, 404, 422)
)

Viewer = Annotated[Principal, requires(Permission.DATASETS_VIEW)]
Uploader = Annotated[Principal, requires(Permission.DATASETS_UPLOAD)]
ViewedDataset = Annotated[DatasetTarget, dataset_for(Permission.DATASETS_VIEW)]
ViewedVersion = Annotated[DatasetVersionTarget, dataset_version_for(Permission.DATASETS_VIEW)]
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
    # No `dataset_for`: the dataset need not exist yet. The route declares `project` and `dataset`
    # itself (with `in_project`, the document would list `dataset` before `project`).
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
    return service.version_read(found, version)


@router.get("", operation_id="datasets_list")
async def list_datasets(
    target: Annotated[InProject, in_project(Permission.DATASETS_VIEW)], session: SessionDep, page: PageDep
) -> Page[DatasetRead]:
    return await service.list_datasets(session, target.project, page)


@router.get("/{dataset}", operation_id="datasets_get")
async def get_dataset(target: ViewedDataset, session: SessionDep) -> DatasetRead:
    latest = await service.latest_number(session, target.dataset)
    return service.dataset_read(target.project, target.dataset, latest)


@router.delete(
    "/{dataset}",
    operation_id="datasets_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(409),
)
async def delete_dataset(
    target: Annotated[DatasetTarget, dataset_for(Permission.DATASETS_DELETE)], session: SessionDep
) -> Response:
    """Delete the dataset with every version. Refused while a template names it or a run uses it."""
    await service.delete_dataset(session, target.project, target.dataset)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{dataset}/versions", operation_id="datasets_versions_list")
async def list_versions(
    target: ViewedDataset, session: SessionDep, page: PageDep
) -> Page[DatasetVersionRead]:
    return await service.list_versions(session, target.dataset, page)


@router.get(
    "/{dataset}/versions/{version}", operation_id="datasets_versions_get", responses=error_responses(409)
)
async def get_version(target: ViewedVersion) -> DatasetVersionRead:
    return service.version_read(target.dataset, target.version)


@router.delete(
    "/{dataset}/versions/{version}",
    operation_id="datasets_versions_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(409),
)
async def delete_version(
    target: Annotated[DatasetVersionTarget, dataset_version_for(Permission.DATASETS_DELETE)],
    session: SessionDep,
) -> Response:
    """Delete one version; its number is never given again. Refused while a template pins it or a run
    uses it."""
    await service.delete_version(session, target.project, target.dataset, target.version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{dataset}/versions/{version}/files", operation_id="datasets_files_list", responses=error_responses(409)
)
async def list_files(
    target: ViewedVersion,
    session: SessionDep,
    prefix: Annotated[
        str | None, Query(max_length=1024, description="Only files inside this folder.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_FILES_PAGE, description="Files per page.")] = 200,
    cursor: Annotated[
        str | None, Query(max_length=6000, description="`next_cursor` of the page before.")
    ] = None,
) -> Page[DatasetFileRead]:
    """The version's manifest, sorted by path: each file's path, sha256 and size."""
    files, next_cursor = await service.files_page(session, target.version, prefix, limit, cursor)
    return Page(
        items=[DatasetFileRead(path=path, sha256=sha256, size=size) for path, sha256, size in files],
        next_cursor=next_cursor,
    )


@router.get(
    "/{dataset}/versions/{version}/files/{path:path}",
    operation_id="datasets_files_download",
    response_class=StreamingResponse,
    responses={
        **error_responses(409),
        **_binary("application/octet-stream", "The file's content."),
        **REDIRECT_RESPONSE,
    },
)
async def download_file(
    project: str,
    dataset: str,
    version: VersionRef,
    path: str,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    _: Viewer,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """One file of the version (a badcase image, say), with its sha256 as `ETag`."""
    # No `dataset_version_for`: the route declares the path's parameters itself, so that the document
    # lists them in the path's order (a dependency's would come after `path`).
    found = await service.get_dataset(session, await get_project(session, project), dataset)
    resolved = await service.resolve_version(session, found, version, lock=False)
    file = await service.get_file(session, resolved, unicodedata.normalize("NFC", path))
    return await blob_response(
        blobs,
        file.sha256,
        file.size,
        media_type_of(file.path),
        if_none_match,
        filename=file.path,
        redirect=settings.s3_redirect_downloads,
    )


@router.get(
    "/{dataset}/versions/{version}/download",
    operation_id="datasets_versions_download",
    response_class=StreamingResponse,
    responses={**error_responses(409), **_binary("application/zip", "The version as one zip.")},
)
async def download_version(
    target: ViewedVersion, session: SessionDep, blobs: BlobsDep, if_none_match: IfNoneMatch = None
) -> Response:
    """The whole version as one zip, with its sha256 as `ETag` (one version always makes the same zip)."""
    found, resolved = target.dataset, target.version
    files = await service.manifest(session, resolved, None)
    await commit_early(session, "the zip is written next: building it holds no database connection")
    scratch = ExitStack()
    try:
        zipped = scratch.enter_context(blobs.temp_file())
        built = await export.write_zip(blobs, files, zipped, resolved.created_at)
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
    return ScratchFileResponse(zipped, scratch.close, media_type="application/zip", headers=headers)
