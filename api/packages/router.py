from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select

from api.core.db import SessionDep
from api.core.deps import BlobsDep, SettingsDep
from api.core.downloads import blob_response
from api.core.errors import InvalidInput, error_responses
from api.core.schemas import Page, PageDep, fetch_page
from api.core.security import Permission, Principal, requires
from api.core.unit_of_work import commit_early
from api.core.uploads import receive_multipart
from api.models import Package, PackageVersion, Project
from api.packages import service
from api.packages.schemas import LineageRead, PackageRead, PackageVersionRead
from api.projects.service import get_project
from shared.versions import Version

router = APIRouter(prefix="/projects/{project}", tags=["packages"], responses=error_responses(401, 403, 404))

Viewer = Annotated[Principal, requires(Permission.PACKAGES_VIEW)]
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": "The zip."}},
                }
            }
        },
    }
}


async def _read(
    session: SessionDep, project: Project, package: Package, version: PackageVersion
) -> PackageVersionRead:
    return service.version_read(project, package, version, await service.parent_text(session, version))


@router.post(
    "/packages/{package}/versions",
    operation_id="packages_versions_upload",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 413, 422),
    openapi_extra=_UPLOAD_BODY,
)
async def upload_version(
    project: str,
    package: str,
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    principal: Annotated[Principal, requires(Permission.PACKAGES_UPLOAD)],
) -> PackageVersionRead:
    """Upload a package zip (multipart `file`) as the next major version, creating the package on its
    first upload. Refused with a clear code when it cannot run: no train.py, no `class Main` with
    `train` and `save`, a syntax error, unsafe entries, a zip bomb, a bad parameters.json."""
    name = service.check_name(package)  # a 422 before the body is read: a bad name stores nothing
    await get_project(session, project)  # a 404 before the body is read
    # On SQLite the API's one connection would otherwise be held, and every other request stalled,
    # for the whole upload.
    await commit_early(session, "the package's body streams in next")
    async with receive_multipart(request, blobs, max_bytes=settings.max_package_bytes) as upload:
        files = upload.files_named("file")
        if len(files) != 1:
            raise InvalidInput(
                "send the package zip as the one multipart field `file`", code="file_required", field="file"
            )
        info = await service.check_package(files[0].path, settings.archive_limits())
        stored = await blobs.put_file(files[0].path)
    found = await get_project(session, project)
    version = await service.add_uploaded_version(session, found, name, stored, info, principal.id)
    return await _read(session, found, await session.get_one(Package, version.package_id), version)


@router.get("/packages", operation_id="packages_list")
async def list_packages(project: str, session: SessionDep, _: Viewer, page: PageDep) -> Page[PackageRead]:
    found = await get_project(session, project)
    count = (
        select(func.count())
        .where(PackageVersion.package_id == Package.id)
        .correlate(Package)
        .scalar_subquery()
    )
    rows, cursor = await fetch_page(
        session, select(Package, count).where(Package.project_id == found.id), Package.id, page
    )
    items = []
    for package, versions in rows:
        latest = await service.latest_version(session, package)
        items.append(_package_read(found, package, latest, versions))
    return Page(items=items, next_cursor=cursor)


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
        created_at=package.created_at,
    )


@router.get("/packages/{package}", operation_id="packages_get")
async def get_package(project: str, package: str, session: SessionDep, _: Viewer) -> PackageRead:
    found = await get_project(session, project)
    pkg = await service.get_package(session, found, package)
    count = await session.scalar(select(func.count()).where(PackageVersion.package_id == pkg.id))
    return _package_read(found, pkg, await service.latest_version(session, pkg), int(count or 0))


@router.delete(
    "/packages/{package}",
    operation_id="packages_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(409),
)
async def delete_package(
    project: str,
    package: str,
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.PACKAGES_DELETE)],
) -> Response:
    """Delete a package that has no versions left."""
    await service.delete_package(session, await get_project(session, project), package)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/packages/{package}/versions", operation_id="packages_versions_list")
async def list_versions(
    project: str, package: str, session: SessionDep, _: Viewer, page: PageDep
) -> Page[PackageVersionRead]:
    found = await get_project(session, project)
    pkg = await service.get_package(session, found, package)
    rows, cursor = await fetch_page(
        session, select(PackageVersion).where(PackageVersion.package_id == pkg.id), PackageVersion.id, page
    )
    return Page(items=[await _read(session, found, pkg, row[0]) for row in rows], next_cursor=cursor)


@router.get("/packages/{package}/versions/{version}", operation_id="packages_versions_get")
async def get_version(
    project: str, package: str, version: str, session: SessionDep, _: Viewer
) -> PackageVersionRead:
    found = await get_project(session, project)
    pkg = await service.get_package(session, found, package)
    return await _read(session, found, pkg, await service.get_version(session, pkg, version))


@router.get(
    "/packages/{package}/versions/{version}/download",
    operation_id="packages_versions_download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "The package zip; ETag = sha256"},
        304: {"description": "If-None-Match matched"},
    },
)
async def download_version(
    project: str,
    package: str,
    version: str,
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    _: Viewer,
) -> Response:
    found = await get_project(session, project)
    pkg = await service.get_package(session, found, package)
    stored = await service.get_version(session, pkg, version)
    filename = f"{pkg.name}-{Version(stored.major, stored.minor)}.zip"
    return await blob_response(
        blobs,
        stored.blob_sha256,
        stored.size,
        "application/zip",
        request.headers.get("if-none-match"),
        filename=filename,
    )


@router.delete(
    "/packages/{package}/versions/{version}",
    operation_id="packages_versions_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(409),
)
async def delete_version(
    project: str,
    package: str,
    version: str,
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.PACKAGES_DELETE)],
) -> Response:
    """Refused while a template or an active run uses it, or versions were trained from it."""
    found = await get_project(session, project)
    await service.delete_version(session, found, await service.get_package(session, found, package), version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/packages/{package}/versions/{version}/lineage", operation_id="packages_versions_lineage")
async def version_lineage(
    project: str, package: str, version: str, session: SessionDep, _: Viewer
) -> LineageRead:
    """Where the model came from (ancestors back to the upload) and what was made from it."""
    found = await get_project(session, project)
    pkg = await service.get_package(session, found, package)
    stored = await service.get_version(session, pkg, version)
    ancestors, descendants = await service.lineage(session, stored)
    return LineageRead(
        package=pkg.name,
        version=str(Version(stored.major, stored.minor)),
        ancestors=ancestors,
        descendants=descendants,
        record=stored.lineage,
    )


@router.get("/models", operation_id="models_list")
async def list_models(
    project: str,
    session: SessionDep,
    _: Annotated[Principal, requires(Permission.MODELS_VIEW)],
    page: PageDep,
) -> Page[PackageVersionRead]:
    """Trained models (Primo's Models page): the versions successful runs made, with their metrics."""
    found = await get_project(session, project)
    statement = (
        select(PackageVersion, Package)
        .join(Package, Package.id == PackageVersion.package_id)
        .where(Package.project_id == found.id, PackageVersion.origin == "trained")
    )
    rows, cursor = await fetch_page(session, statement, PackageVersion.id, page)
    return Page(
        items=[await _read(session, found, pkg, version) for version, pkg in rows], next_cursor=cursor
    )
