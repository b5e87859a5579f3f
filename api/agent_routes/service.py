"""The API side of the agent protocol: the agent reports facts, these functions decide the states."""

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.agent_routes import outputs
from api.core.errors import NotFound
from api.core.notify import Notifier
from api.models import AgentCommand, Machine, Run
from api.models.base import utcnow
from api.processes.lifecycle import UNTAKEN_COMMAND_STATES, Actor, end_run, transition
from shared.enums import (
    ACTIVE_RUN_STATUSES,
    ENDED_RUN_STATUSES,
    ActorKind,
    CommandKind,
    CommandState,
    ReasonCode,
    RunStatus,
)
from shared.protocol import (
    ExitedEvent,
    FinishedEvent,
    Hello,
    LaunchedEvent,
    RunEventReply,
    StageEvent,
)

MAX_COMMANDS_PER_POLL = 100
# An ended run, succeeded included, is one the agent must not (re)start or keep: a late report about it
# changes nothing and the reply tells the agent to let it go.
_SHOULD_STOP = ENDED_RUN_STATUSES | {RunStatus.STOPPING}
# A fact is judged against the run's status as read; if a concurrent change (a user's stop) moves the run
# first, it is judged again. Statuses only move forward, so a few rounds always settle it.
_DECISIONS = len(ACTIVE_RUN_STATUSES) + 1


SEEN_RESOLUTION = timedelta(seconds=1)


def agent_actor(machine: Machine) -> Actor:
    return Actor(ActorKind.AGENT, machine.id, machine.name)


# Conditional, so that of a machine's requests at once only the first writes (and locks) the row.
MARK_SEEN = (
    update(Machine)
    .where(
        Machine.id == bindparam("machine"),
        or_(Machine.last_seen_at.is_(None), Machine.last_seen_at < bindparam("seen_before")),
    )
    .values(last_seen_at=bindparam("now"))
)
CLEAR_OFFLINE = (
    update(Run)
    .where(Run.machine_id == bindparam("machine"), Run.agent_offline.is_(True))
    .values(agent_offline=False)
)


def seen_parameters(machine_id: uuid.UUID) -> dict[str, object]:
    now = utcnow()
    return {"machine": machine_id, "seen_before": now - SEEN_RESOLUTION, "now": now}


async def mark_seen(session: AsyncSession, machine_id: uuid.UUID) -> None:
    """The machine answered: record it, and clear the offline flag of its runs. (The long-poll, which
    reads first what it may have to write, runs the same statements in api/agent_routes/poll.py, on
    SQLite in their sqlite3 form.)"""
    await session.execute(MARK_SEEN, seen_parameters(machine_id))
    await session.execute(CLEAR_OFFLINE, {"machine": machine_id})


async def hello(session: AsyncSession, notifier: Notifier, machine: Machine, data: Hello) -> list[uuid.UUID]:
    """Record what the agent is and reconcile: returns the runs it has that the API already ended.

    A run the API holds active on this machine that the agent does not have, and whose start the agent
    took, ended while the agent was away: it ends `failed`/`lost`.
    """
    machine.agent_version = data.agent_version
    machine.gpus = [gpu.model_dump(mode="json") for gpu in data.gpus]
    await mark_seen(session, machine.id)
    held = set(data.runs)
    stop_runs: list[uuid.UUID] = []
    if held:
        for run in await session.scalars(select(Run).where(Run.id.in_(held), Run.machine_id == machine.id)):
            if RunStatus(run.status) not in ACTIVE_RUN_STATUSES:
                stop_runs.append(run.id)
    active = await session.scalars(
        select(Run).where(
            Run.machine_id == machine.id,
            Run.status.in_([s.value for s in ACTIVE_RUN_STATUSES]),
            Run.id.not_in(held) if held else Run.id.is_not(None),
        )
    )
    for run in list(active):
        if run.status == RunStatus.STARTING and not await _start_taken(session, run.id):
            continue  # the agent will find the start command on its next poll
        if run.status == RunStatus.STOPPING:  # it was being stopped, and it is gone: stopped
            reason = ReasonCode(run.reason_code or ReasonCode.USER_STOP)
            await end_run(
                session,
                notifier,
                run,
                RunStatus.STOPPED,
                agent_actor(machine),
                reason,
                "the agent restarted without this run",
            )
            continue
        await end_run(
            session,
            notifier,
            run,
            RunStatus.FAILED,
            agent_actor(machine),
            ReasonCode.LOST,
            "the agent restarted without this run",
        )
    return stop_runs


async def _start_taken(session: AsyncSession, run_id: uuid.UUID) -> bool:
    state = await session.scalar(
        select(AgentCommand.state).where(
            AgentCommand.run_id == run_id, AgentCommand.kind == CommandKind.START_RUN.value
        )
    )
    return state == CommandState.ACKNOWLEDGED.value


async def acknowledge(session: AsyncSession, machine_id: uuid.UUID, command_id: uuid.UUID) -> CommandState:
    """Mark a command taken. Repeats are no-ops; a withdrawn (`cancelled`) command says so."""
    await session.execute(
        update(AgentCommand)
        .where(
            AgentCommand.id == command_id,
            AgentCommand.machine_id == machine_id,
            AgentCommand.state.in_([s.value for s in UNTAKEN_COMMAND_STATES]),
        )
        .values(state=CommandState.ACKNOWLEDGED.value, acknowledged_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    state = await session.scalar(
        select(AgentCommand.state).where(AgentCommand.id == command_id, AgentCommand.machine_id == machine_id)
    )
    if state is None:
        raise NotFound(f"no command {command_id} for this machine", code="command_not_found")
    return CommandState(state)


async def machine_run(session: AsyncSession, machine_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    run = await session.scalar(select(Run).where(Run.id == run_id, Run.machine_id == machine_id))
    if run is None:
        raise NotFound(f"no run {run_id} on this machine", code="run_not_found")
    return run


async def report_event(
    session: AsyncSession,
    notifier: Notifier,
    machine: Machine,
    run: Run,
    event: LaunchedEvent | StageEvent | ExitedEvent | FinishedEvent,
) -> RunEventReply:
    """Apply one fact. Facts about an ended run are accepted and change nothing; the reply says stop."""
    actor = agent_actor(machine)
    now = utcnow()
    if isinstance(event, LaunchedEvent):
        deadline = now + _duration(run)
        launched = await transition(
            session, run, RunStatus.RUNNING, actor, launched_at=now, deadline_at=deadline
        )
        if not launched and run.status == RunStatus.STOPPING and run.launched_at is None:
            await _set(session, run, launched_at=now, deadline_at=deadline)
    elif isinstance(event, StageEvent):
        if RunStatus(run.status) in ACTIVE_RUN_STATUSES:
            await _set(
                session, run, stage=event.stage, progress=event.progress, eta_seconds=event.eta_seconds
            )
    elif isinstance(event, ExitedEvent):
        await _exited(session, notifier, run, actor, event)
    else:
        await _finished(session, notifier, run, actor)
    status = RunStatus(run.status)
    return RunEventReply(run_id=run.id, status=status, stop=status in _SHOULD_STOP)


def _duration(run: Run) -> timedelta:
    return timedelta(seconds=int(run.config.get("max_duration_seconds", 3600)))


async def _set(session: AsyncSession, run: Run, **values: object) -> None:
    await session.execute(
        update(Run)
        .where(Run.id == run.id, Run.status.in_([s.value for s in ACTIVE_RUN_STATUSES]))
        .values(**values),
        execution_options={"synchronize_session": False},
    )
    await session.refresh(run)


async def _exited(
    session: AsyncSession, notifier: Notifier, run: Run, actor: Actor, event: ExitedEvent
) -> None:
    exit_values: dict[str, Any] = {"exit_code": event.exit_code, "exit_signal": event.signal}
    for _ in range(_DECISIONS):
        status = RunStatus(run.status)
        if status not in ACTIVE_RUN_STATUSES:
            return
        as_read = frozenset({status})
        if status is RunStatus.STOPPING or event.reason_code is ReasonCode.MAX_DURATION:
            reason = (
                ReasonCode(run.reason_code)
                if run.reason_code
                else (event.reason_code or ReasonCode.USER_STOP)
            )
            decided = await end_run(
                session,
                notifier,
                run,
                RunStatus.STOPPED,
                actor,
                reason,
                event.error_tail,
                only_from=as_read,
                **exit_values,
            )
        elif event.exit_code == 0 and event.signal is None:
            # Success is decided on `finished`, once the outputs are in.
            decided = status is not RunStatus.STARTING or await transition(
                session, run, RunStatus.RUNNING, actor, only_from=as_read, launched_at=utcnow()
            )
            if decided:
                await _set(session, run, **exit_values)
        else:
            reason = event.reason_code or ReasonCode.EXIT_NONZERO
            decided = await end_run(
                session,
                notifier,
                run,
                RunStatus.FAILED,
                actor,
                reason,
                event.error_tail,
                only_from=as_read,
                **exit_values,
            )
        if decided:
            return


async def _finished(session: AsyncSession, notifier: Notifier, run: Run, actor: Actor) -> None:
    for _ in range(_DECISIONS):
        status = RunStatus(run.status)
        as_read = frozenset({status})
        if status is RunStatus.STOPPING:
            reason = ReasonCode(run.reason_code or ReasonCode.USER_STOP)
            decided = await end_run(
                session, notifier, run, RunStatus.STOPPED, actor, reason, only_from=as_read
            )
        elif status is RunStatus.RUNNING and run.exit_code == 0:
            missing = await outputs.missing_outputs(session, run)
            if missing is not None:
                decided = await end_run(
                    session,
                    notifier,
                    run,
                    RunStatus.FAILED,
                    actor,
                    ReasonCode.MISSING_OUTPUTS,
                    missing,
                    only_from=as_read,
                )
            else:
                # The commit point: the status, the new version and _results.json in one transaction.
                decided = await end_run(
                    session,
                    notifier,
                    run,
                    RunStatus.SUCCEEDED,
                    actor,
                    ReasonCode.COMPLETED,
                    only_from=as_read,
                    progress=1.0,
                    eta_seconds=0.0,
                )
                if decided:
                    await outputs.commit_outputs(session, run)
        elif status in ACTIVE_RUN_STATUSES:
            decided = await end_run(
                session,
                notifier,
                run,
                RunStatus.FAILED,
                actor,
                ReasonCode.EXCEPTION,
                "the agent reported `finished` without a successful exit",
                only_from=as_read,
            )
        else:
            return
        if decided:
            return
