from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, insert, inspect
from sqlalchemy.engine import make_url

from automation.db.connect import alembic_config, current_revision, head_revision, make_engine, upgrade
from automation.db.tables import CUSTOMER, EVENT, metadata
from automation.db.triggers import CHANNEL
from tests.conftest import fresh_postgres_database

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


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


def _trigger_functions(engine: Engine) -> dict[str, str]:
    """The source of the change-log trigger functions, by name."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT proname, prosrc FROM pg_proc "
            "WHERE proname IN ('automation_customer_change', 'automation_event_change')"
        )
        return {name: source for name, source in rows}


def _notifications_after_a_write(engine: Engine, url: str, customer_id: str) -> int:
    """How many notifications a listener receives for one transaction writing a customer and an event."""
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        with engine.begin() as conn:
            conn.execute(
                insert(CUSTOMER).values(id=customer_id, timezone="UTC", orders_count=0, attributes={})
            )
            conn.execute(
                insert(EVENT).values(customer_id=customer_id, name="opened", occurred_at=NOW, properties={})
            )
        return len(list(listener.notifies(timeout=0.3)))


def test_change_notifications_upgrade_and_downgrade_on_postgresql() -> None:
    """0007 makes the trigger functions notify once per transaction; its downgrade restores the functions
    of 0002 exactly, and upgrading again works."""
    with fresh_postgres_database(f"automation_migrate_{os.getpid()}") as url:
        engine = make_engine(url)
        try:
            config = alembic_config(engine)
            command.downgrade(config, "0006")
            before = _trigger_functions(engine)
            assert set(before) == {"automation_customer_change", "automation_event_change"}
            assert not any("pg_notify" in source for source in before.values())
            assert _notifications_after_a_write(engine, url, "c1") == 0

            command.upgrade(config, "0007")
            assert all(f"pg_notify('{CHANNEL}', '')" in s for s in _trigger_functions(engine).values())
            assert _notifications_after_a_write(engine, url, "c2") == 1

            command.downgrade(config, "0006")
            assert _trigger_functions(engine) == before
            assert _notifications_after_a_write(engine, url, "c3") == 0

            upgrade(engine)
            assert current_revision(engine) == head_revision()
            assert _notifications_after_a_write(engine, url, "c4") == 1
        finally:
            engine.dispose()


def test_sqlite_is_unchanged_by_the_change_notifications(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'automation.db'}")
    try:
        upgrade(engine, "0006")
        with engine.connect() as conn:
            sql = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
            before = list(conn.exec_driver_sql(sql))
        upgrade(engine)
        command.downgrade(alembic_config(engine), "0006")
        with engine.connect() as conn:
            assert list(conn.exec_driver_sql(sql)) == before
        upgrade(engine)
        with engine.connect() as conn:
            assert list(conn.exec_driver_sql(sql)) == before and len(before) == 6
    finally:
        engine.dispose()


def test_the_report_reads_stage_history_by_period_through_its_index(tmp_path: Path) -> None:
    """stage_history is keyed by (playbook, at): the report's period query finds its rows by the
    index, and a tick's rows, all at the tick's time, go to the end of it (migration 0011)."""
    from datetime import timedelta

    from sqlalchemy import event

    from automation.db.tables import HISTORY
    from automation.report.queries import funnel

    engine = make_engine(f"sqlite:///{tmp_path / 'history.db'}")
    upgrade(engine)
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("stage_history")}
    assert indexes == {"ix_stage_history_time": ["playbook", "at"]}
    sent: list[tuple[str, Any]] = []
    with engine.connect() as conn:
        rows = [{"playbook": "p", "customer_id": f"c{i}", "to_stage": "s", "at": NOW} for i in range(3)]
        conn.execute(insert(HISTORY), rows)
        event.listen(
            conn, "before_cursor_execute", lambda _c, _cur, sql, params, *_: sent.append((sql, params))
        )
        assert funnel(conn, "p", NOW, NOW + timedelta(days=1)) == [(None, "s", 3)]
        statement, parameters = sent[-1]
        plan = " ".join(
            str(row[3]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
        )
    assert "ix_stage_history_time" in plan, plan
