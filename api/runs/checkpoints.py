"""What a restart resumes from (TI-ONE's Restart; docs/pipelines.md).

A package saves checkpoints into `trainyard.checkpoint_directory()`; when its run fails or is stopped,
the agent uploads that folder (a zip) as the run's `checkpoint` output before it reports the exit, so
the API holds it and it survives the machine. A restart of the process then hands the newest
checkpoint to the next run in its start payload (`checkpoint_sha256`, `resumed_from`), and the agent
unpacks it before `train()` begins. A plain start, and a restart after a success, start over.
"""

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import NotFound
from api.models import Run, RunOutput
from shared.enums import RunStatus

CHECKPOINT = "checkpoint"
_RESUMABLE = frozenset({RunStatus.FAILED.value, RunStatus.STOPPED.value})


async def resume_point(session: AsyncSession, process_id: uuid.UUID) -> dict[str, Any]:
    """The start payload's checkpoint fields for a restart of the process: the checkpoint of its last
    run if that run failed or was stopped; if it kept none of its own (stopped before it wrote one),
    the checkpoint it had been handed, so a chain of restarts never loses ground. Empty: start over.

    Read as values, not through the session's objects, so the last run's end written earlier in this
    transaction (a restart that stopped it) is what is read."""
    last = (
        await session.execute(
            select(Run.id, Run.status, Run.config)
            .where(Run.process_id == process_id)
            .order_by(Run.number.desc())
            .limit(1)
        )
    ).first()
    if last is None or last.status not in _RESUMABLE:
        return {}
    own = (
        await session.execute(
            select(RunOutput.sha256, RunOutput.size).where(
                RunOutput.run_id == last.id, RunOutput.kind == CHECKPOINT, RunOutput.sha256.is_not(None)
            )
        )
    ).first()
    if own is not None:
        return {"checkpoint_sha256": own.sha256, "checkpoint_size": own.size, "resumed_from": str(last.id)}
    config = last.config or {}
    if config.get("checkpoint_sha256"):
        return {
            "checkpoint_sha256": config["checkpoint_sha256"],
            "checkpoint_size": config.get("checkpoint_size"),
            "resumed_from": config.get("resumed_from"),
        }
    return {}


def handed_checkpoint(run: Run) -> tuple[str, int]:
    """(sha256, size) of the checkpoint the run was started with; 404 `checkpoint_not_found` if none."""
    sha256, size = run.config.get("checkpoint_sha256"), run.config.get("checkpoint_size")
    if not isinstance(sha256, str) or not isinstance(size, int):
        raise NotFound(
            f"run {run.id} resumes from no checkpoint: it started over", code="checkpoint_not_found"
        )
    return sha256, size
