"""Target machines. `process_count <= capacity` is a CHECK: the database, not a read, holds the limit."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, JSONDocument, new_id, utcnow


class Machine(Base):
    __tablename__ = "machines"
    __table_args__ = (
        CheckConstraint("capacity >= 1", name="capacity_positive"),
        CheckConstraint("process_count >= 0 AND process_count <= capacity", name="process_count_in_capacity"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    address: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    capacity: Mapped[int] = mapped_column(default=1)
    process_count: Mapped[int] = mapped_column(default=0)
    # NULL once the token is revoked: the machine is kept, its agent refused until a rotate-token.
    token_hmac: Mapped[str | None] = mapped_column(String(64), unique=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    agent_version: Mapped[str | None] = mapped_column(String(64), default=None)
    gpus: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument, default=list)
    # What the agent said it can do in its last hello (shared/direct_blobs.py's `direct_blobs`...).
    capabilities: Mapped[list[str]] = mapped_column(JSONDocument, default=list, server_default=text("'[]'"))
    last_run_started_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
