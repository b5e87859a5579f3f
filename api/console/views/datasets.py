"""Datasets: the list, a dataset's versions, a version's files as browsable folders, downloads (one
file, or the version as one zip), deletion where the API allows it, and the upload (a zip that becomes
the version, or files added to the previous one; drag and drop, a byte progress bar).

A client of `api/datasets/service.py` with the permissions of its REST routes (`datasets.view`,
`.upload`, `.delete`). The upload is the REST upload route's path: the body streams into scratch
files, `staging.stage` checks and stores them, and `add_version` records the version in a short
transaction of its own.
"""

import unicodedata
from contextlib import ExitStack
from functools import partial
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse, Response

from api.console.common import InProject, ProjectChange, ProjectPage, refuse, require
from api.console.nav import project_url
from api.console.pages import PageAnswer, redirect, render
from api.console.session import audit
from api.console.views import _uploads
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
from api.core.errors import TrainyardError
from api.core.schemas import MAX_PAGE_SIZE, PageParams
from api.core.security import Permission
from api.core.unit_of_work import commit_early
from api.core.uploads import Upload
from api.datasets import export, service, staging
from api.datasets.service import decode_path_cursor, encode_path_cursor
from api.models import Dataset, DatasetVersion, Project

PAGE = "datasets"
router = APIRouter(prefix="/ui", include_in_schema=False)
Cursor = Annotated[str | None, Query(max_length=64)]
PathCursor = Annotated[str | None, Query(max_length=6000)]
Folder = Annotated[str, Query(max_length=1024)]
ENTRIES_PER_PAGE = 200
_READ_AHEAD = 50  # manifest rows read at a time while a folder is listed
_PAST_EVERYTHING = "\U0010ffff"  # the highest code point: `dir/` + it sorts after every path in dir/


def datasets_url(project: str) -> str:
    return f"{project_url(project)}datasets/"


def dataset_url(project: str, dataset: str) -> str:
    return f"{datasets_url(project)}{quote(dataset, safe='')}/"


def version_url(project: str, dataset: str, number: int) -> str:
    return f"{dataset_url(project, dataset)}versions/{number}/"


def file_url(project: str, dataset: str, number: int, path: str) -> str:
    return f"{version_url(project, dataset, number)}files/{quote(path, safe='/')}"


def folder_url(project: str, dataset: str, number: int, folder: str) -> str:
    base = version_url(project, dataset, number)
    return f"{base}?folder={quote(folder, safe='')}" if folder else base


def _urls() -> dict[str, Any]:
    return {
        "datasets_url": datasets_url,
        "dataset_url": dataset_url,
        "version_url": version_url,
        "file_url": file_url,
        "folder_url": folder_url,
    }


async def _dataset(request: Request, session: SessionDep, where: InProject, name: str) -> Dataset:
    try:
        return await service.get_dataset(session, where.project, name)
    except TrainyardError:
        raise refuse(request, where.signed_in, 404, "datasets.not_found") from None


async def _version(
    request: Request, session: SessionDep, where: InProject, dataset: Dataset, number: str
) -> DatasetVersion:
    try:
        return await service.resolve_version(session, dataset, number, lock=False)
    except TrainyardError:
        raise refuse(request, where.signed_in, 404, "datasets.no_version") from None


async def folder_entries(
    session: SessionDep, version: DatasetVersion, folder: str, cursor: str | None
) -> tuple[list[str], list[tuple[str, str, int]], str | None]:
    """One page of a folder: its sub-folders, its files (name, full path, size), and the cursor of the
    next page. Read from the manifest in path order, skipping over each sub-folder's files at once
    (a cursor past `sub/` and everything in it), so a page costs one read per sub-folder shown."""
    base = f"{folder}/" if folder else ""
    folders: list[str] = []
    files: list[tuple[str, str, int]] = []
    position = None if cursor is None else decode_path_cursor(cursor)
    while len(folders) + len(files) < ENTRIES_PER_PAGE:
        after = None if position is None else encode_path_cursor(position)
        rows, more = await service.files_page(session, version, folder or None, _READ_AHEAD, after)
        for path, _, size in rows:
            name, slash, _ = path[len(base) :].partition("/")
            if slash:
                folders.append(name)
                position = f"{base}{name}/{_PAST_EVERYTHING}"
                break  # read on from past the sub-folder
            files.append((name, path, size))
            position = path
            if len(folders) + len(files) >= ENTRIES_PER_PAGE:
                break
        else:
            if more is None:
                return folders, files, None
    assert position is not None
    rows, _ = await service.files_page(session, version, folder or None, 1, encode_path_cursor(position))
    return folders, files, encode_path_cursor(position) if rows else None


async def _listing(session: SessionDep, where: InProject, cursor: str | None) -> dict[str, Any]:
    page = await service.list_datasets(session, where.project, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor))
    return {"datasets": page.items, "next_cursor": page.next_cursor}


_list_page = partial(
    _uploads.list_page,
    page=PAGE,
    template="datasets/list.html",
    urls=_urls(),
    list_url=datasets_url,
    permission=Permission.DATASETS_UPLOAD,
)


@router.get("/projects/{project}/datasets/")
async def datasets_page(
    request: Request, session: SessionDep, where: ProjectPage, cursor: Cursor = None
) -> HTMLResponse:
    require(request, where, Permission.DATASETS_VIEW)
    return _list_page(request, where, await _listing(session, where, cursor))


@router.post("/projects/{project}/datasets/upload")
async def upload_dataset(
    request: Request, session: SessionDep, blobs: BlobsDep, settings: SettingsDep, where: ProjectPage
) -> Response:
    """What `POST .../datasets/{dataset}/versions` does, the dataset named by the form's `dataset`."""

    async def stage(upload: Upload) -> staging.StagedUpload:
        if not upload.fields.get("description"):
            upload.fields.pop("description", None)  # an empty field keeps the description
        return await staging.stage(blobs, upload, settings.archive_limits())

    async def record(
        found: Project, name: str, staged: staging.StagedUpload
    ) -> tuple[str, dict[str, object]]:
        dataset, version = await service.add_version(session, found, name, staged, where.principal.id)
        return version_url(found.name, dataset.name, version.number), {"version": version.number}

    return await _uploads.receive(
        request,
        session,
        blobs,
        where,
        permission=Permission.DATASETS_UPLOAD,
        limits={"max_bytes": settings.max_dataset_bytes, "max_files": settings.max_archive_files},
        listing=lambda: _listing(session, where, None),
        list_page=_list_page,
        name_field="dataset",
        check_name=service.check_name,
        stage=stage,
        record=record,
        action="datasets_versions_upload",
    )


async def _dataset_page(
    request: Request,
    session: SessionDep,
    where: InProject,
    found: Dataset,
    cursor: str | None = None,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    latest = await service.latest_number(session, found)
    page = await service.list_versions(session, found, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor))
    context = where.context(
        active=PAGE,
        dataset=service.dataset_read(where.project, found, latest),
        versions=sorted(page.items, key=lambda item: item.number, reverse=True),
        next_cursor=page.next_cursor,
        error=error,
        **_urls(),
        may_upload=where.can(Permission.DATASETS_UPLOAD),
        may_delete=where.can(Permission.DATASETS_DELETE),
        upload_action=f"{datasets_url(where.project.name)}upload",
        upload_error=None,
        upload_name=found.name,
        fixed_name=found.name,
    )
    return render(
        request, "datasets/dataset.html", context, signed_in=where.signed_in, status_code=status_code
    )


@router.get("/projects/{project}/datasets/{dataset}/")
async def dataset_page(
    request: Request, session: SessionDep, where: ProjectPage, dataset: str, cursor: Cursor = None
) -> HTMLResponse:
    require(request, where, Permission.DATASETS_VIEW)
    return await _dataset_page(
        request, session, where, await _dataset(request, session, where, dataset), cursor
    )


@router.post("/projects/{project}/datasets/{dataset}/delete")
async def delete_dataset(
    request: Request, session: SessionDep, where: ProjectChange, dataset: str
) -> Response:
    """What `DELETE .../datasets/{dataset}` does: refused while a template names it or a run uses it."""
    require(request, where, Permission.DATASETS_DELETE)
    found = await _dataset(request, session, where, dataset)
    try:
        await service.delete_dataset(session, where.project, found)
    except TrainyardError as error:
        page = await _dataset_page(
            request, session, where, found, error=error.detail, status_code=error.status_code
        )
        raise PageAnswer(page) from None
    audit(session, request, where.principal, "datasets_delete")
    return redirect(datasets_url(where.project.name))


async def _version_page(
    request: Request,
    session: SessionDep,
    where: InProject,
    found: Dataset,
    version: DatasetVersion,
    folder: str,
    cursor: str | None,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    try:
        folder = staging.check_folder(folder, "folder") if folder else ""
        folders, files, next_cursor = await folder_entries(session, version, folder, cursor)
    except TrainyardError:
        raise refuse(request, where.signed_in, 404, "datasets.no_folder") from None
    parts = folder.split("/") if folder else []
    context = where.context(
        active=PAGE,
        dataset_name=found.name,
        version=service.version_read(found, version),
        folder=folder,
        trail=[(part, "/".join(parts[: index + 1])) for index, part in enumerate(parts)],
        parent="/".join(parts[:-1]),
        folders=folders,
        files=files,
        next_cursor=next_cursor,
        error=error,
        **_urls(),
        may_delete=where.can(Permission.DATASETS_DELETE),
    )
    return render(
        request, "datasets/version.html", context, signed_in=where.signed_in, status_code=status_code
    )


@router.get("/projects/{project}/datasets/{dataset}/versions/{version}/")
async def version_page(
    request: Request,
    session: SessionDep,
    where: ProjectPage,
    dataset: str,
    version: str,
    folder: Folder = "",
    cursor: PathCursor = None,
) -> HTMLResponse:
    require(request, where, Permission.DATASETS_VIEW)
    found = await _dataset(request, session, where, dataset)
    resolved = await _version(request, session, where, found, version)
    return await _version_page(request, session, where, found, resolved, folder, cursor)


@router.get("/projects/{project}/datasets/{dataset}/versions/{version}/files/{path:path}")
async def download_file(
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    where: ProjectPage,
    dataset: str,
    version: str,
    path: str,
) -> Response:
    """One file, as `GET .../files/{path}` streams it (ETag = its sha256)."""
    require(request, where, Permission.DATASETS_VIEW)
    found = await _dataset(request, session, where, dataset)
    resolved = await _version(request, session, where, found, version)
    try:
        file = await service.get_file(session, resolved, unicodedata.normalize("NFC", path))
    except TrainyardError:
        raise refuse(request, where.signed_in, 404, "datasets.no_file") from None
    return await blob_response(
        blobs,
        file.sha256,
        file.size,
        media_type_of(file.path),
        request.headers.get("if-none-match"),
        filename=file.path,
        redirect=settings.s3_redirect_downloads,
    )


@router.get("/projects/{project}/datasets/{dataset}/versions/{version}/download")
async def download_version(
    request: Request, session: SessionDep, blobs: BlobsDep, where: ProjectPage, dataset: str, version: str
) -> Response:
    """The version as one zip, as `GET .../versions/{version}/download` builds it."""
    require(request, where, Permission.DATASETS_VIEW)
    found = await _dataset(request, session, where, dataset)
    resolved = await _version(request, session, where, found, version)
    files = await service.manifest(session, resolved, None)
    await commit_early(session, "the zip is written next: building it holds no database connection")
    scratch = ExitStack()
    try:
        zipped = scratch.enter_context(blobs.temp_file())
        built = await export.write_zip(blobs, files, zipped, resolved.created_at)
        if etag_matches(request.headers.get("if-none-match"), built.sha256):
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


@router.post("/projects/{project}/datasets/{dataset}/versions/{version}/delete")
async def delete_version(
    request: Request, session: SessionDep, where: ProjectChange, dataset: str, version: str
) -> Response:
    """What `DELETE .../versions/{version}` does: refused while a template pins it or a run uses it."""
    require(request, where, Permission.DATASETS_DELETE)
    found = await _dataset(request, session, where, dataset)
    resolved = await _version(request, session, where, found, version)
    try:
        await service.delete_version(session, where.project, found, resolved)
    except TrainyardError as error:
        page = await _version_page(
            request,
            session,
            where,
            found,
            resolved,
            "",
            None,
            error=error.detail,
            status_code=error.status_code,
        )
        raise PageAnswer(page) from None
    audit(session, request, where.principal, "datasets_versions_delete")
    return redirect(dataset_url(where.project.name, found.name))
