"""the dispatcher's pick index: per status, due messages in send order (priority first), only
messages still to send

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


PICKABLE = sa.text("status IN ('pending', 'retry', 'claimed')")


def upgrade() -> None:
    op.create_index(
        "ix_outbox_pick",
        "outbox",
        ["status", sa.text("priority DESC"), "due_at", "id"],
        unique=False,
        sqlite_where=PICKABLE,
        postgresql_where=PICKABLE,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_pick", table_name="outbox")
