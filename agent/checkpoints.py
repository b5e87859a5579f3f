"""A run's checkpoint folder: what a restart of a failed or stopped run resumes from (docs/pipelines.md).

The package writes its checkpoints into `trainyard.checkpoint_directory()` (the environment variable
`TRAINYARD_CHECKPOINT_DIRECTORY`, `runs/<run_id>/checkpoint/` in the work dir, outside the package so
it never ships in a version). When the run ends without succeeding, the agent zips that folder and
uploads it before reporting `exited`, so the API keeps it: it survives the machine. A restart's start
payload names the checkpoint (`checkpoint_sha256`); the agent unpacks it into the new run's folder
before the launch, so the package finds it there when `train()` begins. Without one the folder is
empty: the run starts over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import uuid
import zipfile
from pathlib import Path

from agent.client import ApiClient, ApiRejected
from agent.workdir import RunFolder
from shared.archive import extract_zip
from shared.protocol import StartRunPayload

logger = logging.getLogger(__name__)

CHECKPOINT_ENV = "TRAINYARD_CHECKPOINT_DIRECTORY"
_ARCHIVE = "checkpoint.zip"


def checkpoint_folder(folder: RunFolder) -> Path:
    return folder.root / "checkpoint"


async def restore_checkpoint(
    client: ApiClient, payload: StartRunPayload, folder: RunFolder, owner: tuple[int, int] | None
) -> None:
    """Make the run's checkpoint folder, holding the checkpoint the run resumes from, if any. Built
    under a temporary name and renamed into place, so a folder that exists is whole (an agent
    restarted halfway builds it again)."""
    final = checkpoint_folder(folder)
    if await asyncio.to_thread(final.is_dir):
        return
    temporary = folder.root / f".checkpoint.{uuid.uuid4().hex}.tmp"
    archive = folder.root / f".{_ARCHIVE}.{uuid.uuid4().hex}.tmp"
    try:
        if payload.checkpoint_sha256:
            await client.download_checkpoint(payload.run_id, archive, payload.checkpoint_sha256)
            await asyncio.to_thread(extract_zip, archive, temporary)
        await asyncio.to_thread(_finish, temporary, final, owner)
    finally:
        await asyncio.to_thread(archive.unlink, missing_ok=True)
        await asyncio.to_thread(shutil.rmtree, temporary, True)
    if payload.checkpoint_sha256:
        logger.info("run %s: resumes from the checkpoint of run %s", payload.run_id, payload.resumed_from)


def _finish(temporary: Path, final: Path, owner: tuple[int, int] | None) -> None:
    temporary.mkdir(exist_ok=True)
    if owner is not None:  # the package's user writes its checkpoints there
        for path in [temporary, *temporary.rglob("*")]:
            os.lchown(path, *owner)
    os.rename(temporary, final)


async def upload_checkpoint(client: ApiClient, run_id: uuid.UUID, folder: RunFolder) -> None:
    """The checkpoint folder, zipped, to the API, if the package wrote anything there. A refusal or
    an unreadable folder loses the checkpoint only (logged), never the run's end."""
    source = checkpoint_folder(folder)
    archive = folder.root / _ARCHIVE
    try:
        if not await asyncio.to_thread(_zip_checkpoint, source, archive):
            return
        reply = await client.upload_checkpoint(run_id, archive)
        logger.info("run %s: its checkpoint is kept (%d bytes)", run_id, reply.size)
    except ApiRejected as error:
        logger.warning("run %s: its checkpoint was refused by the API: %s", run_id, error)
    except (OSError, zipfile.BadZipFile) as error:
        logger.warning("run %s: its checkpoint could not be read: %s", run_id, error)
    finally:
        await asyncio.to_thread(archive.unlink, missing_ok=True)


def _zip_checkpoint(source: Path, archive: Path) -> bool:
    """`source`'s regular files as a zip at `archive` (stored: checkpoints rarely compress); False
    when there is none. Symlinks are not followed: the folder is the package's."""
    files = (
        []
        if not source.is_dir() or source.is_symlink()
        else sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink())
    )
    if not files:
        return False
    temporary = archive.with_name(f".{archive.name}.tmp")
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in files:
            zf.write(path, path.relative_to(source).as_posix())
    os.replace(temporary, archive)
    return True
