"""incremental ticks: the customer change log, its triggers, tick cursors, events by name and time

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import automation.db.types
from automation.db.triggers import create_triggers, drop_triggers

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer_change",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "tick_cursor",
        sa.Column("playbook", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("at", automation.db.types.UTCDateTime(), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("full_at", automation.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("playbook"),
    )
    op.create_index("ix_event_name_time", "event", ["name", "occurred_at"], unique=False)
    create_triggers(op.get_bind())


def downgrade() -> None:
    drop_triggers(op.get_bind())
    op.drop_index("ix_event_name_time", table_name="event")
    op.drop_table("tick_cursor")
    op.drop_table("customer_change")
