"""machines.capabilities: what the agent said it can do in its last hello (direct_blobs, issue 14)

Revision ID: 7c1f4e2a9b30
Revises: 913242ccd7d1
Create Date: 2026-12-06 16:49:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "7c1f4e2a9b30"
down_revision: str | None = "913242ccd7d1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "capabilities",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=False,
                # Every agent registered so far said nothing: it fetches through the API.
                server_default=sa.text("'[]'"),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_column("capabilities")
