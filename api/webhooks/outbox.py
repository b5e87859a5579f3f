"""The outbox: a delivery row for each subscription an event concerns, added to the transaction of
the change itself, so that a change and the news of it commit together or not at all.

Called by the domains where their changes happen: a run's transition (api/runs/lifecycle.py), a
new package version (api/packages/service.py) and a service's move (api/services/lifecycle.py). The
dispatcher (`dispatch.py`) sends what commits; it is woken after the commit through the notifier, in
every API process on PostgreSQL.
"""

import uuid
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.notify import changed_after_commit
from api.models import Package, PackageVersion, Project, Run, Service, Webhook, WebhookDelivery
from api.models.base import new_id, utcnow
from shared.enums import RunStatus

# How long a delivery is retried before it is given up.
RETRY_FOR = timedelta(hours=24)
# The notifier key that wakes the dispatchers: not any row's id.
DELIVERIES_KEY = uuid.UUID("5e1f0000-0000-4000-8000-00000000a11e")


class WebhookEvent(StrEnum):
    RUN_STATUS_CHANGED = "run.status_changed"
    RUN_SUCCEEDED = "run.succeeded"
    RUN_FAILED = "run.failed"
    RUN_STOPPED = "run.stopped"
    PACKAGE_VERSION_CREATED = "package_version.created"
    SERVICE_STATUS_CHANGED = "service.status_changed"


_ENDED = {
    RunStatus.SUCCEEDED: WebhookEvent.RUN_SUCCEEDED,
    RunStatus.FAILED: WebhookEvent.RUN_FAILED,
    RunStatus.STOPPED: WebhookEvent.RUN_STOPPED,
}


async def _enqueue(
    session: AsyncSession, project_id: uuid.UUID, events: list[WebhookEvent], data: dict[str, Any]
) -> None:
    hooks = (await session.scalars(select(Webhook).where(Webhook.project_id == project_id))).all()
    now = utcnow()
    rows = []
    for event in events:
        message_id = f"msg_{new_id().hex}"
        payload = {"type": event.value, "timestamp": now.isoformat(), "data": data}
        rows += [
            WebhookDelivery(
                webhook_id=hook.id,
                message_id=message_id,
                event=event.value,
                payload=payload,
                next_attempt_at=now,
                give_up_at=now + RETRY_FOR,
            )
            for hook in hooks
            if event.value in hook.events
        ]
    if rows:
        session.add_all(rows)
        changed_after_commit(session, DELIVERIES_KEY)


async def run_status_changed(
    session: AsyncSession, run: Run, from_status: RunStatus | None, to_status: RunStatus, reason: str | None
) -> None:
    """`run.status_changed`, and `run.succeeded`, `run.failed` or `run.stopped` when the run ended."""
    project = await session.get(Project, run.project_id)
    assert project is not None
    data = {
        "project": project.name,
        "process_id": str(run.process_id),
        "run_id": str(run.id),
        "run_number": run.number,
        "from_status": None if from_status is None else from_status.value,
        "status": to_status.value,
        "reason_code": reason,
    }
    events = [WebhookEvent.RUN_STATUS_CHANGED]
    if to_status in _ENDED:
        events.append(_ENDED[to_status])
    await _enqueue(session, run.project_id, events, data)


async def package_version_created(session: AsyncSession, version: PackageVersion) -> None:
    package = await session.get(Package, version.package_id)
    assert package is not None
    if package.project_id is None:
        return  # the built-in catalogue (api/base_packages/): no project, nobody subscribed
    project = await session.get(Project, package.project_id)
    assert project is not None
    data = {
        "project": project.name,
        "package": package.name,
        "version": f"{version.major}.{version.minor}",
        "version_id": str(version.id),
        "origin": version.origin,
        "run_id": None if version.run_id is None else str(version.run_id),
    }
    await _enqueue(session, package.project_id, [WebhookEvent.PACKAGE_VERSION_CREATED], data)


async def service_status_changed(
    session: AsyncSession, service: Service, from_status: str | None, to_status: str, reason: str | None
) -> None:
    """`service.status_changed`: every move of a prediction service (docs/serving.md)."""
    project = await session.get_one(Project, service.project_id)
    data = {
        "project": project.name,
        "service": service.name,
        "service_id": str(service.id),
        "from_status": from_status,
        "status": to_status,
        "reason_code": reason,
    }
    await _enqueue(session, service.project_id, [WebhookEvent.SERVICE_STATUS_CHANGED], data)
