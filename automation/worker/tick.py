"""One tick of a playbook: the planner's plan written to the outbox, all in one transaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Connection, Engine, func, insert, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from automation.db.tables import RUN_LOG
from automation.outbox.sink import OutboxSink
from automation.plan import goals, incremental
from automation.plan.alongside import Alongside
from automation.plan.evaluate import materialize
from automation.plan.planner import plan
from automation.plan.records import CHANGES
from automation.playbook.models import FrequencyCap
from automation.rules.compiled import CompiledPlaybook
from automation.worker import gcpause as collector

log = logging.getLogger("automation.tick")
#: A PostgreSQL tick with at most this many candidates evaluates them on two connections at once, and
#: one with at most this many changed customers writes their state and history while it plans
#: (``plan.alongside.Alongside``); a larger one (a first tick) streams its plan from its table instead.
ALONGSIDE_UP_TO = 20_000


@dataclass(frozen=True)
class TickResult:
    playbook: str
    at: datetime
    seconds: float
    # transitions, enrolled, exited, actions, deferred, full (0/1), candidates, conversions (with goals)
    stats: dict[str, int]
    evaluated: str = ""  # whom: "everyone (first tick)", "10,015 customers"


@collector.paused()  # rows and plans are freed by reference counting; see automation.worker.gcpause
def run_tick(
    engine: Engine,
    compiled: CompiledPlaybook,
    global_cap: FrequencyCap | None = None,
    full: bool = False,
    full_every: timedelta = incremental.FULL_EVERY,
    alongside: bool = True,
    global_control: float = 0.0,
    immediate: bool = False,
) -> TickResult:
    """Evaluate ``compiled`` at its ``now`` and record state changes and actions; safe to repeat.

    State, history, enrollments, outbox rows and the run log are written in one transaction: a tick
    that fails leaves nothing behind, and a tick repeated at the same moment plans nothing new.
    Only customers whose data changed or whose time-dependent rules may have flipped since the last
    tick are evaluated (``automation.plan.incremental``); ``full`` evaluates everyone. On PostgreSQL a
    second, read-only connection evaluates half of the candidates, and the state, history and planned
    rows are written while the planner plans, reading through it (``alongside=False``: all of it one
    after the other, on one connection). ``immediate`` (SQLite): take the database's write lock when
    the tick begins instead of at its first write.
    """
    started = time.perf_counter()
    horizon = incremental.change_horizon(engine)
    with engine.begin() as conn:
        if immediate and conn.dialect.name == "sqlite":
            # take the write lock now (waiting for it), so no other writer's commit can refuse the
            # tick's first write later; see Daemon._sqlite_tick
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        scope = incremental.begin(conn, compiled, horizon, full, full_every)
        only = only_recurring = None
        if scope.window is not None:
            only, only_recurring = incremental.candidates(conn, compiled, scope.window)
        pb = compiled.loaded.playbook
        sink = OutboxSink(
            conn,
            compiled.name,
            compiled.now,
            quiet_hours=str(pb.quiet_hours) if pb.quiet_hours else None,
            fallback_timezone=pb.timezone,
            hold_during_tasks=pb.hold_during_tasks,
        )
        touch_of: dict[str, str] = {s.name: s.touch for s in pb.segments}
        with _second_connection(engine, alongside) as reader:
            candidates = incremental.count_candidates(conn) if only is not None else None
            materialize(
                conn,
                compiled,
                only=only,
                helper=reader if candidates is not None and candidates <= ALONGSIDE_UP_TO else None,
            )
            overlap = None
            if reader is not None and _changed(conn) <= ALONGSIDE_UP_TO:
                overlap = Alongside(reader, partial(sink.write_while, touch_of))
            plan(
                conn,
                compiled,
                sink,
                global_cap=global_cap,
                global_control=global_control,
                materialized=True,
                only=only,
                only_recurring=only_recurring,
                alongside=overlap,
            )
        sink.flush()
        if overlap is None:
            # last: pages written at the end of a tick are left for the database to write out between
            # ticks; written before the lookups, on the same connection, every later lookup of the tick
            # had to evict them itself, which made ticks measurably slower (docs/performance.md)
            sink.write_states(touch_of)
        conversions = goals.detect(conn, compiled, scope.window)  # after the tick's enrollments
        incremental.finish(conn, compiled, scope)
        seconds = time.perf_counter() - started
        stats = sink.stats()
        stats["full"] = int(scope.full)
        if candidates is not None:
            stats["candidates"] = candidates
        if compiled.goals:
            stats["conversions"] = conversions
        conn.execute(
            insert(RUN_LOG).values(
                playbook=compiled.name,
                kind="tick",
                started_at=compiled.now,
                finished_at=compiled.now,
                stats={**stats, "seconds": round(seconds, 3)},
            )
        )
    evaluated = f"everyone ({scope.reason})" if scope.full else f"{stats.get('candidates', 0):,} customers"
    return TickResult(compiled.name, compiled.now, seconds, stats, evaluated)


@contextmanager
def _second_connection(engine: Engine, wanted: bool) -> Iterator[Connection | None]:
    """PostgreSQL: a read-only connection beside the tick's, so that the database works on two cores
    (see ``materialize`` and ``plan.alongside.Alongside``); None on SQLite (one writer, in this process:
    nothing to overlap), when not ``wanted``, and when no second connection can be had (the tick then runs on
    one, as it would on SQLite)."""
    if not wanted or engine.dialect.name != "postgresql":
        yield None
        return
    try:
        second = engine.connect()
    except (OperationalError, PoolTimeout) as exc:  # max_connections, or the pool is spent: one will do
        reason = str(exc).splitlines()[0]
        log.warning("no second database connection for the tick (%s): it runs on one", reason)
        yield None
        return
    with second as reader:
        reader.exec_driver_sql("SET TRANSACTION READ ONLY")  # it only looks up; closed, it rolls back
        # it looks customers up by key, thousands at a time: in index order, on one core (the other one
        # is the tick's). Told of 5,000 ids, the planner would hash all of customer_state instead, and
        # start parallel workers that compete with the tick's own connection
        for setting in (
            "enable_hashjoin = off",
            "enable_mergejoin = off",
            "max_parallel_workers_per_gather = 0",
        ):
            reader.exec_driver_sql(f"SET LOCAL {setting}")
        yield reader


def _changed(conn: Connection) -> int:
    """How many customers the tick's table holds as changed."""
    count = select(func.count()).select_from(CHANGES).where(CHANGES.c.changed)
    return int(conn.execute(count).scalar_one())
