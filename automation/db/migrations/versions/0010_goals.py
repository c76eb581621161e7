"""goals: enrollment.cohort (treatment, holdout, control) fixed at entry, and the conversion table

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

from automation.db.types import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    with op.batch_alter_table("enrollment", schema=None) as batch:
        batch.add_column(sa.Column("cohort", _text(20), server_default="treatment", nullable=False))
    op.create_table(
        "conversion",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("playbook", _text(255), nullable=False),
        sa.Column("goal", _text(255), nullable=False),
        sa.Column("customer_id", _text(255), nullable=False),
        sa.Column("enrollment_id", sa.Integer(), nullable=True),
        sa.Column("cohort", _text(20), nullable=False),
        sa.Column("entered_at", UTCDateTime(), nullable=False),
        sa.Column("converted_at", UTCDateTime(), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("template", _text(255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("playbook", "goal", "customer_id", "entered_at", name="uq_conversion_entry"),
    )
    op.create_index("ix_conversion_time", "conversion", ["playbook", "converted_at"])


def downgrade() -> None:
    op.drop_index("ix_conversion_time", table_name="conversion")
    op.drop_table("conversion")
    with op.batch_alter_table("enrollment", schema=None) as batch:
        batch.drop_column("cohort")
