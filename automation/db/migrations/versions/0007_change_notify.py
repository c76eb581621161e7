"""PostgreSQL: the change-log trigger functions also send ``NOTIFY automation_change`` when they logged a
customer, so a running worker that listens looks at the log as soon as the write commits instead of at
its next poll; SQLite is unchanged

The payload is empty. PostgreSQL delivers a notification of one channel and payload signalled several
times in one transaction only once, so a transaction writing any number of customers and events, in
any number of statements, wakes a listener once (tests/integration/test_migrations.py checks this).
A statement that wrote no row logs nothing and notifies nothing (``IF FOUND``).

The function bodies are written out here rather than taken from ``automation.db.triggers``, which
keeps those of revision 0002: ``downgrade`` restores them exactly.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: (table, column holding the customer id) whose trigger function logs the written customers.
LOGGED = (("customer", "id"), ("event", "customer_id"))
#: The channel ``automation.db.triggers.CHANNEL`` names and the worker listens on.
NOTIFY = "IF FOUND THEN PERFORM pg_notify('automation_change', ''); END IF; "


def _function(table: str, column: str, notify: bool) -> str:
    """The trigger function of ``table``: with ``notify`` as of this revision, else as of 0002."""
    return (
        f"CREATE OR REPLACE FUNCTION automation_{table}_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN "
        "IF TG_OP = 'DELETE' THEN "
        f"INSERT INTO customer_change (customer_id) SELECT DISTINCT {column} FROM old_rows; "
        "ELSE "
        f"INSERT INTO customer_change (customer_id) SELECT DISTINCT {column} FROM new_rows; "
        "END IF; "
        f"{NOTIFY if notify else ''}"
        "RETURN NULL; "
        "END $$"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in LOGGED:
            op.execute(_function(table, column, notify=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in LOGGED:
            op.execute(_function(table, column, notify=False))
