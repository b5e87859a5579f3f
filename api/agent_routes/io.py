"""What a run reads and what it hands back, streamed (DESIGN.md's agent routes).

Every route is limited to the caller's machine and to the run's own inputs: a blob is served only if
it belongs to the run's package or datasets, so an agent token reaches nothing else.
"""

import uuid
from pathlib import Path as FilePath
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from api.agent_routes import direct, inputs
from api.core.blobs import StoredBlob, check_sha256
from api.core.db import SessionDep
from api.core.deps import BlobsDep, SettingsDep
from api.core.errors import Conflict, InvalidInput, error_responses
from api.core.repository import record_blobs
from api.core.security import CurrentAgent
from api.core.unit_of_work import commit_early
from api.core.uploads import archive_refused, receive_body
from api.models import Run
from api.packages.service import check_package
from api.runs import checkpoints, outputs
from api.runs.service import machine_run
from shared.archive import ArchiveError, ArchiveLimits, inspect_zip
from shared.enums import RunStatus
from shared.names import InvalidName, normalize_relative_path
from shared.protocol import DatasetManifest, OutputReply, SnapshotUpload

router = APIRouter(prefix="/agent/runs/{run_id}", tags=["agent"], responses=error_responses(401, 403, 404))
_RECEIVING = frozenset({RunStatus.RUNNING, RunStatus.STOPPING})
# A failed or stopped run's artifacts are kept too, whenever they come (a run ended `lost` while its
# agent was away): people debug it from them. Nothing else of an ended run is taken.
_RECEIVING_ARTIFACTS = _RECEIVING | {RunStatus.FAILED, RunStatus.STOPPED}
_MAX_EVALUATION_KEYS = 10_000


async def _run(session: AsyncSession, agent: CurrentAgent, run_id: uuid.UUID) -> Run:
    return await machine_run(session, agent.machine_id, run_id)


async def _receiving(session: AsyncSession, agent: CurrentAgent, run_id: uuid.UUID, kind: str = "") -> Run:
    run = await _run(session, agent, run_id)
    if RunStatus(run.status) not in (_RECEIVING_ARTIFACTS if kind == outputs.ARTIFACT else _RECEIVING):
        raise Conflict(f"run {run.id} is {run.status}: it takes no outputs", code="run_not_receiving")
    return run


async def _before_body(session: AsyncSession, agent: CurrentAgent, run_id: uuid.UUID, kind: str = "") -> None:
    """Refuse before the body is read when the run takes no outputs; then hold no connection while it
    streams in (on SQLite the API's one connection would stall every other request meanwhile)."""
    await _receiving(session, agent, run_id, kind)
    await commit_early(session, "an output's body streams in next: an upload holds no connection")


async def _keep_stored(
    session: AsyncSession,
    agent: CurrentAgent,
    run_id: uuid.UUID,
    kind: str,
    stored: StoredBlob,
    path: str = "",
    document: dict[str, Any] | None = None,
) -> None:
    """The output whose body is stored, recorded if the run still takes outputs (it may have ended
    while the body streamed in)."""
    run = await _receiving(session, agent, run_id, kind)
    await record_blobs(session, [stored])
    await outputs.put_output(session, run, kind, path, stored=stored, document=document)


@router.get(
    "/package",
    operation_id="agent_runs_package_download",
    responses={200: {"content": {"application/zip": {}}, "description": "The package zip; ETag = sha256"}},
)
async def download_package(
    run_id: uuid.UUID, request: Request, session: SessionDep, blobs: BlobsDep, agent: CurrentAgent
) -> Response:
    version = await inputs.package_version(session, await _run(session, agent, run_id))
    sha256 = version.blob_sha256
    return await direct.input_response(
        session, agent, blobs, request, sha256, version.size, "application/zip", f"{sha256}.zip"
    )


@router.get("/dataset", operation_id="agent_runs_dataset_manifest")
async def dataset_manifest(run_id: uuid.UUID, session: SessionDep, agent: CurrentAgent) -> DatasetManifest:
    """The training data: (path, sha256, size) per file, paths relative to the template's sub-folder."""
    run = await _run(session, agent, run_id)
    return await inputs.manifest(session, run.dataset_version_id, run.config.get("dataset_path"))


@router.get("/test-dataset", operation_id="agent_runs_test_dataset_manifest")
async def test_dataset_manifest(
    run_id: uuid.UUID, session: SessionDep, agent: CurrentAgent
) -> DatasetManifest:
    run = await _run(session, agent, run_id)
    return await inputs.manifest(session, run.test_dataset_version_id, run.config.get("test_dataset_path"))


@router.get(
    "/blobs/{sha256}",
    operation_id="agent_runs_blob_download",
    responses={200: {"content": {"application/octet-stream": {}}, "description": "ETag = sha256"}},
)
async def download_blob(
    run_id: uuid.UUID,
    sha256: str,
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    agent: CurrentAgent,
) -> Response:
    """One file of the run's inputs, by its hash (the agent's cache fetches only what it lacks)."""
    check_sha256(sha256)
    size = await inputs.input_size(session, await _run(session, agent, run_id), sha256)
    return await direct.input_response(
        session, agent, blobs, request, sha256, size, "application/octet-stream", sha256
    )


@router.put(
    "/outputs/package",
    operation_id="agent_runs_outputs_package_upload",
    responses=error_responses(409, 413, 422),
    openapi_extra={"requestBody": {"required": True, "content": {"application/zip": {}}}},
)
async def upload_package(
    run_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    agent: CurrentAgent,
) -> OutputReply:
    """The trained package folder as a zip, or a reference to its direct upload (docs/storage.md);
    checked like an upload. Sending it again replaces it."""
    await _before_body(session, agent, run_id)
    limits, max_bytes = settings.archive_limits(), settings.max_package_bytes
    reference = await direct.reference_in(request)
    if reference is not None:
        stored, info = await direct.adopt_checked(
            blobs, run_id, reference, lambda path: check_package(path, limits), max_bytes=max_bytes
        )
    else:
        async with receive_body(request, blobs, max_bytes=max_bytes) as path:
            info = await check_package(path, limits)
            stored = await blobs.put_file(path)
    await _keep_stored(session, agent, run_id, outputs.PACKAGE, stored, document=outputs.info_document(info))
    return OutputReply(kind=outputs.PACKAGE, sha256=stored.sha256, size=stored.size)


@router.put(
    "/outputs/artifacts/{path:path}",
    operation_id="agent_runs_outputs_artifact_upload",
    responses=error_responses(409, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {}},
        }
    },
)
async def upload_artifact(
    run_id: uuid.UUID,
    path: Annotated[str, Path(max_length=1024)],
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    agent: CurrentAgent,
) -> OutputReply:
    """One file the package wrote into `artifacts_directory`."""
    try:
        relative = normalize_relative_path(path)
    except InvalidName as error:
        raise InvalidInput(f"artifact path {error}", code="invalid_path", field="path") from None
    await _before_body(session, agent, run_id, outputs.ARTIFACT)
    reference = await direct.reference_in(request)
    if reference is not None:
        stored = await direct.adopt(blobs, run_id, reference, max_bytes=settings.max_package_bytes)
    else:
        stored = await blobs.put(request.stream(), max_bytes=settings.max_package_bytes)
    await _keep_stored(session, agent, run_id, outputs.ARTIFACT, stored, relative)
    return OutputReply(kind=outputs.ARTIFACT, path=relative, sha256=stored.sha256, size=stored.size)


@router.put(
    "/outputs/snapshot",
    operation_id="agent_runs_outputs_snapshot_upload",
    responses=error_responses(409, 422),
)
async def upload_snapshot(
    run_id: uuid.UUID, snapshot: SnapshotUpload, session: SessionDep, agent: CurrentAgent
) -> OutputReply:
    """The manifest of the data the run read (save_training_data): costs nothing when data repeats,
    since every file is one of the run's own dataset files, a blob the API already holds."""
    run = await _receiving(session, agent, run_id)
    document = await outputs.snapshot_document(session, run, snapshot.files)
    await outputs.put_output(session, run, outputs.SNAPSHOT, document=document)
    return OutputReply(kind=outputs.SNAPSHOT, size=len(snapshot.files))


@router.put(
    "/outputs/evaluation",
    operation_id="agent_runs_outputs_evaluation_upload",
    responses=error_responses(409, 422),
)
async def upload_evaluation(
    run_id: uuid.UUID, evaluation: dict[str, object], session: SessionDep, agent: CurrentAgent
) -> OutputReply:
    """The evaluation's result as JSON: a score or metrics, and the badcases (see issue 6)."""
    if len(evaluation) > _MAX_EVALUATION_KEYS:
        raise InvalidInput("the evaluation has too many keys", code="evaluation_too_large")
    run = await _receiving(session, agent, run_id)
    await outputs.put_output(session, run, outputs.EVALUATION, document=dict(evaluation))
    return OutputReply(kind=outputs.EVALUATION)


@router.put(
    "/outputs/checkpoint",
    operation_id="agent_runs_outputs_checkpoint_upload",
    responses=error_responses(409, 413, 422),
    openapi_extra={"requestBody": {"required": True, "content": {"application/zip": {}}}},
)
async def upload_checkpoint(
    run_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    agent: CurrentAgent,
) -> OutputReply:
    """The run's checkpoint folder as a zip, sent before `exited` by a run that failed or was
    stopped: a restart of the run resumes from it (docs/pipelines.md). Sending it again replaces it."""
    await _before_body(session, agent, run_id)
    limits, max_bytes = settings.archive_limits(), settings.max_package_bytes
    reference = await direct.reference_in(request)
    if reference is not None:
        stored, _ = await direct.adopt_checked(
            blobs, run_id, reference, lambda path: _check_zip(path, limits), max_bytes=max_bytes
        )
    else:
        async with receive_body(request, blobs, max_bytes=max_bytes) as path:
            await _check_zip(path, limits)
            stored = await blobs.put_file(path)
    await _keep_stored(session, agent, run_id, checkpoints.CHECKPOINT, stored)
    return OutputReply(kind=checkpoints.CHECKPOINT, sha256=stored.sha256, size=stored.size)


async def _check_zip(path: FilePath, limits: ArchiveLimits) -> None:
    try:
        await anyio.to_thread.run_sync(inspect_zip, path, limits)
    except ArchiveError as error:
        raise archive_refused(error) from None


@router.get(
    "/checkpoint",
    operation_id="agent_runs_checkpoint_download",
    responses={200: {"content": {"application/zip": {}}, "description": "The checkpoint; ETag = sha256"}},
)
async def download_checkpoint(
    run_id: uuid.UUID, request: Request, session: SessionDep, blobs: BlobsDep, agent: CurrentAgent
) -> Response:
    """The checkpoint this run resumes from (its start payload's `checkpoint_sha256`), to unpack into
    its checkpoint folder before the launch; 404 `checkpoint_not_found` for a run that starts over."""
    sha256, size = checkpoints.handed_checkpoint(await _run(session, agent, run_id))
    return await direct.input_response(
        session, agent, blobs, request, sha256, size, "application/zip", f"{sha256}.zip"
    )
