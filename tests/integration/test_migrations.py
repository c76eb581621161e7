from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from automation.db.connect import current_revision, head_revision, upgrade
from automation.db.tables import metadata


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []


def test_upgrade_is_idempotent_and_reaches_head(engine: Engine) -> None:
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert {"customer", "event", "outbox", "enrollment"} <= set(inspect(engine).get_table_names())


def test_customer_state_leaves_room_for_heap_only_updates_on_postgresql(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        options = conn.exec_driver_sql(
            "SELECT reloptions FROM pg_class WHERE relname = 'customer_state'"
        ).scalar_one()
    assert options == ["fillfactor=80"]
