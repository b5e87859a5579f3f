"""Packages: the list, a package's versions, a version's manifest and declared parameters, the
download, deletion where the API allows it, and the upload (drag and drop, a byte progress bar).

A client of `api/packages/service.py` with the permissions of its REST routes (`packages.view`,
`.upload`, `.delete`). The upload is the REST upload route's path, step by step: the body streams
into scratch files (`receive_multipart`), the zip is inspected off the event loop, stored by its
sha256, and recorded as the next major version in a short transaction of its own; nothing is held
whole in memory and no database connection is held while the bytes arrive.
"""

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
from api.core.blobs import StoredBlob
from api.core.db import SessionDep
from api.core.deps import BlobsDep, SettingsDep
from api.core.downloads import blob_response
from api.core.errors import InvalidInput, NotFound, TrainyardError
from api.core.schemas import MAX_PAGE_SIZE, PageParams
from api.core.security import Permission
from api.core.uploads import Upload
from api.models import Package, PackageVersion, Project
from api.packages import service
from api.packages.inspect import PackageInfo
from shared.versions import Version

PAGE = "packages"
router = APIRouter(prefix="/ui", include_in_schema=False)
Cursor = Annotated[str | None, Query(max_length=64)]


def packages_url(project: str) -> str:
    return f"{project_url(project)}packages/"


def package_url(project: str, package: str) -> str:
    return f"{packages_url(project)}{quote(package, safe='')}/"


def version_url(project: str, package: str, version: str) -> str:
    return f"{package_url(project, package)}versions/{quote(version, safe='')}/"


def _urls() -> dict[str, Any]:
    return {"package_url": package_url, "version_url": version_url, "packages_url": packages_url}


async def _package(request: Request, session: SessionDep, where: InProject, name: str) -> Package:
    try:
        return await service.get_package(session, where.project, name)
    except NotFound:
        raise refuse(request, where.signed_in, 404, "packages.not_found") from None


async def _version(
    request: Request, session: SessionDep, where: InProject, package: Package, version: str
) -> PackageVersion:
    try:
        return await service.get_version(session, package, version)
    except NotFound:
        raise refuse(request, where.signed_in, 404, "packages.no_version") from None


async def _listing(session: SessionDep, where: InProject, cursor: str | None) -> dict[str, Any]:
    page = await service.list_packages(session, where.project, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor))
    return {"packages": page.items, "next_cursor": page.next_cursor}


_list_page = partial(
    _uploads.list_page,
    page=PAGE,
    template="packages/list.html",
    urls=_urls(),
    list_url=packages_url,
    permission=Permission.PACKAGES_UPLOAD,
)


@router.get("/projects/{project}/packages/")
async def packages_page(
    request: Request, session: SessionDep, where: ProjectPage, cursor: Cursor = None
) -> HTMLResponse:
    require(request, where, Permission.PACKAGES_VIEW)
    return _list_page(request, where, await _listing(session, where, cursor))


@router.post("/projects/{project}/packages/upload")
async def upload_package(
    request: Request, session: SessionDep, blobs: BlobsDep, settings: SettingsDep, where: ProjectPage
) -> Response:
    """What `POST .../packages/{package}/versions` does, the package named by the form's `package`."""

    async def stage(upload: Upload) -> tuple[StoredBlob, PackageInfo]:
        files = upload.files_named("file")
        if len(files) != 1 or not (files[0].filename or files[0].size):
            raise InvalidInput("choose the package zip to send", code="file_required", field="file")
        info = await service.check_package(files[0].path, settings.archive_limits())
        return await blobs.put_file(files[0].path), info

    async def record(
        found: Project, name: str, staged: tuple[StoredBlob, PackageInfo]
    ) -> tuple[str, dict[str, object]]:
        stored, info = staged
        package, version = await service.add_uploaded_version(
            session, found, name, stored, info, where.principal.id
        )
        number = str(Version(version.major, version.minor))
        return version_url(found.name, package.name, number), {"version": number}

    return await _uploads.receive(
        request,
        session,
        blobs,
        where,
        permission=Permission.PACKAGES_UPLOAD,
        limits={"max_bytes": settings.max_package_bytes},
        listing=lambda: _listing(session, where, None),
        list_page=_list_page,
        name_field="package",
        check_name=service.check_name,
        stage=stage,
        record=record,
        action="packages_versions_upload",
    )


@router.get("/projects/{project}/packages/{package}/")
async def package_page(
    request: Request, session: SessionDep, where: ProjectPage, package: str, cursor: Cursor = None
) -> HTMLResponse:
    require(request, where, Permission.PACKAGES_VIEW)
    found = await _package(request, session, where, package)
    return await _package_page(request, session, where, found, cursor)


async def _package_page(
    request: Request,
    session: SessionDep,
    where: InProject,
    found: Package,
    cursor: str | None = None,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    read = await service.package_read(session, where.project, found)
    page = await service.list_versions(
        session, where.project, found, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor)
    )
    versions = sorted(page.items, key=lambda item: (item.major, item.minor), reverse=True)
    context = where.context(
        active=PAGE,
        package=read,
        versions=versions,
        next_cursor=page.next_cursor,
        error=error,
        **_urls(),
        may_upload=where.can(Permission.PACKAGES_UPLOAD),
        may_delete=where.can(Permission.PACKAGES_DELETE),
        upload_action=f"{packages_url(where.project.name)}upload",
    )
    return render(
        request, "packages/package.html", context, signed_in=where.signed_in, status_code=status_code
    )


@router.post("/projects/{project}/packages/{package}/delete")
async def delete_package(
    request: Request, session: SessionDep, where: ProjectChange, package: str
) -> Response:
    """What `DELETE .../packages/{package}` does: refused while it has versions."""
    require(request, where, Permission.PACKAGES_DELETE)
    found = await _package(request, session, where, package)
    try:
        await service.delete_package(session, found)
    except TrainyardError as error:
        raise PageAnswer(
            await _package_page(
                request, session, where, found, error=error.detail, status_code=error.status_code
            )
        ) from None
    audit(session, request, where.principal, "packages_delete")
    return redirect(packages_url(where.project.name))


@router.get("/projects/{project}/packages/{package}/versions/{version}/")
async def version_page(
    request: Request, session: SessionDep, where: ProjectPage, package: str, version: str
) -> HTMLResponse:
    require(request, where, Permission.PACKAGES_VIEW)
    found = await _package(request, session, where, package)
    stored = await _version(request, session, where, found, version)
    return await _version_page(request, session, where, found, stored)


async def _version_page(
    request: Request,
    session: SessionDep,
    where: InProject,
    package: Package,
    stored: PackageVersion,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    read = await service.read_version(session, where.project, package, stored)
    context = where.context(
        active=PAGE,
        package_name=package.name,
        version=read,
        error=error,
        **_urls(),
        may_delete=where.can(Permission.PACKAGES_DELETE),
    )
    return render(
        request, "packages/version.html", context, signed_in=where.signed_in, status_code=status_code
    )


@router.get("/projects/{project}/packages/{package}/versions/{version}/download")
async def download_version(
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    where: ProjectPage,
    package: str,
    version: str,
) -> Response:
    """The zip, as `GET .../versions/{version}/download` streams it (ETag = its sha256)."""
    require(request, where, Permission.PACKAGES_VIEW)
    found = await _package(request, session, where, package)
    stored = await _version(request, session, where, found, version)
    return await blob_response(
        blobs,
        stored.blob_sha256,
        stored.size,
        "application/zip",
        request.headers.get("if-none-match"),
        filename=f"{found.name}-{Version(stored.major, stored.minor)}.zip",
        redirect=settings.s3_redirect_downloads,
    )


@router.post("/projects/{project}/packages/{package}/versions/{version}/delete")
async def delete_version(
    request: Request, session: SessionDep, where: ProjectChange, package: str, version: str
) -> Response:
    """What `DELETE .../versions/{version}` does: refused while a template or an active run uses it,
    or versions were trained from it."""
    require(request, where, Permission.PACKAGES_DELETE)
    found = await _package(request, session, where, package)
    stored = await _version(request, session, where, found, version)
    try:
        await service.delete_version(session, where.project, found, stored)
    except TrainyardError as error:
        page = await _version_page(
            request, session, where, found, stored, error=error.detail, status_code=error.status_code
        )
        raise PageAnswer(page) from None
    audit(session, request, where.principal, "packages_versions_delete")
    return redirect(package_url(where.project.name, found.name))
