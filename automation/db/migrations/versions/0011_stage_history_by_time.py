"""stage_history indexed by (playbook, at), not by customer: a tick appends to it

The report reads transitions by playbook and period; nothing reads them by customer. Keyed by customer,
each tick's transitions went to random pages of the index, nearly every leaf page of it per tick.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_stage_history_customer", table_name="stage_history")
    op.create_index("ix_stage_history_time", "stage_history", ["playbook", "at"])


def downgrade() -> None:
    op.drop_index("ix_stage_history_time", table_name="stage_history")
    op.create_index("ix_stage_history_customer", "stage_history", ["playbook", "customer_id", "at"])
