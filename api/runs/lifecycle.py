"""The run's life (DESIGN.md): every transition one compare-and-set UPDATE, every one an event row.

This is the one place that moves a run. Routers, the agent routes and the sweeper all call it.
"""

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import Conflict, InvalidInput, NotFound
from api.core.notify import Notifier, changed_after_commit
from api.models import AgentCommand, Machine, Process, ProcessEvent, Project, Run, Template
from api.models.base import new_id, utcnow
from api.runs import checkpoints
from api.templates import references
from api.templates.references import ResolvedInputs
from api.webhooks import outbox
from shared.enums import (
    ActorKind,
    CommandKind,
    CommandState,
    PipelineType,
    ReasonCode,
    RunStatus,
)
from shared.protocol import StartRunPayload, StopRunPayload
from shared.versions import Version

ALLOWED_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.STARTING: frozenset(
        {RunStatus.RUNNING, RunStatus.STOPPING, RunStatus.STOPPED, RunStatus.FAILED}
    ),
    RunStatus.RUNNING: frozenset(
        {RunStatus.STOPPING, RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED}
    ),
    RunStatus.STOPPING: frozenset({RunStatus.STOPPED, RunStatus.FAILED}),
}
_CAS_ATTEMPTS = 5
UNTAKEN_COMMAND_STATES = (CommandState.PENDING, CommandState.DELIVERED)

# A start's statements, built once: every start runs them.
_MACHINE_ENABLED = select(Machine.enabled).where(Machine.id == bindparam("machine_id"))
_PROCESS_ENABLED = select(Process.enabled).where(Process.id == bindparam("process_id"))
# The start's compare-and-set. It returns the process row as it leaves it, which refreshes the caller's
# object in the same statement (populate_existing).
_CLAIM = (
    update(Process)
    .where(Process.id == bindparam("process_id"), Process.active_run_id.is_(None), Process.enabled.is_(True))
    .values(active_run_id=bindparam("run_id"), run_count=Process.run_count + 1, restart_requested=False)
    .returning(Process)
)
# The run as the database holds it (on PostgreSQL, JSONB orders the config's keys): what a read-back
# would give, without one.
_INSERT_RUN = insert(Run).returning(Run)


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    id: uuid.UUID | None
    name: str


SYSTEM = Actor(ActorKind.SYSTEM, None, "trainyard")


def record_event(
    session: AsyncSession,
    process_id: uuid.UUID,
    project_id: uuid.UUID,
    actor: Actor,
    kind: str,
    *,
    run_id: uuid.UUID | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    reason_code: str | None = None,
    detail: str = "",
) -> None:
    """The process's history gains `kind`; whoever waits on the process, its project or the run hears
    of it once this commits (`wait=` on the GET routes, the console's live pages)."""
    changed_after_commit(session, process_id, project_id, *(() if run_id is None else (run_id,)))
    session.add(
        ProcessEvent(
            process_id=process_id,
            run_id=run_id,
            actor_kind=actor.kind.value,
            actor_id=actor.id,
            actor_name=actor.name,
            kind=kind,
            from_status=from_status,
            to_status=to_status,
            reason_code=reason_code,
            detail=detail,
        )
    )


async def transition(
    session: AsyncSession,
    run: Run,
    to: RunStatus,
    actor: Actor,
    *,
    reason: str | None = None,
    event_detail: str = "",
    only_from: frozenset[RunStatus] | None = None,
    **values: Any,
) -> bool:
    """Move `run` to `to` if its life allows it from the status it has now; False if it does not.

    A compare-and-set on the status last read: a concurrent change makes it re-read and decide again.
    A caller whose choice of `to` depended on the status it read names that status in `only_from`: if
    the run moved meanwhile, this returns False (with `run` re-read) and the caller decides anew.
    """
    for _ in range(_CAS_ATTEMPTS):
        current = RunStatus(run.status)
        if to not in ALLOWED_TRANSITIONS.get(current, frozenset()):
            return False
        if only_from is not None and current not in only_from:
            return False
        result = await session.execute(
            update(Run)
            .where(Run.id == run.id, Run.status == current.value)
            .values(status=to.value, **values),
            execution_options={"synchronize_session": False},
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            await session.refresh(run)
            record_event(
                session,
                run.process_id,
                run.project_id,
                actor,
                "run_status",
                run_id=run.id,
                from_status=current.value,
                to_status=to.value,
                reason_code=reason,
                detail=event_detail,
            )
            await outbox.run_status_changed(session, run, current, to, reason)
            return True
        await session.refresh(run)
    raise Conflict("the run kept changing under this request; try again", code="concurrent_update")


async def _queue_command(
    session: AsyncSession, notifier: Notifier, run: Run, kind: CommandKind, payload: dict[str, Any]
) -> None:
    session.add(
        AgentCommand(
            machine_id=run.machine_id,
            run_id=run.id,
            kind=kind.value,
            state=CommandState.PENDING.value,
            payload=payload,
        )
    )
    await session.flush()
    notifier.machine_changed_after_commit(session, run.machine_id)


def start_payload(
    run_id: uuid.UUID, process: Process, template: Template, project_name: str, inputs: ResolvedInputs
) -> StartRunPayload:
    package = inputs.package_version
    return StartRunPayload(
        run_id=run_id,
        process_id=process.id,
        project=project_name,
        template=template.name,
        pipeline_type=PipelineType(template.pipeline_type),
        base_package=template.base_package,
        base_version=None if package is None else str(Version(package.major, package.minor)),
        package_sha256=None if package is None else package.blob_sha256,
        package_root=None if package is None else package.root_prefix,
        package_has_requirements=package is not None and package.has_requirements,
        dataset=template.dataset,
        dataset_version=None if inputs.dataset_version is None else inputs.dataset_version.number,
        dataset_path=template.dataset_path,
        test_dataset=template.test_dataset,
        test_dataset_version=None
        if inputs.test_dataset_version is None
        else inputs.test_dataset_version.number,
        test_dataset_path=template.test_dataset_path,
        augmentation=template.augmentation,
        parameters=inputs.parameters,
        max_duration_seconds=template.max_duration_seconds,
        save_training_data=template.save_training_data,
        gpus=template.gpus,
        processes=template.processes,
    )


async def start_run(
    session: AsyncSession,
    notifier: Notifier,
    process: Process,
    actor: Actor,
    *,
    machine_enabled: bool | None = None,
    resume: bool = False,
) -> Run:
    """Make the process's next run and queue its start command, or refuse with a clear conflict.
    `resume` (a restart): the run resumes from the checkpoint of the last run, if that one failed or
    was stopped and kept one (`api/runs/checkpoints.py`).

    `machine_enabled` is the machine's flag if the caller read it in this request (the start route
    reads it with the process); else it is read here. The template and the project come from the
    session's identity map when the caller holds them.
    """
    # Checks first, writes after: a refusal leaves nothing to undo. A machine disabled while this start
    # commits takes the start as one that came before the disable, as a run it already had.
    if machine_enabled is None:
        machine_enabled = await session.scalar(_MACHINE_ENABLED, {"machine_id": process.machine_id})
    if not machine_enabled:
        raise Conflict("the process's machine is disabled and takes no new run", code="machine_disabled")
    template = await session.get(Template, process.template_id)
    project = await session.get(Project, process.project_id)
    assert template is not None and project is not None
    try:
        inputs = await references.resolve(session, project, template, at_start=True)
    except (NotFound, InvalidInput) as missing:  # the template's inputs changed since it was written
        raise Conflict(
            f"the run cannot start: {missing.detail}", code=missing.code, field=missing.field
        ) from None
    run_id = new_id()
    claimed = await session.execute(
        _CLAIM,
        {"process_id": process.id, "run_id": run_id},
        execution_options={"synchronize_session": False, "populate_existing": True},
    )
    if claimed.scalar_one_or_none() is None:
        # Read the refusal's cause as a value: the process may have been deleted meanwhile.
        enabled = await session.scalar(_PROCESS_ENABLED, {"process_id": process.id})
        if enabled is None:
            raise NotFound(f"no process {process.id}: it was deleted", code="process_not_found")
        if not enabled:
            raise Conflict("the process is disabled: enable it first", code="process_disabled")
        raise Conflict("the process already has an active run", code="run_active")
    start = start_payload(run_id, process, template, project.name, inputs).model_dump(mode="json")
    if resume:
        start.update(await checkpoints.resume_point(session, process.id))
    run_row = {
        "id": run_id,
        "process_id": process.id,
        "project_id": process.project_id,
        "machine_id": process.machine_id,
        "number": process.run_count,
        "status": RunStatus.STARTING.value,
        "config": start,
        "created_at": utcnow(),
        "created_by": actor.id if actor.kind is ActorKind.USER else None,
        "package_version_id": None if inputs.package_version is None else inputs.package_version.id,
        "dataset_version_id": None if inputs.dataset_version is None else inputs.dataset_version.id,
        "test_dataset_version_id": None
        if inputs.test_dataset_version is None
        else inputs.test_dataset_version.id,
    }
    run = (await session.scalars(_INSERT_RUN, [run_row])).one()
    record_event(
        session,
        process.id,
        process.project_id,
        actor,
        "run_status",
        run_id=run.id,
        to_status=RunStatus.STARTING.value,
    )
    await _queue_command(session, notifier, run, CommandKind.START_RUN, {"start": start})
    await outbox.run_status_changed(session, run, None, RunStatus.STARTING, None)
    return run


async def withdraw_start(session: AsyncSession, run_id: uuid.UUID) -> bool:
    """Cancel the run's start command unless an agent took it: of the withdrawal and the agent's
    acknowledgement, exactly one wins. True if the start was withdrawn."""
    cancelled = await session.execute(
        update(AgentCommand)
        .where(
            AgentCommand.run_id == run_id,
            AgentCommand.kind == CommandKind.START_RUN.value,
            AgentCommand.state.in_([s.value for s in UNTAKEN_COMMAND_STATES]),
        )
        .values(state=CommandState.CANCELLED.value),
        execution_options={"synchronize_session": False},
    )
    return cancelled.rowcount == 1  # type: ignore[attr-defined,no-any-return]


async def request_stop(
    session: AsyncSession, notifier: Notifier, run: Run, actor: Actor, reason: ReasonCode
) -> bool:
    """Stop a run: at once if no agent took its start yet, else `stopping` and a stop command.

    True if the run is stopped by this request or `stopping` (this stop, or an earlier one, is under
    way); False if it had ended by itself meanwhile: there was nothing left to stop. Decided on the
    run as the compare-and-set leaves it, never on the status read before it, so that of stops racing
    an untaken start exactly one ends the run and the others see it ended, on every database."""
    if run.status == RunStatus.STARTING and await withdraw_start(session, run.id):
        return await end_run(
            session,
            notifier,
            run,
            RunStatus.STOPPED,
            actor,
            reason,
            "stopped before an agent took the start",
        )
    now = utcnow()
    if await transition(
        session,
        run,
        RunStatus.STOPPING,
        actor,
        reason=reason.value,
        reason_code=reason.value,
        stop_requested_at=now,
    ):
        stop = StopRunPayload(run_id=run.id, reason_code=reason)
        await _queue_command(
            session, notifier, run, CommandKind.STOP_RUN, {"stop": stop.model_dump(mode="json")}
        )
        return True
    return run.status == RunStatus.STOPPING


async def end_run(
    session: AsyncSession,
    notifier: Notifier,
    run: Run,
    to: RunStatus,
    actor: Actor,
    reason: ReasonCode,
    detail: str = "",
    *,
    only_from: frozenset[RunStatus] | None = None,
    **values: Any,
) -> bool:
    """End a run, free its process, withdraw its untaken commands, and carry out a pending restart."""
    now = utcnow()
    if not await transition(
        session,
        run,
        to,
        actor,
        reason=reason.value,
        event_detail=detail[:500],
        only_from=only_from,
        reason_code=reason.value,
        detail=detail,
        ended_at=now,
        **values,
    ):
        return False
    await session.execute(
        update(AgentCommand)
        .where(
            AgentCommand.run_id == run.id,
            AgentCommand.state.in_([s.value for s in UNTAKEN_COMMAND_STATES]),
        )
        .values(state=CommandState.CANCELLED.value),
        execution_options={"synchronize_session": False},
    )
    released = await session.execute(
        update(Process)
        .where(Process.id == run.process_id, Process.active_run_id == run.id)
        .values(active_run_id=None)
        .returning(Process.restart_requested),
        execution_options={"synchronize_session": False},
    )
    if released.scalar_one_or_none():
        process = await session.get(Process, run.process_id, populate_existing=True)
        assert process is not None
        try:
            await start_run(session, notifier, process, actor, resume=True)
        except Conflict as refused:  # raised before start_run wrote anything
            await session.execute(
                update(Process).where(Process.id == process.id).values(restart_requested=False),
                execution_options={"synchronize_session": False},
            )
            record_event(
                session,
                process.id,
                process.project_id,
                actor,
                "restart_failed",
                run_id=run.id,
                detail=refused.detail,
            )
    return True


def actor_of(kind: ActorKind, principal_id: uuid.UUID, name: str) -> Actor:
    return Actor(kind, principal_id, name)


def agent_actor(machine: Machine) -> Actor:
    return Actor(ActorKind.AGENT, machine.id, machine.name)
