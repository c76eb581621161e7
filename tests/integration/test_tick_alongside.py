"""A PostgreSQL tick works on two connections: the second evaluates half of the candidates, then the
planner reads through it while the tick's own connection writes state and history on a thread. The
rows are those of a tick that does all of it one after the other, and a failure on either side fails
the whole tick."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError

from automation.db.tables import metadata
from automation.outbox import sink as outbox
from automation.plan import alongside as alongside_module
from automation.plan import evaluate as evaluate_module
from automation.plan import planner as planner_module
from automation.plan import recurring as recurring_module
from automation.rules.compiled import compile_playbook
from automation.worker.tick import run_tick
from tests.integration.test_sink_batches import LIFECYCLE, START, clear, walk

T = metadata.tables


@pytest.fixture
def overlaps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many transitions each tick planned alongside its state writes (one entry per such tick)."""
    seen: list[int] = []
    original = alongside_module.Alongside.run

    def counting(self: alongside_module.Alongside, planner: Any, plan: Any) -> None:
        before = planner.sink.transitions
        try:
            original(self, planner, plan)
        finally:
            seen.append(planner.sink.transitions - before)

    monkeypatch.setattr(alongside_module.Alongside, "run", counting)
    return seen


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads the engine started (``tick-evaluation``, ``tick-writes``)."""
    names: list[str] = []
    original = alongside_module.Background.__init__

    def recording(self: Any, work: Any, name: str) -> None:
        names.append(name)
        original(self, work, name)

    monkeypatch.setattr(alongside_module.Background, "__init__", recording)
    return names


def test_a_tick_on_two_connections_writes_what_a_tick_on_one_writes(
    engine: Engine, overlaps: list[int], threads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    alongside = walk(engine)
    ran, started = list(overlaps), list(threads)
    clear(engine)
    overlaps.clear()
    threads.clear()
    monkeypatch.setattr("automation.worker.tick.ALONGSIDE_UP_TO", -1)  # every tick one step after the other
    in_turn = walk(engine)
    assert not overlaps and not threads
    assert len(alongside["history"]) > 250 and len(alongside["outbox"]) > 200
    assert alongside == in_turn
    if engine.dialect.name == "postgresql":
        assert len(ran) == 3 and all(n > 0 for n in ran)  # the walk's three ticks all overlapped
        # the first and the last (a day later: the daily full tick) evaluate everyone in one scan; the
        # incremental one in between splits its candidates over the two connections
        assert sorted(started) == ["tick-evaluation"] + ["tick-writes"] * 3
    else:
        assert ran == [] and started == []  # SQLite: one writer in this process, nothing to overlap


@pytest.mark.postgres
def test_rows_written_while_the_planner_plans_are_the_rows_written_after_it(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writing thread writes whatever the planner has planned so far, a row at a time here."""
    flushes: list[str] = []
    original = outbox.OutboxSink.flush

    def recording(self: outbox.OutboxSink) -> None:
        flushes.append(threading.current_thread().name)
        original(self)

    planned = planner_module.Planner.leave_and_enter

    def slowly(self: Any, batch: list[Any]) -> set[str]:
        time.sleep(0.02)  # a planner slower than the writes, as at scale: they catch up between batches
        return planned(self, batch)

    monkeypatch.setattr(outbox.OutboxSink, "flush", recording)
    monkeypatch.setattr(planner_module.Planner, "leave_and_enter", slowly)
    for module in (evaluate_module, planner_module, recurring_module):  # every batch the planner makes
        monkeypatch.setattr(module, "BATCH", 10)
    monkeypatch.setattr(outbox, "WRITE_ALONG_FROM", 1)
    monkeypatch.setattr("automation.worker.tick.ALONGSIDE_UP_TO", -1)
    in_turn = walk(pg_engine)
    assert "tick-writes" not in flushes
    clear(pg_engine)
    monkeypatch.setattr("automation.worker.tick.ALONGSIDE_UP_TO", 20_000)
    along = walk(pg_engine)
    assert flushes.count("tick-writes") >= 6  # several times in each of the three ticks
    assert along == in_turn


def test_a_tick_larger_than_the_limit_runs_on_one_connection(
    engine: Engine, overlaps: list[int], threads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("automation.worker.tick.ALONGSIDE_UP_TO", 100)  # the walk's first tick changes 240
    walk(engine)
    if engine.dialect.name == "postgresql":
        assert len(overlaps) == 2 and max(overlaps) <= 100
        assert threads.count("tick-evaluation") == 1  # the second tick's 80 candidates
    else:
        assert overlaps == [] and threads == []


@pytest.mark.postgres
def test_candidates_split_over_two_connections_are_evaluated_once_each(
    pg_engine: Engine, threads: list[str]
) -> None:
    """Awkward ids and contacts (quotes, backslashes, commas, NULLs) survive the second connection's
    rows being added to the tick's table; every candidate is evaluated, none twice."""
    ids = ['a"quote', "b\\slash", "c,comma", "d{brace}", "e plain", "f NULL", "g ünï"]
    with pg_engine.begin() as conn:
        conn.execute(
            T["customer"].insert(),
            [
                {
                    "id": customer_id,
                    "email": None if i % 2 else f'"{customer_id}"@example.com',
                    "timezone": "UTC",
                    "orders_count": 0,
                    "signed_up_at": START - timedelta(days=2),
                    "attributes": {},
                }
                for i, customer_id in enumerate(ids)
            ],
        )
    run_tick(pg_engine, compile_playbook(LIFECYCLE, START))
    with pg_engine.begin() as conn:
        conn.execute(update(T["customer"]).values(orders_count=2))  # all move to retention
    threads.clear()
    later = compile_playbook(LIFECYCLE, START + timedelta(minutes=15))
    result = run_tick(pg_engine, later)
    assert threads.count("tick-evaluation") == 1
    assert result.stats["candidates"] == len(ids) and result.stats["transitions"] == len(ids)
    o = T["outbox"].c
    with pg_engine.connect() as conn:
        moved = conn.execute(
            select(T["stage_history"].c.customer_id, T["stage_history"].c.to_stage).where(
                T["stage_history"].c.at == later.now
            )
        ).all()
        retention = dict(
            conn.execute(select(o.customer_id, o.last_error).where(o.stage == "retention")).all()
        )
    assert sorted(moved) == sorted((customer_id, "retention") for customer_id in ids)
    # the contacts came through: the email of the even ones (with its quotes), none for the odd ones
    assert set(retention) == set(ids)
    for i, customer_id in enumerate(ids):
        assert (retention[customer_id] == "no email address") == bool(i % 2), customer_id


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
    original = planner_module.Planner.enrollments

    def failing(self: Any, ids: list[str]) -> list[Any]:
        assert self.conn is not None
        self.conn.exec_driver_sql("SELECT * FROM no_such_table")
        return original(self, ids)

    monkeypatch.setattr(planner_module.Planner, "enrollments", failing)
    with pytest.raises(Exception, match="no_such_table"):
        run_tick(pg_engine, compile_playbook(LIFECYCLE, START + timedelta(days=3, minutes=15)))
    assert len(overlaps) == 1
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(T["stage_history"])).scalar_one() == history


@pytest.mark.postgres
def test_the_second_connection_only_reads_and_looks_up_by_key(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, str] = {}
    original = alongside_module.Alongside.run

    def showing(self: alongside_module.Alongside, planner: Any, plan: Any) -> None:
        for name in ("transaction_read_only", "enable_hashjoin", "enable_mergejoin"):
            seen[name] = self.reader.exec_driver_sql(f"SHOW {name}").scalar_one()
        seen["workers"] = self.reader.exec_driver_sql("SHOW max_parallel_workers_per_gather").scalar_one()
        original(self, planner, plan)

    monkeypatch.setattr(alongside_module.Alongside, "run", showing)
    walk(pg_engine)
    assert seen == {
        "transaction_read_only": "on",
        "enable_hashjoin": "off",
        "enable_mergejoin": "off",
        "workers": "0",
    }
    with pg_engine.connect() as conn:  # settings of the reader's transaction only, not of its pool
        assert conn.exec_driver_sql("SHOW enable_hashjoin").scalar_one() == "on"
        assert conn.exec_driver_sql("SHOW transaction_read_only").scalar_one() == "off"


@pytest.mark.postgres
def test_without_a_second_connection_the_tick_runs_on_one(
    pg_engine: Engine, pg_url: str, overlaps: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """A pool with room for the tick's own connection only: the tick does not wait for a second one."""
    from automation.db.connect import make_engine

    walk(pg_engine)  # the schema and a first state, through the fixture's engine
    single = make_engine(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        with pg_engine.begin() as conn:
            conn.execute(update(T["customer"]).where(T["customer"].c.orders_count < 2).values(orders_count=2))
        overlaps.clear()
        result = run_tick(single, compile_playbook(LIFECYCLE, START + timedelta(days=3, minutes=15)))
    finally:
        single.dispose()
    assert overlaps == [] and result.stats["transitions"] > 0
    assert "no second database connection for the tick" in caplog.text
