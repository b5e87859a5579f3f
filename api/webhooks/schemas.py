"""Webhook subscriptions and their deliveries, as clients send and read them."""

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator

from api.core.schemas import ReadModel, RequestModel
from api.webhooks.outbox import WebhookEvent
from api.webhooks.signing import secret_bytes
from api.webhooks.targets import TargetRefused, check_url

MAX_URL_LENGTH = 2048


def _target(url: str) -> str:
    try:
        check_url(url)
    except TargetRefused as refused:
        raise ValueError(str(refused)) from None
    return url


def _secret(secret: str) -> str:
    secret_bytes(secret)  # ValueError saying what is wrong
    return secret


class WebhookCreate(RequestModel):
    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH), AfterValidator(_target)] = Field(
        description="Where to POST each event: http:// or https://, a public address unless an "
        "administrator allows private ones (`TRAINYARD_WEBHOOKS_ALLOW_PRIVATE`). Redirects are not followed."
    )
    events: list[WebhookEvent] = Field(
        min_length=1, max_length=len(WebhookEvent), description="What to send."
    )
    secret: Annotated[str, Field(max_length=128), AfterValidator(_secret)] | None = Field(
        default=None,
        description="The Standard Webhooks signing secret (`whsec_` and base64 of 24 to 64 bytes); "
        "omitted: one is made and answered once.",
    )
    description: str = Field(default="", max_length=1000)

    @field_validator("events")
    @classmethod
    def _distinct(cls, events: list[WebhookEvent]) -> list[WebhookEvent]:
        if len(set(events)) != len(events):
            raise ValueError("each event is named once")
        return events


class WebhookRead(ReadModel):
    id: uuid.UUID
    project: str
    url: str
    events: list[WebhookEvent]
    description: str
    created_at: datetime


class WebhookCreated(WebhookRead):
    secret: str = Field(description="The signing secret: shown in this answer only.")


class DeliveryRead(ReadModel):
    id: uuid.UUID
    webhook_id: uuid.UUID
    message_id: str = Field(description="The `webhook-id` header: a redelivery sends the same.")
    event: WebhookEvent
    payload: dict[str, Any]
    state: str = Field(
        description="`pending` (to send at `next_attempt_at`), `succeeded` or `failed` (given up)."
    )
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    response_status: int | None = Field(description="The receiver's last HTTP status, if it answered.")
    response_body: str = Field(description="The first KiB of the receiver's last answer.")
    error: str = Field(description="Why the last attempt failed, when it did.")
    created_at: datetime
    delivered_at: datetime | None
