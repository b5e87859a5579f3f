"""The API side of the agent protocol: the agent reports facts, these functions decide the states.

What a run's facts (launched, stage, exited, finished) do to it is the run's: `api/runs/reports.py`.
"""

import uuid
from datetime import timedelta

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import NotFound
from api.core.notify import Notifier
from api.models import AgentCommand, Machine, Run
from api.models.base import utcnow
from api.runs.lifecycle import UNTAKEN_COMMAND_STATES, agent_actor, end_run
from shared.enums import (
    ACTIVE_RUN_STATUSES,
    CommandKind,
    CommandState,
    ReasonCode,
    RunStatus,
)
from shared.protocol import Hello

MAX_COMMANDS_PER_POLL = 100


SEEN_RESOLUTION = timedelta(seconds=1)


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


async def agent_machine(session: AsyncSession, machine_id: uuid.UUID) -> Machine:
    """The caller's machine; 404 `machine_not_found` once it was deleted while its agent still runs."""
    machine = await session.get(Machine, machine_id)
    if machine is None:
        raise NotFound("this machine is no longer registered", code="machine_not_found")
    return machine


async def mark_seen(session: AsyncSession, machine_id: uuid.UUID) -> None:
    """The machine answered: record it, and clear the offline flag of its runs. (The long-poll, which
    reads first what it may have to write, runs the same statements in api/agent_routes/poll_store.py, on
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
    machine.capabilities = sorted(set(data.capabilities))  # an older agent's hello clears them
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
