"""feedback: what happened after sending (provider webhooks, click and open tracking), each fact once by
``dedupe_key``; on the outbox row the provider's status, first delivery, opens, clicks, bounce, complaint

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

from automation.db.types import JSONType, UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TIMES = ("delivered_at", "opened_at", "clicked_at", "bounced_at", "complained_at")
COUNTS = ("opens", "machine_opens", "clicks")


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dedupe_key", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("detail", JSONType, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedupe_key"),
    )
    op.create_index("ix_feedback_outbox", "feedback", ["outbox_id", "kind"])
    op.create_index("ix_feedback_customer", "feedback", ["customer_id", "occurred_at"])
    with op.batch_alter_table("outbox", schema=None) as batch:
        status = sqlmodel.sql.sqltypes.AutoString(length=30)
        batch.add_column(sa.Column("provider_status", status, nullable=True))
        for name in TIMES:
            batch.add_column(sa.Column(name, UTCDateTime(), nullable=True))
        for name in COUNTS:
            batch.add_column(sa.Column(name, sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch:
        for name in ("provider_status", *TIMES, *COUNTS):
            batch.drop_column(name)
    op.drop_index("ix_feedback_customer", table_name="feedback")
    op.drop_index("ix_feedback_outbox", table_name="feedback")
    op.drop_table("feedback")
