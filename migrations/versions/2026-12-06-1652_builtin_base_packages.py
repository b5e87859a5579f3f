"""packages: the built-in base packages (issue 18 item 5): a package with no project, `builtin`, and
the model types it is for

Revision ID: 5b1d0e7c3a42
Revises: 7c1f4e2a9b30
Create Date: 2026-12-06 16:52:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "5b1d0e7c3a42"
down_revision: str | None = "7c1f4e2a9b30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("packages", schema=None) as batch_op:
        batch_op.alter_column("project_id", existing_type=sa.Uuid(), nullable=True)
        batch_op.add_column(sa.Column("builtin", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(
            sa.Column(
                "model_types",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=False,
                server_default=sa.text("'[]'"),
            )
        )
        batch_op.create_index(
            "ix_packages_builtin_name",
            ["name"],
            unique=True,
            sqlite_where=sa.text("project_id IS NULL"),
            postgresql_where=sa.text("project_id IS NULL"),
        )


def downgrade() -> None:
    # The catalogue and the projects' copies of it go first: a package needs a project again. (Runs
    # that used those versions keep them: then the downgrade stops here, and nothing is lost.)
    packages = sa.table("packages", sa.column("id"), sa.column("builtin"))
    versions = sa.table("package_versions", sa.column("package_id"), sa.column("parent_id"))
    lines = sa.table("package_lines", sa.column("package_id"))
    builtin = sa.select(packages.c.id).where(packages.c.builtin.is_(True))
    op.execute(versions.update().where(versions.c.package_id.in_(builtin)).values(parent_id=None))
    op.execute(versions.delete().where(versions.c.package_id.in_(builtin)))
    op.execute(lines.delete().where(lines.c.package_id.in_(builtin)))
    op.execute(packages.delete().where(packages.c.builtin.is_(True)))
    with op.batch_alter_table("packages", schema=None) as batch_op:
        batch_op.drop_index("ix_packages_builtin_name")
        batch_op.drop_column("model_types")
        batch_op.drop_column("builtin")
        batch_op.alter_column("project_id", existing_type=sa.Uuid(), nullable=False)
