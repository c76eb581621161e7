"""customer_state keeps a fifth of each page free on PostgreSQL (fillfactor 80), so a tick's upsert of
a customer's state is a heap-only update on the same page, without a new entry in the primary key

Pages written before this revision fill as before until the table is rewritten
(``VACUUM FULL customer_state``, which locks it while it runs).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE customer_state SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE customer_state RESET (fillfactor)")
