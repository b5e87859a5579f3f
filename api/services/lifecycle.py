"""A service's life (docs/serving.md): every change one compare-and-set UPDATE on the row's
`revision`, every move a row of its audit trail.

The one place that moves a service: its routes, the agent's events and the agent's hello call it.
`created --start--> starting --first instance serving--> serving --stop--> stopping --> stopped`;
an instance that exits and is restarted keeps the service `starting`/`serving`; the agent giving up
on one fails it; the maximum run time passing stops it (the agent reports `max_duration`).
"""

import secrets
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import Conflict, NotFound
from api.core.notify import Notifier, changed_after_commit
from api.models import AgentCommand, Machine, Package, PackageVersion, Project, Service, ServiceAuditEvent
from api.models.base import utcnow
from api.runs.lifecycle import UNTAKEN_COMMAND_STATES, Actor, agent_actor
from api.webhooks import outbox
from shared.enums import CommandKind, CommandState, ReasonCode, ServiceStatus
from shared.protocol import MAX_SERVICE_INSTANCES, StartServicePayload, StopServicePayload
from shared.versions import Version

S = ServiceStatus
ACTIVE = frozenset({S.STARTING, S.SERVING})  # wanted served: the agent keeps its instances up
LIVE = ACTIVE | {S.STOPPING}  # the agent has, or may have, instances of it
STARTABLE = frozenset({S.CREATED, S.STOPPED, S.FAILED})
# Every instance of a service may report at once: each loses at most once to each of the others.
_CAS_ATTEMPTS = MAX_SERVICE_INSTANCES + 4
_UNTAKEN = [state.value for state in UNTAKEN_COMMAND_STATES]
RESTARTED_WITHOUT = "the agent restarted without this service"


def record_event(
    session: AsyncSession,
    service: Service,
    actor: Actor,
    kind: str,
    *,
    instance: int | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    reason_code: str | None = None,
    detail: str = "",
) -> None:
    """The service's history gains `kind`; whoever waits on the service or its project hears of it."""
    changed_after_commit(session, service.id, service.project_id)
    session.add(
        ServiceAuditEvent(
            service_id=service.id,
            actor_kind=actor.kind.value,
            actor_id=actor.id,
            actor_name=actor.name,
            kind=kind,
            instance=instance,
            from_status=from_status,
            to_status=to_status,
            reason_code=reason_code,
            detail=detail[:2000],
        )
    )


async def status_changed(
    session: AsyncSession,
    service: Service,
    actor: Actor,
    from_status: str | None,
    to_status: str,
    reason: str | None = None,
    detail: str = "",
) -> None:
    """A move: a row of the audit trail, and the project's `service.status_changed` webhooks."""
    record_event(
        session,
        service,
        actor,
        "service_status",
        from_status=from_status,
        to_status=to_status,
        reason_code=reason,
        detail=detail,
    )
    await outbox.service_status_changed(session, service, from_status, to_status, reason)


async def reread(session: AsyncSession, service: Service) -> Service:
    """The service as it has committed since this session read it (404 once it is deleted)."""
    found = await session.get(Service, service.id, populate_existing=True)
    if found is None:
        raise NotFound(f"no service {service.id}: it was deleted", code="service_not_found")
    return found


async def change(
    session: AsyncSession, service: Service, decide: Callable[[Service], dict[str, Any] | None]
) -> dict[str, Any] | None:
    """Apply what `decide` makes of the service as last read: the values written (None: it chose to
    write nothing). A compare-and-set on `revision`: a concurrent change makes it re-read and decide
    again, so no change is decided on a stale read and none is lost."""
    for _ in range(_CAS_ATTEMPTS):
        values = decide(service)
        if values is None:
            return None
        result = await session.execute(
            update(Service)
            .where(Service.id == service.id, Service.revision == service.revision)
            .values(revision=Service.revision + 1, **values),
            execution_options={"synchronize_session": False},
        )
        await reread(session, service)
        if result.rowcount == 1:  # type: ignore[attr-defined]
            return values
    raise Conflict("the service kept changing under this request; try again", code="concurrent_update")


async def move(
    session: AsyncSession,
    service: Service,
    actor: Actor,
    to: ServiceStatus,
    *,
    only_from: frozenset[ServiceStatus],
    reason: ReasonCode | None = None,
    detail: str = "",
    **values: Any,
) -> bool:
    """Move the service to `to` if its status is one of `only_from`; False if it is not."""
    was: list[ServiceStatus] = []

    def decide(current: Service) -> dict[str, Any] | None:
        status = ServiceStatus(current.status)
        if status not in only_from:
            return None
        was[:] = [status]
        return {"status": to.value, **values}

    if await change(session, service, decide) is None:
        return False
    await status_changed(
        session, service, actor, was[0].value, to.value, None if reason is None else reason.value, detail
    )
    if to in (S.STOPPED, S.FAILED):
        await _ended(session, service)
    return True


async def end(
    session: AsyncSession,
    service: Service,
    actor: Actor,
    to: ServiceStatus,
    reason: ReasonCode,
    *,
    only_from: frozenset[ServiceStatus] = LIVE,
    detail: str = "",
    error_tail: str | None = None,
) -> bool:
    """End the service `stopped` or `failed`: no endpoint left, its untaken commands withdrawn."""
    values: dict[str, Any] = {"reason_code": reason.value, "endpoints": {}, "ended_at": utcnow()}
    if error_tail is not None:
        values["error_tail"] = error_tail
    return await move(
        session, service, actor, to, only_from=only_from, reason=reason, detail=detail, **values
    )


async def _ended(session: AsyncSession, service: Service) -> None:
    await session.execute(
        update(AgentCommand)
        .where(AgentCommand.service_id == service.id, AgentCommand.state.in_(_UNTAKEN))
        .values(state=CommandState.CANCELLED.value),
        execution_options={"synchronize_session": False},
    )
    if service.delete_requested:  # a DELETE waited for the stop: the service goes now
        await delete_now(session, service)


async def delete_now(session: AsyncSession, service: Service) -> None:
    """Delete the row (its commands and audit trail go with it, ON DELETE CASCADE)."""
    changed_after_commit(session, service.id, service.project_id)
    await session.flush()  # its events written so far go with it, not after it
    await session.execute(delete(Service).where(Service.id == service.id))
    session.expunge(service)


async def _queue_command(
    session: AsyncSession, notifier: Notifier, service: Service, kind: CommandKind, payload: dict[str, Any]
) -> None:
    session.add(
        AgentCommand(
            machine_id=service.machine_id,
            service_id=service.id,
            kind=kind.value,
            state=CommandState.PENDING.value,
            payload=payload,
        )
    )
    await session.flush()
    notifier.machine_changed_after_commit(session, service.machine_id)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


async def start(
    session: AsyncSession, notifier: Notifier, service: Service, actor: Actor, *, machine_enabled: bool
) -> None:
    """`starting`, with a new secret and a start command for the agent; 409 while it is active."""
    if not machine_enabled:
        raise Conflict("the service's machine is disabled and takes no new service", code="machine_disabled")
    secret = new_secret()
    if not await move(
        session,
        service,
        actor,
        S.STARTING,
        only_from=STARTABLE,
        secret=secret,
        endpoints={},
        reason_code=None,
        error_tail="",
        started_at=utcnow(),
        ended_at=None,
    ):
        if service.status == S.STOPPING:
            raise Conflict("the service is stopping: start it once it has stopped", code="service_stopping")
        raise Conflict(f"the service is {service.status} already", code="service_active")
    version = await session.get_one(PackageVersion, service.package_version_id)
    package = await session.get_one(Package, version.package_id)
    project = await session.get_one(Project, service.project_id)
    payload = StartServicePayload(
        service_id=service.id,
        project=project.name,
        name=service.name,
        package=package.name,
        version=str(Version(version.major, version.minor)),
        package_sha256=version.blob_sha256,
        package_root=version.root_prefix,
        package_has_requirements=version.has_requirements,
        max_run_seconds=service.max_run_seconds,
        instances=service.instances,
        secret=secret,
    )
    await _queue_command(
        session, notifier, service, CommandKind.START_SERVICE, {"start": payload.model_dump(mode="json")}
    )


async def withdraw_start(session: AsyncSession, service_id: uuid.UUID) -> bool:
    """Cancel the service's start command unless an agent took it (of the withdrawal and the agent's
    acknowledgement, exactly one wins). True if a start was withdrawn."""
    cancelled = await session.execute(
        update(AgentCommand)
        .where(
            AgentCommand.service_id == service_id,
            AgentCommand.kind == CommandKind.START_SERVICE.value,
            AgentCommand.state.in_(_UNTAKEN),
        )
        .values(state=CommandState.CANCELLED.value),
        execution_options={"synchronize_session": False},
    )
    return bool(cancelled.rowcount)  # type: ignore[attr-defined]


async def request_stop(
    session: AsyncSession,
    notifier: Notifier,
    service: Service,
    actor: Actor,
    reason: ReasonCode = ReasonCode.USER_STOP,
) -> bool:
    """Stop it: at once if no agent took its start yet, else `stopping` and a stop command. True if
    it is stopped by this request or `stopping`; False if it was not active (nothing to stop)."""
    if (
        service.status == S.STARTING
        and await withdraw_start(session, service.id)
        and await end(
            session,
            service,
            actor,
            S.STOPPED,
            reason,
            only_from=frozenset({S.STARTING}),
            detail="stopped before an agent took the start",
        )
    ):
        return True
    if await move(
        session, service, actor, S.STOPPING, only_from=ACTIVE, reason=reason, reason_code=reason.value
    ):
        stop = StopServicePayload(service_id=service.id, reason_code=reason)
        await _queue_command(
            session, notifier, service, CommandKind.STOP_SERVICE, {"stop": stop.model_dump(mode="json")}
        )
        return True
    return service.status == S.STOPPING


async def _start_untaken(session: AsyncSession, service_id: uuid.UUID) -> bool:
    found = await session.scalar(
        select(AgentCommand.id)
        .where(
            AgentCommand.service_id == service_id,
            AgentCommand.kind == CommandKind.START_SERVICE.value,
            AgentCommand.state.in_(_UNTAKEN),
        )
        .limit(1)
    )
    return found is not None


async def reconcile(session: AsyncSession, machine: Machine, held: list[uuid.UUID]) -> list[uuid.UUID]:
    """The agent's hello: the services it has that the API no longer wants served (deleted, stopped,
    unknown, another machine's) go back as `stop_services`; those it has and the API wants served are
    re-adopted as they are. A live service of this machine the agent no longer has, whose start it
    took, ended while it was away: `stopped` if it was being stopped, else `failed`/`lost`."""
    wanted: set[uuid.UUID] = set()
    if held:
        rows = await session.execute(
            select(Service.id, Service.status).where(Service.id.in_(held), Service.machine_id == machine.id)
        )
        wanted = {service_id for service_id, status in rows if ServiceStatus(status) in ACTIVE}
    stop_services = [service_id for service_id in dict.fromkeys(held) if service_id not in wanted]
    lost = await session.scalars(
        select(Service).where(
            Service.machine_id == machine.id,
            Service.status.in_([status.value for status in LIVE]),
            Service.id.not_in(held) if held else Service.id.is_not(None),
        )
    )
    actor = agent_actor(machine)
    for service in list(lost):
        if service.status == S.STARTING and await _start_untaken(session, service.id):
            continue  # the agent finds the start on its next poll
        if service.status == S.STOPPING:
            reason = ReasonCode(service.reason_code or ReasonCode.USER_STOP)
            await end(session, service, actor, S.STOPPED, reason, detail=RESTARTED_WITHOUT)
        else:
            await end(session, service, actor, S.FAILED, ReasonCode.LOST, detail=RESTARTED_WITHOUT)
    return stop_services
