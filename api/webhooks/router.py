"""A project's webhooks, for orchestrators: subscriptions, their deliveries' log, redelivery.

A project's administrators (`projects.admin`) manage them: a subscription sends the project's news to
a URL of their choosing, signed with its secret (docs/clients.md).
"""

import uuid
from typing import Annotated

from fastapi import APIRouter, Response, status

from api.core.db import SessionDep
from api.core.deps import SettingsDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission
from api.projects.deps import InProject, in_project
from api.webhooks import service
from api.webhooks.schemas import DeliveryRead, WebhookCreate, WebhookCreated, WebhookRead

router = APIRouter(
    prefix="/projects/{project}/webhooks", tags=["webhooks"], responses=error_responses(401, 403, 404)
)

Admin = Annotated[InProject, in_project(Permission.PROJECTS_ADMIN)]


@router.post(
    "",
    operation_id="webhooks_create",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(422),
)
async def create_webhook(
    data: WebhookCreate, target: Admin, session: SessionDep, settings: SettingsDep
) -> WebhookCreated:
    """Subscribe `url` to `events`. The signing secret is answered here only (422
    `webhook_target_refused` for a target on loopback, a private network or a link-local address,
    unless an administrator allowed them)."""
    return await service.create_webhook(
        session, target.project, data, target.principal.id, settings.webhooks_allow_private
    )


@router.get("", operation_id="webhooks_list")
async def list_webhooks(target: Admin, session: SessionDep, page: PageDep) -> Page[WebhookRead]:
    return await service.list_webhooks(session, target.project, page)


@router.get("/{webhook_id}", operation_id="webhooks_get")
async def get_webhook(webhook_id: uuid.UUID, target: Admin, session: SessionDep) -> WebhookRead:
    hook = await service.get_webhook(session, target.project, webhook_id)
    return service.webhook_read(hook, target.project)


@router.delete("/{webhook_id}", operation_id="webhooks_delete", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(webhook_id: uuid.UUID, target: Admin, session: SessionDep) -> Response:
    await service.delete_webhook(session, target.project, webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{webhook_id}/deliveries", operation_id="webhooks_deliveries_list")
async def list_deliveries(
    webhook_id: uuid.UUID, target: Admin, session: SessionDep, page: PageDep
) -> Page[DeliveryRead]:
    """Each delivery with its attempts and the receiver's last answer."""
    hook = await service.get_webhook(session, target.project, webhook_id)
    return await service.list_deliveries(session, hook, page)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    operation_id="webhooks_deliveries_redeliver",
    status_code=status.HTTP_202_ACCEPTED,
)
async def redeliver(
    webhook_id: uuid.UUID, delivery_id: uuid.UUID, target: Admin, session: SessionDep
) -> DeliveryRead:
    """Send the delivery's message again, at once, under its `webhook-id`."""
    hook = await service.get_webhook(session, target.project, webhook_id)
    return await service.redeliver(session, hook, delivery_id)
