"""A run's outputs: received while it runs, committed on `finished` in the transaction that ends it.

On `finished` after an exit of 0 the API checks that the outputs the pipeline promises are there
(training and full: the trained package; evaluation: the evaluation), and then, in the one
transaction that sets `succeeded`, allocates the new version number, records its lineage and writes
`_results.json` in UiPath's shape.
"""

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.blobs import StoredBlob
from api.core.errors import InvalidInput
from api.core.repository import dialect_insert
from api.datasets import service as datasets
from api.datasets.staging import StagedUpload
from api.models import Dataset, DatasetVersion, Package, PackageVersion, Project, Run, RunOutput
from api.models.base import new_id
from api.models.telemetry import MetricSeries
from api.packages.inspect import DeclaredParameter, PackageInfo
from api.packages.service import add_trained_version
from shared.enums import PipelineType
from shared.names import NAME_MAX_LENGTH
from shared.protocol import ManifestFile
from shared.versions import Version

PACKAGE, ARTIFACT, SNAPSHOT, EVALUATION = "package", "artifact", "snapshot", "evaluation"
SNAPSHOTS_SUFFIX = "-snapshots"  # the dataset of a dataset's training snapshots: `<dataset>-snapshots`


async def put_output(
    session: AsyncSession,
    run: Run,
    kind: str,
    path: str = "",
    *,
    stored: StoredBlob | None = None,
    document: dict[str, Any] | None = None,
) -> None:
    """Record (or replace, so a retried upload is harmless) one output of the run."""
    values = {
        "id": new_id(),
        "run_id": run.id,
        "kind": kind,
        "path": path,
        "sha256": None if stored is None else stored.sha256,
        "size": 0 if stored is None else stored.size,
        "document": document,
    }
    statement = dialect_insert(session)(RunOutput).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["run_id", "kind", "path"],
        set_={
            "sha256": statement.excluded.sha256,
            "size": statement.excluded.size,
            "document": statement.excluded.document,
        },
    )
    await session.execute(statement)


async def snapshot_document(session: AsyncSession, run: Run, files: list[ManifestFile]) -> dict[str, Any]:
    """The snapshot's record, if every file in it is a file of the manifest the agent was given for the
    run's training data (same path, hash and size); else 422 `snapshot_not_run_input`.

    Only the run's own inputs: a snapshot naming any blob of the store would be an oracle of which
    content the API holds, and once recorded, a way to reach another project's files. The refusal
    reads the same whether the blob exists or not.
    """
    given: dict[str, tuple[str, int]] = {}
    if run.dataset_version_id is not None and files:
        version = await session.get_one(DatasetVersion, run.dataset_version_id)
        manifest = await datasets.manifest(session, version, run.config.get("dataset_path"))
        given = {path: (sha256, size) for path, sha256, size in manifest}
    foreign = [item.path for item in files if given.get(item.path) != (item.sha256, item.size)]
    if foreign:
        raise InvalidInput(
            f"{len(foreign)} files of the snapshot are not files of the run's dataset as it was given,"
            f" e.g. {min(foreign)!r}",
            code="snapshot_not_run_input",
            field="files",
        )
    entries = [(item.path, item.sha256, item.size) for item in files]
    return {"files": [item.model_dump() for item in files], "content_hash": datasets.content_hash(entries)}


async def _output(session: AsyncSession, run: Run, kind: str) -> RunOutput | None:
    return await session.scalar(select(RunOutput).where(RunOutput.run_id == run.id, RunOutput.kind == kind))


def _pipeline(run: Run) -> PipelineType:
    return PipelineType(run.config.get("pipeline_type", PipelineType.TRAINING.value))


async def missing_outputs(session: AsyncSession, run: Run) -> str | None:
    """What the run's pipeline promises and the agent did not upload, or None."""
    if _pipeline(run) is PipelineType.EVALUATION:
        if await _output(session, run, EVALUATION) is None:
            return "an evaluation run finished without uploading its evaluation"
        return None
    if run.package_version_id is None:
        return "the run has no base package version to train a new version of"
    if await _output(session, run, PACKAGE) is None:
        return "the run finished without uploading the trained package"
    return None


async def commit_outputs(session: AsyncSession, run: Run, cut_short: str | None = None) -> None:
    """Allocate the trained version (not for evaluations) and write `_results.json` on the run.
    `cut_short` (`max_duration`) marks a version saved when the run's maximum duration stopped it:
    `cut_short` in its lineage and in `_results.json`'s `run_summary`."""
    new_version: PackageVersion | None = None
    base = (
        None if run.package_version_id is None else await session.get(PackageVersion, run.package_version_id)
    )
    if _pipeline(run) is not PipelineType.EVALUATION and base is not None:
        output = await _output(session, run, PACKAGE)
        assert output is not None and output.sha256 is not None and output.document is not None
        info = _info(output.document)
        new_version = await add_trained_version(
            session,
            base,
            StoredBlob(output.sha256, output.size, created=False),
            info,
            run.id,
            await _lineage(session, run, base, cut_short),
        )
    results = await _results(session, run, base, new_version)
    if cut_short is not None:
        results["run_summary"]["cut_short"] = cut_short
    await session.execute(
        update(Run)
        .where(Run.id == run.id)
        .values(results=results, output_version_id=None if new_version is None else new_version.id),
        execution_options={"synchronize_session": False},
    )
    await session.refresh(run)


def info_document(info: PackageInfo) -> dict[str, Any]:
    return {
        "root_prefix": info.root_prefix,
        "has_evaluate": info.has_evaluate,
        "has_process_data": info.has_process_data,
        "has_predict": info.has_predict,
        "has_requirements": info.has_requirements,
        "declared_parameters": None
        if info.declared_parameters is None
        else [parameter.__dict__ for parameter in info.declared_parameters],
    }


def _info(document: dict[str, Any]) -> PackageInfo:
    declared = document.get("declared_parameters")
    return PackageInfo(
        root_prefix=document.get("root_prefix", ""),
        has_evaluate=bool(document.get("has_evaluate")),
        has_process_data=bool(document.get("has_process_data")),
        has_predict=bool(document.get("has_predict")),
        has_requirements=bool(document.get("has_requirements")),
        declared_parameters=None if declared is None else [DeclaredParameter(**item) for item in declared],
    )


async def _dataset_record(
    session: AsyncSession, version_id: uuid.UUID | None, path: str | None
) -> dict[str, Any] | None:
    if version_id is None:
        return None
    version = await session.get(DatasetVersion, version_id)
    if version is None:
        return None
    dataset = await session.get(Dataset, version.dataset_id)
    return {
        "name": None if dataset is None else dataset.name,
        "version": version.number,
        "path": path,
        "content_hash": version.content_hash,
        "files": version.file_count,
    }


async def _lineage(
    session: AsyncSession, run: Run, base: PackageVersion, cut_short: str | None
) -> dict[str, Any]:
    config = run.config
    snapshot = await _output(session, run, SNAPSHOT)
    kept = (
        None
        if snapshot is None or snapshot.document is None
        else await _snapshot_version(session, run, snapshot)
    )
    marks = {} if cut_short is None else {"cut_short": cut_short}
    return {
        **marks,
        "parent_version": str(Version(base.major, base.minor)),
        "run_id": str(run.id),
        "run_number": run.number,
        "process_id": str(run.process_id),
        "template": config.get("template"),
        "pipeline_type": config.get("pipeline_type"),
        "parameters": config.get("parameters", {}),
        "augmentation": config.get("augmentation"),
        "dataset": await _dataset_record(session, run.dataset_version_id, config.get("dataset_path")),
        "test_dataset": await _dataset_record(
            session, run.test_dataset_version_id, config.get("test_dataset_path")
        ),
        "snapshot": None
        if snapshot is None or snapshot.document is None
        else {
            "files": len(snapshot.document.get("files", [])),
            "content_hash": snapshot.document.get("content_hash"),
            **(kept or {}),
        },
        "metrics": await final_metrics(session, run.id),
    }


async def _snapshot_version(session: AsyncSession, run: Run, snapshot: RunOutput) -> dict[str, Any] | None:
    """The run's training-data snapshot as a dataset version of its own, in the dataset
    `<dataset>-snapshots` of its project (made by the first): `{"dataset": name, "version": n}`. A
    version with the same content is reused. None when that name would be too long."""
    assert snapshot.document is not None
    if run.dataset_version_id is None:
        return None
    source = await session.get_one(DatasetVersion, run.dataset_version_id)
    dataset = await session.get_one(Dataset, source.dataset_id)
    name = dataset.name + SNAPSHOTS_SUFFIX
    if len(name) > NAME_MAX_LENGTH:
        return None
    project = await session.get_one(Project, run.project_id)
    files = [(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in snapshot.document.get("files", [])]
    same = await session.scalar(
        select(DatasetVersion.number)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(
            Dataset.project_id == project.id,
            Dataset.name == name,
            DatasetVersion.content_hash == datasets.content_hash(files),
        )
        .order_by(DatasetVersion.number.desc())
        .limit(1)
    )
    if same is not None:
        return {"dataset": name, "version": same}
    blobs = [StoredBlob(sha256, size, created=False) for _, sha256, size in files]
    staged = StagedUpload(files=files, replaces=True, description=None, blobs=blobs)
    _, version = await datasets.add_version(session, project, name, staged, created_by=None)
    return {"dataset": name, "version": version.number}


async def final_metrics(session: AsyncSession, run_id: uuid.UUID) -> dict[str, float]:
    """The last value of each series the run reported (the agent flushes telemetry before `exited`)."""
    rows = await session.execute(
        select(MetricSeries.name, MetricSeries.last_value)
        .where(MetricSeries.run_id == run_id, MetricSeries.last_value.is_not(None))
        .order_by(MetricSeries.name)
    )
    return {name: value for name, value in rows if value is not None}


async def _results(
    session: AsyncSession, run: Run, base: PackageVersion | None, new_version: PackageVersion | None
) -> dict[str, Any]:
    """`_results.json` as UiPath AI Center writes it."""
    config = run.config
    package = None if base is None else await session.get(Package, base.package_id)
    started, ended = run.launched_at or run.created_at, run.ended_at
    execution = None if ended is None else round((ended - started).total_seconds(), 3)
    artifacts = await session.scalar(
        select(RunOutput.id).where(RunOutput.run_id == run.id, RunOutput.kind == ARTIFACT).limit(1)
    )
    snapshot = await _output(session, run, SNAPSHOT)
    train_data = config.get("dataset_path") or config.get("dataset")
    return {
        "parameters": {
            "pipeline": config.get("template"),
            "inputs": {
                "package": None if package is None else package.name,
                "version": None if base is None else str(Version(base.major, base.minor)),
                "train_data": train_data,
                "gpu": "True" if config.get("gpus", 0) else "False",
            },
            "env": {name: _env(value) for name, value in config.get("parameters", {}).items()},
        },
        "run_summary": {
            "execution_time": execution,
            "start_at": int(started.timestamp()),
            "end_at": None if ended is None else int(ended.timestamp()),
            "outputs": {
                "train_data": train_data if snapshot is not None else None,
                "artifacts_data": "artifacts" if artifacts is not None else None,
                "package": None if package is None or new_version is None else package.name,
                "version": None
                if new_version is None
                else str(Version(new_version.major, new_version.minor)),
            },
        },
    }


def _env(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
