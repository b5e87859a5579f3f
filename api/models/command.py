"""Durable commands for agents: the rows an agent long-polls for, delivered at least once."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, JSONDocument, new_id, utcnow


class AgentCommand(Base):
    """A run's command (`start_run`, `stop_run`) or a service's (`start_service`, `stop_service`):
    exactly one of `run_id` and `service_id` is set."""

    __tablename__ = "agent_commands"
    __table_args__ = (
        Index("ix_agent_commands_machine_id_state", "machine_id", "state"),
        CheckConstraint("(run_id IS NULL) <> (service_id IS NULL)", name="run_xor_service"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    machine_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"))
    run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), index=True, default=None
    )
    service_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("services.id", ondelete="CASCADE"), index=True, default=None
    )
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    acknowledged_at: Mapped[datetime | None] = mapped_column(default=None)
    delivery_count: Mapped[int] = mapped_column(default=0)
