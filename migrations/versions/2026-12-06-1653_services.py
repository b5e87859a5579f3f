"""services: published package versions answering predict (issue 15), their audit trail, and the
command queue's service commands (agent_commands.service_id; run_id nullable, exactly one of the two)

Revision ID: 3e8a51c0d9f2
Revises: 5b1d0e7c3a42
Create Date: 2026-12-06 16:53:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "3e8a51c0d9f2"
down_revision: str | None = "5b1d0e7c3a42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("package_version_id", sa.Uuid(), nullable=False),
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.Column("max_run_seconds", sa.Integer(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason_code", sa.String(length=32), nullable=True),
        sa.Column("error_tail", sa.Text(), nullable=False),
        sa.Column("endpoints", JSON, nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("delete_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_services_machine_id_machines"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["package_version_id"],
            ["package_versions.id"],
            name=op.f("fk_services_package_version_id_package_versions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_services_project_id_projects"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_services")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_services_project_id_name")),
    )
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.create_index("ix_services_machine_id_status", ["machine_id", "status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_services_package_version_id"), ["package_version_id"], unique=False
        )

    op.create_table(
        "service_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("actor_name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("instance", sa.Integer(), nullable=True),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=True),
        sa.Column("reason_code", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["services.id"],
            name=op.f("fk_service_events_service_id_services"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_events")),
    )
    with op.batch_alter_table("service_events", schema=None) as batch_op:
        batch_op.create_index("ix_service_events_service_id_id", ["service_id", "id"], unique=False)

    with op.batch_alter_table("agent_commands", schema=None) as batch_op:
        batch_op.add_column(sa.Column("service_id", sa.Uuid(), nullable=True))
        batch_op.alter_column("run_id", existing_type=sa.Uuid(), nullable=True)
        batch_op.create_index(batch_op.f("ix_agent_commands_service_id"), ["service_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_agent_commands_service_id_services"),
            "services",
            ["service_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_check_constraint("run_xor_service", "(run_id IS NULL) <> (service_id IS NULL)")


def downgrade() -> None:
    # A service's commands go with the services: run_id is required again.
    op.execute("DELETE FROM agent_commands WHERE run_id IS NULL")
    with op.batch_alter_table("agent_commands", schema=None) as batch_op:
        batch_op.drop_constraint("run_xor_service", type_="check")
        batch_op.drop_constraint(batch_op.f("fk_agent_commands_service_id_services"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_agent_commands_service_id"))
        batch_op.alter_column("run_id", existing_type=sa.Uuid(), nullable=False)
        batch_op.drop_column("service_id")

    with op.batch_alter_table("service_events", schema=None) as batch_op:
        batch_op.drop_index("ix_service_events_service_id_id")
    op.drop_table("service_events")
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_services_package_version_id"))
        batch_op.drop_index("ix_services_machine_id_status")
    op.drop_table("services")
