"""indexes on the customer dates rules test against now: a tick finds who crossed a boundary;
ix_enrollment_customer dropped: uq_enrollment_entry's leading columns serve the same lookups

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: Customer columns a rule can test against ``now`` (days_since, days_until, anniversary).
DATE_COLUMNS = ("signed_up_at", "last_order_at", "last_seen_at", "birthday")


def upgrade() -> None:
    for column in DATE_COLUMNS:
        op.create_index(f"ix_customer_{column}", "customer", [column], unique=False)
    op.drop_index("ix_enrollment_customer", table_name="enrollment")


def downgrade() -> None:
    op.create_index(
        "ix_enrollment_customer", "enrollment", ["playbook", "customer_id", "status"], unique=False
    )
    for column in DATE_COLUMNS:
        op.drop_index(f"ix_customer_{column}", table_name="customer")
