"""Online prediction services (docs/serving.md): a package version published on a target machine, and
the audit trail of their moves.

Every change of a `Service` row is one compare-and-set UPDATE on its `revision` (api/services/lifecycle.py):
two instances reporting at once each see the other's endpoint, and no move is decided on a stale read.
"""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, JSONDocument, new_id, utcnow


class Service(Base):
    __tablename__ = "services"
    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        Index("ix_services_machine_id_status", "machine_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(128))
    package_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("package_versions.id", ondelete="RESTRICT"), index=True
    )
    machine_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("machines.id", ondelete="RESTRICT"))
    max_run_seconds: Mapped[int]
    instances: Mapped[int] = mapped_column(default=1)
    status: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[str | None] = mapped_column(String(32), default=None)
    error_tail: Mapped[str] = mapped_column(Text, default="")
    # {instance number (as text): "http://host:port"} of the instances that answer now.
    endpoints: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    # The bearer secret the serving processes require, drawn anew at each start. Kept in clear, as a
    # webhook's signing secret is: the API must present it on every forwarded predict.
    secret: Mapped[str] = mapped_column(String(128), default="")
    revision: Mapped[int] = mapped_column(default=1)
    # DELETE of an active service stops it first; the row goes once it has stopped.
    delete_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class ServiceAuditEvent(Base):
    """A service's history: who or what moved it, when, from what, to what, and why."""

    __tablename__ = "service_events"
    __table_args__ = (Index("ix_service_events_service_id_id", "service_id", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    actor_name: Mapped[str] = mapped_column(String(128), default="")
    kind: Mapped[str] = mapped_column(String(32))
    instance: Mapped[int | None] = mapped_column(default=None)
    from_status: Mapped[str | None] = mapped_column(String(16), default=None)
    to_status: Mapped[str | None] = mapped_column(String(16), default=None)
    reason_code: Mapped[str | None] = mapped_column(String(32), default=None)
    detail: Mapped[str] = mapped_column(Text, default="")
