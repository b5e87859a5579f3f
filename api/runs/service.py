"""Runs by id: in a project for people, on a machine for its agent; and a run's read model."""

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import NotFound
from api.models import Project, Run
from api.models.base import utcnow
from api.runs.schemas import RunRead


async def get_run(session: AsyncSession, project: Project, run_id: uuid.UUID) -> Run:
    run = await session.scalar(select(Run).where(Run.id == run_id, Run.project_id == project.id))
    if run is None:
        raise NotFound(f"no run {run_id} in project {project.name!r}", code="run_not_found")
    return run


async def machine_run(session: AsyncSession, machine_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    run = await session.scalar(select(Run).where(Run.id == run_id, Run.machine_id == machine_id))
    if run is None:
        raise NotFound(f"no run {run_id} on this machine", code="run_not_found")
    return run


def run_read(run: Run, project_name: str, machine_name: str) -> RunRead:
    columns = {column.key: getattr(run, column.key) for column in Run.__table__.columns}
    elapsed = None
    if run.launched_at is not None:
        elapsed = ((run.ended_at or utcnow()) - run.launched_at).total_seconds()
    return RunRead.model_validate(
        {**columns, "project": project_name, "machine": machine_name, "elapsed_seconds": elapsed}
    )
