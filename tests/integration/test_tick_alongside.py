"""A PostgreSQL tick writes state and history on a thread while its planner reads through a second
connection: the rows are those of a tick that does one after the other, and a failure of either side
fails the whole tick."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError

from automation import engine as engine_module
from automation.compiled import compile_playbook
from automation.db.tables import metadata
from automation.tick import run_tick
from tests.integration.test_sink_batches import LIFECYCLE, START, clear, walk

T = metadata.tables


@pytest.fixture
def overlaps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many transitions each tick planned alongside its state writes (one entry per such tick)."""
    seen: list[int] = []
    original = engine_module.Alongside.run

    def counting(self: engine_module.Alongside, planner: Any, sink: Any, found: list[Any]) -> set[str]:
        seen.append(len(found))
        return original(self, planner, sink, found)

    monkeypatch.setattr(engine_module.Alongside, "run", counting)
    return seen


def test_states_written_alongside_the_plan_are_the_states_written_after_it(
    engine: Engine, overlaps: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    alongside = walk(engine)
    ran = list(overlaps)
    clear(engine)
    overlaps.clear()
    monkeypatch.setattr("automation.tick.ALONGSIDE_UP_TO", -1)  # every tick one step after the other
    in_turn = walk(engine)
    assert not overlaps
    assert len(alongside["history"]) > 250 and len(alongside["outbox"]) > 200
    assert alongside == in_turn
    if engine.dialect.name == "postgresql":
        assert len(ran) == 3 and all(n > 0 for n in ran)  # the walk's three ticks all overlapped
    else:
        assert ran == []  # SQLite: one writer in this process, nothing to overlap


def test_a_first_tick_larger_than_the_limit_plans_in_turn(
    engine: Engine, overlaps: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("automation.tick.ALONGSIDE_UP_TO", 100)  # the walk's first tick changes 240
    walk(engine)
    if engine.dialect.name == "postgresql":
        assert len(overlaps) == 2 and max(overlaps) <= 100
    else:
        assert overlaps == []


@pytest.mark.postgres
def test_a_state_write_failing_on_its_thread_fails_the_tick_and_leaves_nothing(
    pg_engine: Engine, overlaps: list[int]
) -> None:
    walk(pg_engine)  # three ticks; then one more that moves customers into retention
    with pg_engine.begin() as conn:
        before = {name: conn.execute(select(func.count()).select_from(T[name])).scalar_one() for name in T}
        conn.execute(update(T["customer"]).where(T["customer"].c.orders_count < 2).values(orders_count=2))
        conn.exec_driver_sql(
            "ALTER TABLE stage_history ADD CONSTRAINT no_retention CHECK (to_stage <> 'retention') NOT VALID"
        )
    later = compile_playbook(LIFECYCLE, START + timedelta(days=3, minutes=15))
    overlaps.clear()
    with pytest.raises(IntegrityError, match="no_retention"):
        run_tick(pg_engine, later)
    assert len(overlaps) == 1  # it failed on the writing thread, while the planner planned
    with pg_engine.begin() as conn:
        after = {name: conn.execute(select(func.count()).select_from(T[name])).scalar_one() for name in T}
        changes = after.pop("customer_change") - before.pop("customer_change")
        assert changes > 0 and after == {k: v for k, v in before.items() if k != "customer_change"}
        conn.exec_driver_sql("ALTER TABLE stage_history DROP CONSTRAINT no_retention")
    result = run_tick(pg_engine, later)  # the same tick again, now that it can be written
    assert result.stats["transitions"] > 0 and result.stats["enrolled"] > 0
    with pg_engine.connect() as conn:
        entered = conn.execute(
            select(func.count()).select_from(T["stage_history"]).where(T["stage_history"].c.at == later.now)
        ).scalar_one()
    assert entered == result.stats["transitions"]


@pytest.mark.postgres
def test_a_planner_failure_waits_for_the_writes_and_rolls_everything_back(
    pg_engine: Engine, overlaps: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    walk(pg_engine)
    with pg_engine.begin() as conn:
        conn.execute(update(T["customer"]).where(T["customer"].c.orders_count < 2).values(orders_count=2))
        history = conn.execute(select(func.count()).select_from(T["stage_history"])).scalar_one()
    overlaps.clear()
    # a lookup through the reader fails while the states are being written on the other thread
    original = engine_module._Planner.enrollments

    def failing(self: Any, ids: list[str]) -> list[Any]:
        assert self.conn is not None
        self.conn.exec_driver_sql("SELECT * FROM no_such_table")
        return original(self, ids)

    monkeypatch.setattr(engine_module._Planner, "enrollments", failing)
    with pytest.raises(Exception, match="no_such_table"):
        run_tick(pg_engine, compile_playbook(LIFECYCLE, START + timedelta(days=3, minutes=15)))
    assert len(overlaps) == 1
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(T["stage_history"])).scalar_one() == history
