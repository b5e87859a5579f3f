"""Webhook subscriptions, their outbox of deliveries, and process schedules.

A delivery row is written in the transaction of the change it tells of (a run's transition, a new
package version): if the change commits, so does its delivery; if the API dies right after, the
dispatcher finds it on return. The dispatcher claims a due delivery with a lease (`leased_until`, one
conditional UPDATE), so of several API processes one sends it; the rules live in api/webhooks/.

A process's schedule (`ProcessSchedule`) fires when `next_fire_at` is due: the firing is one
conditional UPDATE of `next_fire_at` from the value read, so one API process fires it once however
many look (api/schedules/).
"""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, JSONDocument, new_id, utcnow


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSONDocument)
    # The Standard Webhooks signing secret (`whsec_` and base64): kept to sign, never answered again.
    secret: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[uuid.UUID | None] = mapped_column(default=None)


class WebhookDelivery(Base):
    """One message to one subscription. `message_id` is the `webhook-id` header: a redelivery sends the
    same message again under the same id, so a receiver that saw it can tell."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    webhook_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    # pending: to send (at `next_attempt_at`); succeeded: a 2xx came back; failed: given up (24 h).
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    leased_until: Mapped[datetime | None] = mapped_column(default=None)
    give_up_at: Mapped[datetime]
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    response_status: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[str] = mapped_column(Text, default="")  # its first KiB, as text
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class ProcessSchedule(Base):
    """A process's recurring start (UiPath's recurring pipelines): a cron expression in a time zone."""

    __tablename__ = "process_schedules"

    process_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("processes.id", ondelete="CASCADE"), primary_key=True
    )
    cron: Mapped[str] = mapped_column(String(128))
    timezone: Mapped[str] = mapped_column(String(64))
    missed: Mapped[str] = mapped_column(String(8))  # skip | once
    next_fire_at: Mapped[datetime] = mapped_column(index=True)
    last_fired_at: Mapped[datetime | None] = mapped_column(default=None)
    last_outcome: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
