"""What a successful run leaves to the API: its package folder (zipped, as the next version), its
artifacts, its data snapshot and its evaluation; a failed or stopped run leaves its artifacts. Each
upload is idempotent on the API's side, so an agent restarted halfway through uploads them all again."""

from __future__ import annotations

import asyncio
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

from agent.client import ApiClient, ApiRejected
from agent.workdir import RunFolder
from shared.enums import PipelineType
from shared.protocol import SnapshotUpload, StartRunPayload

_NO_UPLOAD = frozenset({"__pycache__", ".ipynb_checkpoints"})


async def upload_outputs(
    client: ApiClient, run_id: uuid.UUID, payload: StartRunPayload, folder: RunFolder, outcome: dict[str, Any]
) -> str | None:
    """Every output of a successful run; the reason when the API refused one, else None."""
    try:
        if payload.pipeline_type is not PipelineType.EVALUATION and payload.package_sha256:
            archive = folder.root / "output-package.zip"
            await asyncio.to_thread(zip_folder, folder.package, archive)
            await client.upload_package(run_id, archive)
            archive.unlink(missing_ok=True)
        for relative, path in await asyncio.to_thread(artifact_files, folder.artifacts):
            await client.upload_artifact(run_id, relative, path)
        if payload.save_training_data and payload.dataset:
            manifest = await client.dataset_manifest(run_id)
            await client.upload_snapshot(run_id, SnapshotUpload(files=manifest.files))
        evaluation = outcome.get("evaluation")
        if isinstance(evaluation, dict):
            stage_times = outcome.get("stage_times")
            if isinstance(stage_times, dict) and "evaluation" in stage_times:
                evaluation.setdefault("duration_seconds", stage_times["evaluation"])
            await client.upload_evaluation(run_id, evaluation)
    except ApiRejected as error:
        return f"an output of the run was refused by the API: {error}"
    except OSError as error:
        return f"the run's outputs could not be read: {error}"
    return None


async def upload_artifacts(client: ApiClient, run_id: uuid.UUID, folder: RunFolder) -> str | None:
    """The artifacts alone, of a run that failed or was stopped; the reason when one was not kept."""
    try:
        for relative, path in await asyncio.to_thread(artifact_files, folder.artifacts):
            await client.upload_artifact(run_id, relative, path)
    except ApiRejected as error:
        return f"an artifact of the run was refused by the API: {error}"
    except OSError as error:
        return f"the run's artifacts could not be read: {error}"
    return None


def zip_folder(folder: Path, archive: Path) -> None:
    """The package folder as a zip (regular files only; caches left out), written atomically."""
    temporary = archive.with_name(f".{archive.name}.tmp")
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if _NO_UPLOAD & set(relative.parts) or path.is_symlink() or not path.is_file():
                continue
            zf.write(path, relative.as_posix())
    os.replace(temporary, archive)


def artifact_files(folder: Path) -> list[tuple[str, Path]]:
    """(path relative to `folder`, path) of every regular file under the run's artifacts folder."""
    if not folder.is_dir():
        return []
    return [
        (path.relative_to(folder).as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    ]
