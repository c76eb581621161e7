"""Triggers that log which customers were written, so a tick re-evaluates only those (``customer_change``).

Any writer is covered, not only this program: an import, a CRM sync or a hand-written UPDATE. On
PostgreSQL the triggers are per statement and read the statement's transition table, so a bulk
import costs one INSERT ... SELECT per statement rather than one per row.

On PostgreSQL the trigger functions also notify ``CHANNEL`` when they logged a customer, once per
writing transaction, so a running worker listening on it reacts without waiting for its next poll.
Migration 0007 adds that to the functions; this module writes them as revision 0002 does, and that
migration keeps its own copy of both versions.
"""

from __future__ import annotations

from sqlalchemy import Connection

#: The notification channel of the PostgreSQL trigger functions (see migration 0007).
CHANNEL = "automation_change"
#: (table, column holding the customer id) whose writes are logged.
LOGGED = (("customer", "id"), ("event", "customer_id"))
OPERATIONS = ("insert", "update", "delete")


def _sqlite() -> list[str]:
    statements = []
    for table, column in LOGGED:
        for op in OPERATIONS:
            row = "OLD" if op == "delete" else "NEW"
            statements.append(
                f"CREATE TRIGGER IF NOT EXISTS {table}_change_{op} AFTER {op.upper()} ON {table} "
                f"BEGIN INSERT INTO customer_change (customer_id) VALUES ({row}.{column}); END"
            )
    return statements


def _postgresql() -> list[str]:
    statements = []
    for table, column in LOGGED:
        function = f"automation_{table}_change"
        statements.append(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN "
            "IF TG_OP = 'DELETE' THEN "
            f"INSERT INTO customer_change (customer_id) SELECT DISTINCT {column} FROM old_rows; "
            "ELSE "
            f"INSERT INTO customer_change (customer_id) SELECT DISTINCT {column} FROM new_rows; "
            "END IF; "
            "RETURN NULL; "
            "END $$"
        )
        for op in OPERATIONS:
            # a trigger with a transition table takes one event only
            rows = "OLD TABLE AS old_rows" if op == "delete" else "NEW TABLE AS new_rows"
            statements.append(f"DROP TRIGGER IF EXISTS {table}_change_{op} ON {table}")
            statements.append(
                f"CREATE TRIGGER {table}_change_{op} AFTER {op.upper()} ON {table} "
                f"REFERENCING {rows} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
            )
    return statements


def create_triggers(conn: Connection) -> None:
    for statement in _postgresql() if conn.dialect.name == "postgresql" else _sqlite():
        conn.exec_driver_sql(statement)


def drop_triggers(conn: Connection) -> None:
    postgresql = conn.dialect.name == "postgresql"
    for table, _ in LOGGED:
        for op in OPERATIONS:
            on = f" ON {table}" if postgresql else ""
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_change_{op}{on}")
        if postgresql:
            conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS automation_{table}_change()")
