"""Training processes: Primo's actions (create, start, stop, disable, enable, restart, delete).

Each action is one conditional UPDATE on the process row; the run's own moves are in api/runs/lifecycle.py.
"""

import unicodedata
import uuid
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy import Select, and_, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import Conflict, NotFound
from api.core.notify import Notifier, changed_after_commit
from api.core.repository import get_by_name
from api.core.schemas import Page, PageParams, paged
from api.models import Machine, Process, ProcessEvent, Project, Run, Template
from api.processes.schemas import ProcessEventRead, ProcessRead
from api.runs.lifecycle import Actor, record_event, request_stop, start_run
from api.runs.service import run_read
from shared.enums import ProcessStatus, ReasonCode


@dataclass(frozen=True, slots=True)
class LoadedProcess:
    """A process with the rows its start and its response read. Holding them keeps them in the
    session's identity map, so that `session.get` finds them without a statement."""

    process: Process
    project: Project
    template: Template
    machine: Machine


_PROCESS_IN_PROJECT = (
    select(Process, Project, Template, Machine)
    .join(Project, Project.id == Process.project_id)
    .join(Template, Template.id == Process.template_id)
    .join(Machine, Machine.id == Process.machine_id)
    .where(Process.id == bindparam("process_id"), Process.project_id == bindparam("project_id"))
)


async def get_process(session: AsyncSession, project: Project, process_id: uuid.UUID) -> Process:
    process = await session.scalar(
        select(Process).where(Process.id == process_id, Process.project_id == project.id)
    )
    if process is None:
        raise NotFound(f"no process {process_id} in project {project.name!r}", code="process_not_found")
    return process


async def reread_process(session: AsyncSession, process_id: uuid.UUID) -> Process:
    """The process as it has committed since this session read it (404 once it is deleted)."""
    process = await session.get(Process, process_id, populate_existing=True)
    if process is None:
        raise NotFound(f"no process {process_id}: it was deleted", code="process_not_found")
    return process


async def load_process(
    session: AsyncSession, project_id: uuid.UUID, project_name: str, process_id: uuid.UUID
) -> LoadedProcess:
    """The process with its project, template and machine in one statement, in the project whose id
    the caller's authorisation found (`project_name` is the name it was found by, for the 404)."""
    row = (
        await session.execute(_PROCESS_IN_PROJECT, {"process_id": process_id, "project_id": project_id})
    ).one_or_none()
    if row is None:
        name = unicodedata.normalize("NFC", project_name)  # the name as it is stored
        raise NotFound(f"no process {process_id} in project {name!r}", code="process_not_found")
    process, project, template, machine = row
    return LoadedProcess(process, project, template, machine)


async def create_process(
    session: AsyncSession,
    project: Project,
    template: Template,
    machine_name: str,
    enabled: bool,
    actor: Actor,
) -> Process:
    machine = await get_by_name(session, Machine, machine_name, "machine")
    # The machine's capacity, held by one conditional UPDATE (and a CHECK behind it): of two creates
    # racing for the last place, exactly one gets it.
    claimed = await session.execute(
        update(Machine)
        .where(Machine.id == machine.id, Machine.enabled.is_(True), Machine.process_count < Machine.capacity)
        .values(process_count=Machine.process_count + 1),
        execution_options={"synchronize_session": False},
    )
    if claimed.rowcount == 0:  # type: ignore[attr-defined]
        await session.refresh(machine)
        if not machine.enabled:
            raise Conflict(f"machine {machine.name!r} is disabled", code="machine_disabled", field="machine")
        raise Conflict(
            f"machine {machine.name!r} holds its capacity of {machine.capacity} processes already",
            code="machine_full",
            field="machine",
        )
    process = Process(
        project_id=project.id,
        template_id=template.id,
        machine_id=machine.id,
        enabled=enabled,
        created_by=actor.id,
    )
    session.add(process)
    await session.flush()
    record_event(
        session,
        process.id,
        project.id,
        actor,
        "process_created",
        detail=f"template {template.name}, machine {machine.name}",
    )
    return process


def _require_enabled(process: Process) -> None:
    if not process.enabled:
        raise Conflict("the process is disabled: enable it first", code="process_disabled")


async def active_run(session: AsyncSession, process: Process) -> Run | None:
    if process.active_run_id is None:
        return None
    return await session.get(Run, process.active_run_id, populate_existing=True)


async def start_process(
    session: AsyncSession, notifier: Notifier, loaded: LoadedProcess, actor: Actor
) -> Run:
    _require_enabled(loaded.process)
    return await start_run(session, notifier, loaded.process, actor, machine_enabled=loaded.machine.enabled)


async def stop_process(session: AsyncSession, notifier: Notifier, process: Process, actor: Actor) -> Run:
    """202 for the stop that moves the run and for a stop of a run already `stopping`; 409
    `run_not_active` when no run is active, or when the run read as active ended before this stop's
    compare-and-set (another stop, the agent's exit, a timeout)."""
    _require_enabled(process)
    run = await active_run(session, process)
    if run is None or not await request_stop(session, notifier, run, actor, ReasonCode.USER_STOP):
        raise Conflict("the process has no active run to stop", code="run_not_active")
    return run


async def _lock(session: AsyncSession, process: Process) -> None:
    """Hold the process's row until the request commits (PostgreSQL; SQLite runs one request at a time
    already), and read it afresh. The restart's first write was this row before, so the lock comes in
    the same order as before against the agent's and the sweeper's moves."""
    locked = await session.scalar(
        select(Process)
        .where(Process.id == process.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if locked is None:
        raise NotFound(f"no process {process.id}: it was deleted", code="process_not_found")


async def restart_process(session: AsyncSession, notifier: Notifier, process: Process, actor: Actor) -> bool:
    """Start at once if nothing runs (True); else stop the active run and start when it has stopped.

    Restarts of one process queue for its row: each decides on what the one before it left (a run
    stopped at once and replaced, or a restart pending), as on SQLite, so that the answers and the
    runs made are the same on both databases."""
    await _lock(session, process)
    _require_enabled(process)
    run = await active_run(session, process)
    if run is None:  # the last run ended: a restart resumes from its checkpoint (api/runs/checkpoints.py)
        await start_run(session, notifier, process, actor, resume=True)
        return True
    marked = await session.execute(
        update(Process)
        .where(Process.id == process.id, Process.active_run_id == run.id)
        .values(restart_requested=True),
        execution_options={"synchronize_session": False},
    )
    if marked.rowcount == 0:  # type: ignore[attr-defined]  # the run ended meanwhile
        await session.refresh(process)
        await start_run(session, notifier, process, actor, resume=True)
        return True
    record_event(session, process.id, process.project_id, actor, "restart_requested", run_id=run.id)
    await request_stop(session, notifier, run, actor, ReasonCode.USER_STOP)
    await session.refresh(process)
    return process.active_run_id != run.id  # stopped at once: the new run started already


async def _refuse_change(session: AsyncSession, process: Process) -> NoReturn:
    """Why a conditional change of the process matched no row: deleted meanwhile, or a run is active."""
    if await session.scalar(select(Process.id).where(Process.id == process.id)) is None:
        raise NotFound(f"no process {process.id}: it was deleted", code="process_not_found")
    raise Conflict("the process has an active run: stop it first", code="run_active")


async def set_enabled(session: AsyncSession, process: Process, enabled: bool, actor: Actor) -> None:
    statement = update(Process).where(Process.id == process.id).values(enabled=enabled)
    if not enabled:
        # Never leave a run that nobody may stop.
        statement = statement.where(Process.active_run_id.is_(None))
    result = await session.execute(statement, execution_options={"synchronize_session": False})
    if result.rowcount == 0:  # type: ignore[attr-defined]
        await _refuse_change(session, process)
    if process.enabled != enabled:
        record_event(
            session,
            process.id,
            process.project_id,
            actor,
            "process_enabled" if enabled else "process_disabled",
        )
    await session.refresh(process)


async def delete_process(session: AsyncSession, process: Process) -> None:
    deleted = await session.execute(
        delete(Process).where(Process.id == process.id, Process.active_run_id.is_(None)),
        execution_options={"synchronize_session": False},
    )
    if deleted.rowcount == 0:  # type: ignore[attr-defined]
        await _refuse_change(session, process)
    await session.execute(
        update(Machine)
        .where(Machine.id == process.machine_id)
        .values(process_count=Machine.process_count - 1),
        execution_options={"synchronize_session": False},
    )
    changed_after_commit(session, process.id, process.project_id)  # its history goes with it
    session.expunge(process)


def _listing(project: Project) -> Select[Process, str, str, Run]:
    return (
        select(Process, Template.name, Machine.name, Run)
        .join(Template, Template.id == Process.template_id)
        .join(Machine, Machine.id == Process.machine_id)
        .outerjoin(Run, and_(Run.process_id == Process.id, Run.number == Process.run_count))
        .where(Process.project_id == project.id)
    )


async def list_processes(
    session: AsyncSession,
    project: Project,
    page: PageParams,
    status: ProcessStatus | None,
    template: Template | None = None,
) -> Page[ProcessRead]:
    """A project's processes (or a template's), each with its latest run; `status` is the latest
    run's (`created`: none yet)."""
    statement = _listing(project)
    if template is not None:
        statement = statement.where(Process.template_id == template.id)
    if status is ProcessStatus.CREATED:
        statement = statement.where(Process.run_count == 0)
    elif status is not None:
        statement = statement.where(Run.status == status.value)

    def item(process: Process, template_name: str, machine_name: str, latest: Run | None) -> ProcessRead:
        return build_process_read(process, project.name, template_name, machine_name, latest)

    return await paged(session, statement, Process.id, page, item)


async def list_events(session: AsyncSession, process: Process, page: PageParams) -> Page[ProcessEventRead]:
    """The audit trail of the process and all its runs."""
    statement = select(ProcessEvent).where(ProcessEvent.process_id == process.id)
    return await paged(session, statement, ProcessEvent.id, page, ProcessEventRead.model_validate)


async def process_read(session: AsyncSession, process: Process) -> ProcessRead:
    project = await session.get(Project, process.project_id)
    template = await session.get(Template, process.template_id)
    machine = await session.get(Machine, process.machine_id)
    assert project is not None and template is not None and machine is not None
    latest = await session.scalar(
        select(Run)
        .where(Run.process_id == process.id, Run.number == process.run_count)
        .execution_options(populate_existing=True)  # as committed, also for a session that read it before
    )
    return build_process_read(process, project.name, template.name, machine.name, latest)


def loaded_process_read(loaded: LoadedProcess, latest: Run | None) -> ProcessRead:
    """`process_read` for a process whose rows and latest run the request holds already."""
    return build_process_read(
        loaded.process, loaded.project.name, loaded.template.name, loaded.machine.name, latest
    )


def build_process_read(
    process: Process, project: str, template: str, machine: str, latest: Run | None
) -> ProcessRead:
    return ProcessRead(
        id=process.id,
        project=project,
        template=template,
        machine=machine,
        enabled=process.enabled,
        status=ProcessStatus(latest.status) if latest is not None else ProcessStatus.CREATED,
        restart_pending=process.restart_requested,
        run_count=process.run_count,
        latest_run=run_read(latest, project, machine) if latest is not None else None,
        created_at=process.created_at,
    )
