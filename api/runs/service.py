"""Runs by id: in a project for people, on a machine for its agent; a run's read model, and what
people read of it (the lists, its events, its outputs)."""

import unicodedata
import uuid

from sqlalchemy import Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import NotFound
from api.core.schemas import Page, PageParams, paged
from api.models import Machine, Process, ProcessEvent, Project, Run, RunOutput
from api.models.base import utcnow
from api.processes.schemas import ProcessEventRead
from api.runs.schemas import RunRead
from shared.enums import RunStatus

_RUN_IN_PROJECT = (
    select(Run, Project, Machine.name)
    .join(Project, Project.id == Run.project_id)
    .join(Machine, Machine.id == Run.machine_id)
    .where(Run.id == bindparam("run_id"), Run.project_id == bindparam("project_id"))
)


async def get_run(session: AsyncSession, project: Project, run_id: uuid.UUID) -> Run:
    run = await session.scalar(select(Run).where(Run.id == run_id, Run.project_id == project.id))
    if run is None:
        raise NotFound(f"no run {run_id} in project {project.name!r}", code="run_not_found")
    return run


async def load_run(
    session: AsyncSession, project_id: uuid.UUID, project_name: str, run_id: uuid.UUID
) -> tuple[Run, Project, str]:
    """The run with its project and its machine's name in one statement, in the project whose id the
    caller's authorisation found (`project_name` is the name it was found by, for the 404)."""
    row = (await session.execute(_RUN_IN_PROJECT, {"run_id": run_id, "project_id": project_id})).one_or_none()
    if row is None:
        name = unicodedata.normalize("NFC", project_name)  # the name as it is stored
        raise NotFound(f"no run {run_id} in project {name!r}", code="run_not_found")
    run, project, machine_name = row
    return run, project, machine_name


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


def _listing(project: Project) -> Select[Run, str]:
    return (
        select(Run, Machine.name)
        .join(Machine, Machine.id == Run.machine_id)
        .where(Run.project_id == project.id)
    )


async def list_runs(
    session: AsyncSession,
    project: Project,
    page: PageParams,
    status: RunStatus | None,
    process: Process | None = None,
) -> Page[RunRead]:
    """A project's runs (or a process's), in the order they were made."""
    statement = _listing(project)
    if process is not None:
        statement = statement.where(Run.process_id == process.id)
    if status is not None:
        statement = statement.where(Run.status == status.value)

    def item(run: Run, machine_name: str) -> RunRead:
        return run_read(run, project.name, machine_name)

    return await paged(session, statement, Run.id, page, item)


async def list_events(session: AsyncSession, run: Run, page: PageParams) -> Page[ProcessEventRead]:
    """The run's status history: every transition with its actor and reason."""
    statement = select(ProcessEvent).where(ProcessEvent.run_id == run.id)
    return await paged(session, statement, ProcessEvent.id, page, ProcessEventRead.model_validate)


async def artifacts(session: AsyncSession, run: Run) -> list[RunOutput]:
    """What the package wrote into `artifacts_directory`, by path."""
    rows = await session.scalars(
        select(RunOutput)
        .where(RunOutput.run_id == run.id, RunOutput.kind == "artifact")
        .order_by(RunOutput.path)
    )
    return list(rows)


async def artifact(session: AsyncSession, run: Run, path: str) -> RunOutput:
    """The artifact at `path`; 404 `artifact_not_found` without one (or one whose file is not stored)."""
    found = await session.scalar(
        select(RunOutput).where(
            RunOutput.run_id == run.id, RunOutput.kind == "artifact", RunOutput.path == path
        )
    )
    if found is None or found.sha256 is None:
        raise NotFound(f"the run has no artifact {path!r}", code="artifact_not_found")
    return found


async def evaluation(session: AsyncSession, run: Run) -> RunOutput:
    """The run's evaluation document as stored; 404 `evaluation_not_found` without one."""
    found = await session.scalar(
        select(RunOutput).where(RunOutput.run_id == run.id, RunOutput.kind == "evaluation")
    )
    if found is None or found.document is None:
        raise NotFound("the run has no evaluation", code="evaluation_not_found")
    return found
