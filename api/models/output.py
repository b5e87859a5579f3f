"""What a run hands back: the trained package, artifacts, the data snapshot and the evaluation."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, JSONDocument, new_id, utcnow


class RunOutput(Base):
    __tablename__ = "run_outputs"
    __table_args__ = (UniqueConstraint("run_id", "kind", "path"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # package | artifact | snapshot | evaluation
    path: Mapped[str] = mapped_column(String(1024), default="")
    sha256: Mapped[str | None] = mapped_column(
        ForeignKey("blobs.sha256", ondelete="RESTRICT"), default=None, index=True
    )
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    document: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
