"""Webhook subscriptions: make, list, read, delete; their deliveries' log and redelivery."""

import uuid

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import InvalidInput, NotFound
from api.core.notify import changed_after_commit
from api.core.schemas import Page, PageParams, paged
from api.models import Project, Webhook, WebhookDelivery
from api.models.base import utcnow
from api.webhooks.outbox import DELIVERIES_KEY, RETRY_FOR, WebhookEvent
from api.webhooks.schemas import DeliveryRead, WebhookCreate, WebhookCreated, WebhookRead
from api.webhooks.signing import new_secret
from api.webhooks.targets import TargetRefused, check_target


def webhook_read(hook: Webhook, project: Project) -> WebhookRead:
    return WebhookRead(
        id=hook.id,
        project=project.name,
        url=hook.url,
        events=[WebhookEvent(event) for event in hook.events],
        description=hook.description,
        created_at=hook.created_at,
    )


async def create_webhook(
    session: AsyncSession, project: Project, data: WebhookCreate, created_by: uuid.UUID, allow_private: bool
) -> WebhookCreated:
    try:
        await check_target(data.url, allow_private)
    except TargetRefused as refused:
        raise InvalidInput(str(refused), code="webhook_target_refused", field="url") from None
    secret = data.secret or new_secret()
    hook = Webhook(
        project_id=project.id,
        url=data.url,
        events=[event.value for event in data.events],
        secret=secret,
        description=data.description,
        created_by=created_by,
    )
    session.add(hook)
    await session.flush()
    return WebhookCreated(**webhook_read(hook, project).model_dump(), secret=secret)


async def get_webhook(session: AsyncSession, project: Project, webhook_id: uuid.UUID) -> Webhook:
    hook = await session.scalar(
        select(Webhook).where(Webhook.id == webhook_id, Webhook.project_id == project.id)
    )
    if hook is None:
        raise NotFound(f"no webhook {webhook_id} in project {project.name!r}", code="webhook_not_found")
    return hook


async def list_webhooks(session: AsyncSession, project: Project, page: PageParams) -> Page[WebhookRead]:
    statement = select(Webhook).where(Webhook.project_id == project.id)
    return await paged(session, statement, Webhook.id, page, lambda hook: webhook_read(hook, project))


async def delete_webhook(session: AsyncSession, project: Project, webhook_id: uuid.UUID) -> None:
    """The subscription and its deliveries' log; a delivery being sent as this commits is its last."""
    deleted = await session.execute(
        delete(Webhook).where(Webhook.id == webhook_id, Webhook.project_id == project.id),
        execution_options={"synchronize_session": False},
    )
    if deleted.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"no webhook {webhook_id} in project {project.name!r}", code="webhook_not_found")
    # SQLite enforces no foreign key cascade unless asked: the log goes explicitly.
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id))


async def list_deliveries(session: AsyncSession, hook: Webhook, page: PageParams) -> Page[DeliveryRead]:
    """The subscription's deliveries, in the order they were made."""
    statement = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
    return await paged(session, statement, WebhookDelivery.id, page, DeliveryRead.model_validate)


async def redeliver(session: AsyncSession, hook: Webhook, delivery_id: uuid.UUID) -> DeliveryRead:
    """Send the delivery's message again, soon, under the same `webhook-id`, retried for another day
    if need be. A delivery still pending is sent at once rather than at its next attempt."""
    now = utcnow()
    changed = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.webhook_id == hook.id)
        .values(state="pending", next_attempt_at=now, give_up_at=now + RETRY_FOR, leased_until=None)
        .returning(WebhookDelivery),
        execution_options={"synchronize_session": False, "populate_existing": True},
    )
    delivery = changed.scalar_one_or_none()
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id} of webhook {hook.id}", code="delivery_not_found")
    changed_after_commit(session, DELIVERIES_KEY)
    return DeliveryRead.model_validate(delivery)
