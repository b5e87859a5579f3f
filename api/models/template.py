"""Training templates: what to train, on what, with which parameters (DESIGN.md's field table)."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, JSONDocument, new_id, utcnow
from shared.protocol import DEFAULT_MAX_DURATION_SECONDS


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(128))
    model_type_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_types.id", ondelete="RESTRICT"), index=True
    )
    description: Mapped[str] = mapped_column(Text, default="")
    pipeline_type: Mapped[str] = mapped_column(String(32))
    base_package: Mapped[str | None] = mapped_column(String(128), default=None)
    base_version: Mapped[str | None] = mapped_column(String(32), default=None)
    dataset: Mapped[str | None] = mapped_column(String(128), default=None)
    dataset_version: Mapped[str | None] = mapped_column(String(16), default=None)
    dataset_path: Mapped[str | None] = mapped_column(String(1024), default=None)
    test_dataset: Mapped[str | None] = mapped_column(String(128), default=None)
    test_dataset_version: Mapped[str | None] = mapped_column(String(16), default=None)
    test_dataset_path: Mapped[str | None] = mapped_column(String(1024), default=None)
    augmentation: Mapped[str] = mapped_column(String(64), default="none")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    max_duration_seconds: Mapped[int] = mapped_column(default=DEFAULT_MAX_DURATION_SECONDS)
    save_training_data: Mapped[bool] = mapped_column(Boolean, default=False)
    gpus: Mapped[int] = mapped_column(default=0)
    processes: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
