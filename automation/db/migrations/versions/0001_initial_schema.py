"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 22:21:27.898958
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import automation.db.types

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "customer",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("phone", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
        sa.Column("first_name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("last_name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("timezone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("locale", sqlmodel.sql.sqltypes.AutoString(length=35), nullable=True),
        sa.Column("owner_email", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("plan", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("clv", sa.Float(), nullable=True),
        sa.Column("orders_count", sa.Integer(), nullable=False),
        sa.Column("signed_up_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.Column("last_order_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.Column("last_seen_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.Column("birthday", sa.Date(), nullable=True),
        sa.Column("nps", sa.Integer(), nullable=True),
        sa.Column(
            "attributes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("updated_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "customer_state",
        sa.Column("playbook", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("segment", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("touch", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True),
        sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("stage_entered_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.Column("evaluated_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("playbook", "customer_id"),
    )
    op.create_table(
        "enrollment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("playbook", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("segment", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("touch", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("started_at", automation.db.types.UTCDateTime(), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("next_step_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("ended_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.Column("end_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("playbook", "customer_id", "stage", "started_at", name="uq_enrollment_entry"),
    )
    with op.batch_alter_table("enrollment", schema=None) as batch_op:
        batch_op.create_index("ix_enrollment_customer", ["playbook", "customer_id", "status"], unique=False)
        batch_op.create_index("ix_enrollment_due", ["status", "next_step_at"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("playbook", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("template", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("segment", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("touch", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True),
        sa.Column("step", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("due_at", automation.db.types.UTCDateTime(), nullable=False),
        sa.Column("expires_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("lease_until", automation.db.types.UTCDateTime(), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("provider_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("created_at", automation.db.types.UTCDateTime(), nullable=False),
        sa.Column("sent_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_claim", ["status", "due_at"], unique=False)
        batch_op.create_index("ix_outbox_customer", ["customer_id", "created_at"], unique=False)

    op.create_table(
        "run_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("playbook", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("started_at", automation.db.types.UTCDateTime(), nullable=False),
        sa.Column("finished_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.Column(
            "stats",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("run_log", schema=None) as batch_op:
        batch_op.create_index("ix_run_log_playbook", ["playbook", "started_at"], unique=False)

    op.create_table(
        "stage_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("playbook", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("from_stage", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("to_stage", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("segment", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("touch", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True),
        sa.Column("at", automation.db.types.UTCDateTime(), nullable=False),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("stage_history", schema=None) as batch_op:
        batch_op.create_index("ix_stage_history_customer", ["playbook", "customer_id", "at"], unique=False)

    op.create_table(
        "suppression",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created_at", automation.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("channel", "customer_id", name="uq_suppression_channel_customer"),
    )
    with op.batch_alter_table("suppression", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_suppression_customer_id"), ["customer_id"], unique=False)

    op.create_table(
        "task",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("playbook", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("assignee", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("body", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("due_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("created_at", automation.db.types.UTCDateTime(), nullable=False),
        sa.Column("done_at", automation.db.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.create_index("ix_task_open", ["customer_id", "status"], unique=False)

    op.create_table(
        "event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("occurred_at", automation.db.types.UTCDateTime(), nullable=False),
        sa.Column(
            "properties",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["customer_id"], ["customer.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_event_customer_name_time", ["customer_id", "name", "occurred_at"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_customer_name_time")

    op.drop_table("event")
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.drop_index("ix_task_open")

    op.drop_table("task")
    with op.batch_alter_table("suppression", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_suppression_customer_id"))

    op.drop_table("suppression")
    with op.batch_alter_table("stage_history", schema=None) as batch_op:
        batch_op.drop_index("ix_stage_history_customer")

    op.drop_table("stage_history")
    with op.batch_alter_table("run_log", schema=None) as batch_op:
        batch_op.drop_index("ix_run_log_playbook")

    op.drop_table("run_log")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_customer")
        batch_op.drop_index("ix_outbox_claim")

    op.drop_table("outbox")
    with op.batch_alter_table("enrollment", schema=None) as batch_op:
        batch_op.drop_index("ix_enrollment_due")
        batch_op.drop_index("ix_enrollment_customer")

    op.drop_table("enrollment")
    op.drop_table("customer_state")
    op.drop_table("customer")
