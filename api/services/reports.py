"""What an agent's facts about a service's instances do to it (POST agent/services/{id}/events).

The agent reports; this decides. An instance `serving` adds its address; one that `exited` and is
restarted drops it (the service stays `serving` while another instance answers, else `starting`);
one the agent gave up on fails the service; `stopped` ends it. A fact about a service that is no
longer wanted served changes nothing and answers `stop`.
"""

from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import InvalidInput
from api.models import Machine, Service
from api.runs.lifecycle import Actor, agent_actor
from api.services import lifecycle
from api.services.lifecycle import ACTIVE, S
from shared.enums import ReasonCode, ServiceEventType
from shared.protocol import ServiceEvent, ServiceEventReply


def _address(event: ServiceEvent) -> str:
    address = (event.address or "").rstrip("/")
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise InvalidInput(
            "a `serving` event names the instance's base URL, http://host:port",
            code="invalid_address",
            field="address",
        )
    return address


def _exit_detail(event: ServiceEvent) -> str:
    how = f"signal {event.signal}" if event.signal is not None else f"exit code {event.exit_code}"
    return f"{how}; {'restarting' if event.restarting else 'not restarted'}\n{event.error_tail}".strip()


async def report_event(
    session: AsyncSession, machine: Machine, service: Service, event: ServiceEvent
) -> ServiceEventReply:
    if event.instance >= service.instances:
        raise InvalidInput(
            f"the service has {service.instances} instances, numbered from 0",
            code="invalid_instance",
            field="instance",
        )
    actor = agent_actor(machine)
    key = str(event.instance)
    kind = event.type
    if kind is ServiceEventType.SERVING:
        address = _address(event)
        was: list[str] = []

        def serving(current: Service) -> dict[str, Any] | None:
            if S(current.status) not in ACTIVE:
                return None
            was[:] = [current.status]
            return {"status": S.SERVING.value, "endpoints": {**current.endpoints, key: address}}

        changed = await lifecycle.change(session, service, serving) is not None
        lifecycle.record_event(
            session, service, actor, "instance_serving", instance=event.instance, detail=address
        )
        if changed and was[0] != S.SERVING:
            await lifecycle.status_changed(session, service, actor, was[0], S.SERVING.value)
    elif kind is ServiceEventType.EXITED:
        await _exited(session, service, event, key, actor)
    elif kind is ServiceEventType.STOPPED:
        lifecycle.record_event(
            session,
            service,
            actor,
            "instance_stopped",
            instance=event.instance,
            reason_code=None if event.reason_code is None else event.reason_code.value,
        )
        # The agent stops a service's instances together: the first one stopped ends the service.
        reason = event.reason_code or ReasonCode(service.reason_code or ReasonCode.USER_STOP)
        await lifecycle.end(session, service, actor, S.STOPPED, reason, detail="the agent stopped it")
    else:
        detail = "" if event.pid is None else f"pid {event.pid}"
        lifecycle.record_event(
            session, service, actor, "instance_starting", instance=event.instance, detail=detail
        )
    status = S(service.status)
    return ServiceEventReply(service_id=service.id, status=status, stop=status not in ACTIVE)


async def _exited(
    session: AsyncSession, service: Service, event: ServiceEvent, key: str, actor: Actor
) -> None:
    lifecycle.record_event(
        session, service, actor, "instance_exited", instance=event.instance, detail=_exit_detail(event)
    )
    if not event.restarting:
        if service.status == S.STOPPING:  # it exited while being stopped: stopped
            reason = ReasonCode(service.reason_code or ReasonCode.USER_STOP)
            await lifecycle.end(session, service, actor, S.STOPPED, reason, detail="an instance exited")
            return
        # The agent gave up on the instance after its restart budget: the service failed.
        await lifecycle.end(
            session,
            service,
            actor,
            S.FAILED,
            event.reason_code or ReasonCode.EXIT_NONZERO,
            only_from=ACTIVE,
            detail=f"instance {event.instance} kept exiting",
            error_tail=event.error_tail,
        )
        return
    was: list[str] = []

    def restarting(current: Service) -> dict[str, Any] | None:
        status = S(current.status)
        if status not in ACTIVE and status != S.STOPPING:
            return None
        endpoints = {k: v for k, v in current.endpoints.items() if k != key}
        values: dict[str, Any] = {"endpoints": endpoints, "error_tail": event.error_tail}
        if status in ACTIVE:
            values["status"] = (S.SERVING if endpoints else S.STARTING).value
        was[:] = [status.value]
        return values

    values = await lifecycle.change(session, service, restarting)
    if values is not None and values.get("status", was[0]) != was[0]:
        detail = f"instance {event.instance} exited and is restarting"
        await lifecycle.status_changed(session, service, actor, was[0], values["status"], detail=detail)
