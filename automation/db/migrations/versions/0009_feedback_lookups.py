"""indexes for matching providers' reports: outbox.provider_id, customer.email, customer.phone

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_provider", "outbox", ["provider_id"])
    op.create_index("ix_customer_email", "customer", ["email"])
    op.create_index("ix_customer_phone", "customer", ["phone"])


def downgrade() -> None:
    op.drop_index("ix_customer_phone", table_name="customer")
    op.drop_index("ix_customer_email", table_name="customer")
    op.drop_index("ix_outbox_provider", table_name="outbox")
