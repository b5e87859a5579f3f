from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse

from api.base_packages import service as base_packages
from api.core.db import SessionDep
from api.core.deps import BlobsDep, SettingsDep
from api.core.downloads import REDIRECT_RESPONSE, blob_response
from api.core.errors import InvalidInput, error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission, Principal, requires
from api.core.unit_of_work import commit_early
from api.core.uploads import receive_multipart
from api.packages import service
from api.packages.deps import PackageTarget, PackageVersionTarget, package_for, package_version_for
from api.packages.schemas import LineageRead, PackageRead, PackageVersionRead
from api.projects.deps import InProject, in_project
from api.projects.service import get_project
from shared.versions import Version

router = APIRouter(prefix="/projects/{project}", tags=["packages"], responses=error_responses(401, 403, 404))

ViewedPackage = Annotated[PackageTarget, package_for(Permission.PACKAGES_VIEW)]
ViewedVersion = Annotated[PackageVersionTarget, package_version_for(Permission.PACKAGES_VIEW)]
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
    # No `package_for`: the package need not exist yet. The route declares `project` and `package`
    # itself (with `in_project`, the document would list `package` before `project`).
    name = service.check_name(package)  # a 422 before the body is read: a bad name stores nothing
    # A 404, or a 409 for a built-in base package's name, before the body is read.
    await base_packages.refuse_builtin_upload(session, await get_project(session, project), name)
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
    found = await get_project(session, project)  # deleted while the body streamed in: a 404
    await base_packages.refuse_builtin_upload(session, found, name)  # adopted meanwhile
    pkg, version = await service.add_uploaded_version(session, found, name, stored, info, principal.id)
    return await service.read_version(session, found, pkg, version)


@router.get("/packages", operation_id="packages_list")
async def list_packages(
    target: Annotated[InProject, in_project(Permission.PACKAGES_VIEW)], session: SessionDep, page: PageDep
) -> Page[PackageRead]:
    return await service.list_packages(session, target.project, page)


@router.get("/packages/{package}", operation_id="packages_get")
async def get_package(target: ViewedPackage, session: SessionDep) -> PackageRead:
    return await service.package_read(session, target.project, target.package)


@router.delete(
    "/packages/{package}",
    operation_id="packages_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(409),
)
async def delete_package(
    target: Annotated[PackageTarget, package_for(Permission.PACKAGES_DELETE)], session: SessionDep
) -> Response:
    """Delete a package that has no versions left."""
    await service.delete_package(session, target.package)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/packages/{package}/versions", operation_id="packages_versions_list")
async def list_versions(
    target: ViewedPackage, session: SessionDep, page: PageDep
) -> Page[PackageVersionRead]:
    return await service.list_versions(session, target.project, target.package, page)


@router.get("/packages/{package}/versions/{version}", operation_id="packages_versions_get")
async def get_version(target: ViewedVersion, session: SessionDep) -> PackageVersionRead:
    return await service.read_version(session, target.project, target.package, target.version)


@router.get(
    "/packages/{package}/versions/{version}/download",
    operation_id="packages_versions_download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "The package zip; ETag = sha256"},
        **REDIRECT_RESPONSE,
        304: {"description": "If-None-Match matched"},
    },
)
async def download_version(
    target: ViewedVersion, request: Request, blobs: BlobsDep, settings: SettingsDep
) -> Response:
    stored = target.version
    return await blob_response(
        blobs,
        stored.blob_sha256,
        stored.size,
        "application/zip",
        request.headers.get("if-none-match"),
        filename=f"{target.package.name}-{Version(stored.major, stored.minor)}.zip",
        redirect=settings.s3_redirect_downloads,
    )


@router.delete(
    "/packages/{package}/versions/{version}",
    operation_id="packages_versions_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(409),
)
async def delete_version(
    target: Annotated[PackageVersionTarget, package_version_for(Permission.PACKAGES_DELETE)],
    session: SessionDep,
) -> Response:
    """Refused while a template or an active run uses it, or versions were trained from it."""
    await service.delete_version(session, target.project, target.package, target.version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/packages/{package}/versions/{version}/lineage", operation_id="packages_versions_lineage")
async def version_lineage(target: ViewedVersion, session: SessionDep) -> LineageRead:
    """Where the model came from (ancestors back to the upload) and what was made from it."""
    return await service.lineage_read(session, target.package, target.version)


@router.get("/models", operation_id="models_list")
async def list_models(
    target: Annotated[InProject, in_project(Permission.MODELS_VIEW)], session: SessionDep, page: PageDep
) -> Page[PackageVersionRead]:
    """Trained models (Primo's Models page): the versions successful runs made, with their metrics."""
    return await service.list_models(session, target.project, page)
