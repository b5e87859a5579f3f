"""What the agent's facts about a run do to it: launched, stage, exited, finished.

The agent reports facts and these functions decide the run's status; a success is decided on
`finished`, in the transaction that commits the run's outputs (`outputs.py`).
"""

from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.notify import Notifier, changed_after_commit
from api.models import Machine, Run
from api.models.base import utcnow
from api.runs import outputs
from api.runs.lifecycle import Actor, agent_actor, end_run, transition
from shared.enums import ACTIVE_RUN_STATUSES, ENDED_RUN_STATUSES, ReasonCode, RunStatus
from shared.protocol import (
    DEFAULT_MAX_DURATION_SECONDS,
    ExitedEvent,
    FinishedEvent,
    LaunchedEvent,
    RunEventReply,
    StageEvent,
)

# An ended run, succeeded included, is one the agent must not (re)start or keep: a late report about it
# changes nothing and the reply tells the agent to let it go.
_SHOULD_STOP = ENDED_RUN_STATUSES | {RunStatus.STOPPING}
# A fact is judged against the run's status as read; if a concurrent change (a user's stop) moves the run
# first, it is judged again. Statuses only move forward, so a few rounds always settle it.
_DECISIONS = len(ACTIVE_RUN_STATUSES) + 1


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
    return timedelta(seconds=int(run.config.get("max_duration_seconds", DEFAULT_MAX_DURATION_SECONDS)))


async def _set(session: AsyncSession, run: Run, **values: object) -> None:
    await session.execute(
        update(Run)
        .where(Run.id == run.id, Run.status.in_([s.value for s in ACTIVE_RUN_STATUSES]))
        .values(**values),
        execution_options={"synchronize_session": False},
    )
    changed_after_commit(session, run.id, run.process_id, run.project_id)  # its stage, its progress
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
        if _kept_at_limit(run, event):
            # Cut short by its maximum duration and saved: `stopping` until `finished` keeps the outputs.
            if status is RunStatus.STOPPING:
                await _set(session, run, **exit_values)
                return
            if await transition(
                session,
                run,
                RunStatus.STOPPING,
                actor,
                reason=ReasonCode.MAX_DURATION.value,
                only_from=as_read,
                reason_code=ReasonCode.MAX_DURATION.value,
                stop_requested_at=utcnow(),
                **exit_values,
            ):
                return
            continue
        if status is RunStatus.STOPPING or event.reason_code is ReasonCode.MAX_DURATION:
            to = RunStatus.STOPPED
            reason = (
                ReasonCode(run.reason_code)
                if run.reason_code
                else (event.reason_code or ReasonCode.USER_STOP)
            )
        elif event.exit_code == 0 and event.signal is None:
            # Success is decided on `finished`, once the outputs are in.
            if status is not RunStatus.STARTING or await transition(
                session, run, RunStatus.RUNNING, actor, only_from=as_read, launched_at=utcnow()
            ):
                await _set(session, run, **exit_values)
                return
            continue
        else:
            to, reason = RunStatus.FAILED, event.reason_code or ReasonCode.EXIT_NONZERO
        if await end_run(
            session, notifier, run, to, actor, reason, event.error_tail, only_from=as_read, **exit_values
        ):
            return


def _kept_at_limit(run: Run, event: ExitedEvent) -> bool:
    """The agent stopped the run at its maximum duration and the package saved: its outputs follow.
    A run a person stopped first keeps nothing."""
    return (
        event.saved
        and event.reason_code is ReasonCode.MAX_DURATION
        and event.exit_code == 0
        and event.signal is None
        and (
            run.status == RunStatus.RUNNING
            or (run.status == RunStatus.STOPPING and run.reason_code == ReasonCode.MAX_DURATION.value)
        )
    )


async def _finished(session: AsyncSession, notifier: Notifier, run: Run, actor: Actor) -> None:
    for _ in range(_DECISIONS):
        status = RunStatus(run.status)
        as_read = frozenset({status})
        detail = ""
        if (
            status is RunStatus.STOPPING
            and run.reason_code == ReasonCode.MAX_DURATION.value
            and run.exit_code == 0
        ):
            # Cut short by its maximum duration, saved: `stopped`, and its outputs kept as a version
            # marked so, in the one transaction (docs/runs-cut-short.md).
            to, reason = RunStatus.STOPPED, ReasonCode.MAX_DURATION
            missing = await outputs.missing_outputs(session, run)
            if missing is None:
                if await end_run(session, notifier, run, to, actor, reason, only_from=as_read):
                    await outputs.commit_outputs(session, run, cut_short=reason.value)
                    return
                continue
            detail = f"nothing was kept: {missing}"
        elif status is RunStatus.STOPPING:
            to, reason = RunStatus.STOPPED, ReasonCode(run.reason_code or ReasonCode.USER_STOP)
        elif status is RunStatus.RUNNING and run.exit_code == 0:
            missing = await outputs.missing_outputs(session, run)
            if missing is None:
                # The commit point: the status, the new version and _results.json in one transaction.
                if await end_run(
                    session,
                    notifier,
                    run,
                    RunStatus.SUCCEEDED,
                    actor,
                    ReasonCode.COMPLETED,
                    only_from=as_read,
                    progress=1.0,
                    eta_seconds=0.0,
                ):
                    await outputs.commit_outputs(session, run)
                    return
                continue
            to, reason, detail = RunStatus.FAILED, ReasonCode.MISSING_OUTPUTS, missing
        elif status in ACTIVE_RUN_STATUSES:
            to, reason = RunStatus.FAILED, ReasonCode.EXCEPTION
            detail = "the agent reported `finished` without a successful exit"
        else:
            return
        if await end_run(session, notifier, run, to, actor, reason, detail, only_from=as_read):
            return
