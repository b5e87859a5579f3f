"""`/api/v1/agent/...`: agent tokens only, each route limited to the caller's own machine and runs."""

import contextlib
import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response

from api.agent_routes import service
from api.agent_routes.hold import HOLD_KEY, PollHold
from api.agent_routes.poll import PollingAgentDep
from api.core.db import SessionDep
from api.core.deps import NotifierDep
from api.core.errors import error_responses
from api.core.notify import Notifier
from api.core.security import CurrentAgent
from api.runs import reports
from api.runs import service as runs
from api.services import lifecycle as services
from shared.protocol import (
    MAX_POLL_WAIT_SECONDS,
    Command,
    CommandAckReply,
    Hello,
    HelloReply,
    RunEvent,
    RunEventReply,
)

router = APIRouter(prefix="/agent", tags=["agent"], responses=error_responses(401, 403))


@router.post("/hello", operation_id="agent_hello", responses=error_responses(422))
async def hello(data: Hello, session: SessionDep, notifier: NotifierDep, agent: CurrentAgent) -> HelloReply:
    """On start and reconnect: the agent's version, GPUs, and the runs and services in hand; the API
    reconciles, and answers those it should stop."""
    machine = await service.agent_machine(session, agent.machine_id)
    stop_runs = await service.hello(session, notifier, machine, data)
    stop_services = await services.reconcile(session, machine, data.services)
    return HelloReply(machine=machine.name, stop_runs=stop_runs, stop_services=stop_services)


@router.get("/commands", operation_id="agent_commands_poll", response_model=list[Command])
async def poll_commands(
    request: Request,
    agent: PollingAgentDep,
    wait: Annotated[
        float, Query(ge=0, le=MAX_POLL_WAIT_SECONDS, description="Seconds to hold the poll.")
    ] = 0,
) -> list[Command] | Response:
    """Commands not yet acknowledged, oldest first; with none, held up to `wait` seconds for the first
    that arrives. Updates the machine's `last_seen`."""
    # The poll's database work is done by its dependency, in one unit (api/agent_routes/poll.py); the
    # wait is not held here but by `HeldPolls` (api/agent_routes/hold.py), outside FastAPI's
    # per-request state.
    hold: PollHold = request.scope[HOLD_KEY]
    if agent.commands or wait == 0 or hold.after_wait:
        return agent.commands
    notifier: Notifier = request.app.state.notifier
    with contextlib.ExitStack() as listening:
        # Woken at once if a command committed after the look began (`Notifier.listen`).
        woken = listening.enter_context(notifier.listen(agent.machine_id, since=agent.mark))
        hold.keep(listening.pop_all(), woken, wait)
    return Response(status_code=204)  # never sent: `HeldPolls` waits, then answers


@router.post("/commands/{command_id}/ack", operation_id="agent_commands_ack", responses=error_responses(404))
async def ack_command(command_id: uuid.UUID, session: SessionDep, agent: CurrentAgent) -> CommandAckReply:
    """The command was taken. Repeating it is harmless; `cancelled` means: do not carry it out."""
    state = await service.acknowledge(session, agent.machine_id, command_id)
    return CommandAckReply(id=command_id, state=state)


@router.post(
    "/runs/{run_id}/events", operation_id="agent_runs_events_report", responses=error_responses(404, 422)
)
async def report_run_event(
    run_id: uuid.UUID,
    event: Annotated[RunEvent, Body()],
    session: SessionDep,
    notifier: NotifierDep,
    agent: CurrentAgent,
) -> RunEventReply:
    """A fact about a run: `launched`, `stage`, `exited`, `finished` (the commit point)."""
    machine = await service.agent_machine(session, agent.machine_id)
    run = await runs.machine_run(session, machine.id, run_id)
    return await reports.report_event(session, notifier, machine, run, event)
