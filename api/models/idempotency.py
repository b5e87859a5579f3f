"""`Idempotency-Key`s: a user's key, the request it was first sent with, and the answer it got.

The rules live in api/core/idempotency.py; docs/clients.md says what a client sees.
"""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, new_id


class IdempotencyKey(Base):
    """One key of one user. `pending` while the request that claimed it runs (committed so only by a
    route that commits early, an upload); `done` with the answer to replay, in the transaction of the
    change it answers. A failed or refused request leaves no row."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    # sha256 of the method, path, query and body: the same key with another request is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    # Which request holds a pending key: a crashed holder's claim is retaken under a new one, and the
    # old holder, if it still runs, finds its claim gone and rolls back.
    claim: Mapped[uuid.UUID]
    claimed_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    headers: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
