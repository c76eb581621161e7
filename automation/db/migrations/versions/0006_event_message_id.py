"""event.message_id: the sender's id of an event (Segment's ``messageId``), unique, so that a call sent
twice is stored once (``INSERT ... ON CONFLICT DO NOTHING``); null for imported events

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "event", sa.Column("message_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True)
    )
    op.create_index("uq_event_message_id", "event", ["message_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_event_message_id", table_name="event")
    op.drop_column("event", "message_id")
