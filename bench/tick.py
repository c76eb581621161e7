"""Benchmark: the daemon's steady-state tick against the preview's evaluation, and an idle worker's CPU.

Generates customers and events with bench/evaluate.py's generator (same rows, same ``NOW``), then

1. runs a first tick, ``run_tick(engine, compile_playbook(load_playbook(path), NOW))``: everyone is
   evaluated, enrolled and gets their first messages (timed and reported on its own);
2. steady state, ``--repeat K`` rounds: 1% of the customers (a different deterministic slice each round)
   get a new ``orders_count`` so that their stage changes, ``now`` moves 15 minutes on, and the tick
   at that ``now`` is timed next to ``evaluate(conn, compiled)`` at the same ``now`` (the preview's
   evaluation), alternating which runs first, then every message due by ``now`` is marked sent, as the
   daemon's dispatcher would have done by the next tick (``deliver``; ``--no-deliver`` leaves them
   all pending); on PostgreSQL each round begins with a ``CHECKPOINT``, as 15 minutes between ticks
   against the default 5-minute ``checkpoint_timeout`` have (``--no-checkpoint``: back to back),
   and before it every customer is read once, so that the pages the change step left old row
   versions on are pruned outside the clock, not by whichever of the two runs first (``prune``;
   ``--no-prune``: left to them);
3. one more round under cProfile, with every SQL statement's time recorded, to show where a tick
   spends its time (reported separately, not part of the ratio);
4. the tick's full scans alone next to the evaluation, with prototypes of cheaper forms;
5. idle CPU: ``automation run --poll P`` on a small SQLite project whose playbook ticks once an hour;
   after its first tick and drain, the CPU time it uses over ``--idle-seconds`` of idling is read
   from /proc (P = 1, the default; 0.1 to measure one poll; 3600 for no polling at all).

    .venv/bin/python bench/tick.py [--customers N] [--events M] [--backend sqlite|postgresql|both|none]
                                   [--repeat K] [--keep] [--reuse] [--no-deliver] [--no-checkpoint]
                                   [--no-prune] [--no-profile] [--no-scans]
                                   [--no-idle] [--idle-seconds S] [--idle-long S] [--output PATH]

Goals (the requirements): the steady-state tick at most 2x the preview's evaluation of the same
playbook, at 1,000,000 customers with 1% changing stage between ticks, on SQLite and PostgreSQL; an
idle daemon uses no measurable CPU between ticks.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from automation.db.tables import OUTBOX, RUN_LOG

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import evaluate as ev  # noqa: E402  (bench/evaluate.py: the generator, NOW, backends)

ROOT = ev.ROOT
RESULTS = ev.RESULTS
PLAYBOOK = ev.PLAYBOOK
NOW = ev.NOW
#: A tick's own databases, so a run of bench/evaluate.py at the same time is not disturbed.
ev.SQLITE_FILE = RESULTS / "tick.sqlite"
ev.PG_DATABASE = "automation_bench_tick"

GOAL_RATIO = 2.0
SLICES = 100  # 1% of the customers change stage between two ticks
STEP = timedelta(minutes=15)  # how far ``now`` moves between two ticks (the playbook's schedule)
#: Where the original orders_count of every changed customer is kept, so --reuse can restore it.
SAVED = "bench_tick_orders"
#: What the engine writes: emptied before a reused database is ticked again.
STATE_TABLES = (
    "customer_state",
    "stage_history",
    "enrollment",
    "outbox",
    "task",
    "run_log",
    "tick_cursor",
    "customer_change",
)

log = ev.log


# -- state ------------------------------------------------------------------------------------------
def _number(backend: str) -> str:
    """The integer n of a generated customer id 'c%08d'."""
    return "CAST(substr(id, 2) AS INTEGER)" if backend == "sqlite" else "substr(id, 2)::int"


def reset(engine: Any, backend: str) -> None:
    """A reused database back to its generated state: no engine state, original orders_count."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {SAVED} (id VARCHAR(255) PRIMARY KEY, orders_count INT)"
        )
        conn.exec_driver_sql(
            f"UPDATE customer SET orders_count = "
            f"(SELECT s.orders_count FROM {SAVED} s WHERE s.id = customer.id) "
            f"WHERE id IN (SELECT id FROM {SAVED})"
        )
        conn.exec_driver_sql(f"DELETE FROM {SAVED}")
        if backend == "sqlite":
            for table in STATE_TABLES:
                conn.exec_driver_sql(f"DELETE FROM {table}")
        else:
            conn.exec_driver_sql(f"TRUNCATE {', '.join(STATE_TABLES)} RESTART IDENTITY")
    settle(engine, backend, ("customer", *STATE_TABLES))


def last_tick(engine: Any) -> datetime | None:
    """When the last tick of a kept database ran (None: no state to keep)."""
    from sqlalchemy import func, select


    run_log = RUN_LOG
    with engine.connect() as conn:
        last = conn.execute(select(func.max(run_log.c.started_at)).where(run_log.c.kind == "tick")).scalar()
    return last.replace(tzinfo=last.tzinfo or UTC) if last is not None else None


def ticks_since_first(engine: Any) -> int:
    from sqlalchemy import func, select


    run_log = RUN_LOG
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).where(run_log.c.kind == "tick")).scalar_one()
    return max(int(count) - 1, 0) + 6  # and past the slices a run changes without ticking


def settle(engine: Any, backend: str, tables: tuple[str, ...]) -> float:
    """PostgreSQL: VACUUM ANALYZE what a tick wrote (autovacuum does the same within a minute or so).

    Then a CHECKPOINT: the gigabytes of WAL a first tick writes would otherwise go on starting
    checkpoints (one per ~540 MB with the default ``max_wal_size``) into the timed rounds.
    """
    start = time.perf_counter()
    if backend == "postgresql":
        with engine.connect() as conn:
            raw = conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in tables:
                raw.exec_driver_sql(f"VACUUM ANALYZE {table}")
            raw.exec_driver_sql("CHECKPOINT")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - start


def prune(engine: Any) -> float:
    """PostgreSQL: read every customer once, outside the clock, so that the pages the change step left
    old row versions on are pruned before the round instead of in it.

    The change step updates 10,000 customers; the old versions stay on their pages until a reader
    prunes them (``heap_page_prune_opt``, on any full page it reads), and after a CHECKPOINT pruning a
    page writes it whole into the WAL. Without this, whichever of the tick and the evaluation ran first
    paid that for the other: about 10,000 full-page images of ``customer`` (80 MB of WAL, 0.15-0.2 s),
    so the rounds with the tick first went over 2x and those with the evaluation first did not
    (``--no-prune`` measures it that way).
    """
    start = time.perf_counter()
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT count(*) FROM customer").scalar_one()
    return time.perf_counter() - start


def checkpoint(engine: Any) -> float:
    """PostgreSQL: a CHECKPOINT, what a daemon ticking every 15 minutes has between two ticks.

    After it, the first change to each page writes the whole page into the WAL (full_page_writes):
    a steady tick then writes about 300 MB of WAL instead of about 50 MB.
    """
    start = time.perf_counter()
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("CHECKPOINT")
    return time.perf_counter() - start


def wal_position(engine: Any, backend: str) -> str | None:
    """PostgreSQL: the WAL insert position (the whole server's WAL, other databases' included)."""
    if backend != "postgresql":
        return None
    with engine.connect() as conn:
        position: str = conn.exec_driver_sql("SELECT pg_current_wal_insert_lsn()::text").scalar_one()
    return position


def wal_mb(engine: Any, start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    with engine.connect() as conn:
        written = conn.exec_driver_sql(
            "SELECT pg_wal_lsn_diff(CAST(%(end)s AS pg_lsn), CAST(%(start)s AS pg_lsn))",
            {"start": start, "end": end},
        ).scalar_one()
    return round(float(written) / 2**20, 1)


_BLOCK = re.compile(r"rel \d+/\d+/(\d+) fork \w+ blk \d+ \(FPW\)")


def full_page_images(engine: Any, start: str | None, end: str | None) -> dict[str, int] | None:
    """PostgreSQL (``--wal-detail``): the full-page images written between two WAL positions, per
    relation, read with pg_walinspect (the whole server's WAL: run it on an otherwise quiet server)."""
    if start is None or end is None:
        return None
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        names = dict(conn.exec_driver_sql("SELECT relfilenode::text, relname FROM pg_class").all())
        rows = conn.exec_driver_sql(
            "SELECT block_ref FROM pg_get_wal_records_info("
            "CAST(%(start)s AS pg_lsn), LEAST(CAST(%(end)s AS pg_lsn), pg_current_wal_flush_lsn()))"
            " WHERE fpi_length > 0",
            {"start": start, "end": end},
        ).scalars()
        counts: Counter[str] = Counter()
        for block_ref in rows:
            for node in _BLOCK.findall(block_ref or ""):
                counts[names.get(node, node)] += 1
        conn.commit()
    return dict(counts.most_common())


def change_stage(engine: Any, backend: str, k: int) -> int:
    """Give slice ``k`` (1% of the customers) an orders_count that moves them to another stage.

    0 -> 1 (conversion), 1 -> 2 (retention), 2-9 -> 10 (loyalty), 10+ -> 1 (conversion). Customers
    with a recent referral_sent event stay in loyalty whatever their orders: ~5% of the slice.
    """
    modulo = "%" if backend == "sqlite" else "%%"  # psycopg reads a lone % as a placeholder
    where = f"{_number(backend)} {modulo} {SLICES} = {k % SLICES}"
    ignore = "OR IGNORE " if backend == "sqlite" else ""
    conflict = "" if backend == "sqlite" else " ON CONFLICT DO NOTHING"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT {ignore}INTO {SAVED} (id, orders_count) SELECT id, orders_count FROM customer "
            f"WHERE {where}{conflict}"
        )
        changed: int = conn.exec_driver_sql(
            "UPDATE customer SET orders_count = CASE WHEN orders_count = 0 THEN 1 "
            "WHEN orders_count = 1 THEN 2 WHEN orders_count < 10 THEN 10 ELSE 1 END "
            f"WHERE {where}"
        ).rowcount
    return changed


def deliver(engine: Any, now: datetime) -> int:
    """What the daemon's dispatcher does between two ticks: every message due by ``now`` is sent.

    Marked in one UPDATE (no channel runs); deferred messages stay pending until their time comes.
    Without it, a tick's cancellations and the dispatcher's pick index would carry every message
    ever planned, which no running daemon has.
    """
    from sqlalchemy import update


    outbox = OUTBOX
    with engine.begin() as conn:
        sent: int = conn.execute(
            update(outbox)
            .where(outbox.c.status == "pending", outbox.c.due_at <= now)
            .values(status="sent", sent_at=outbox.c.due_at, attempts=1)
        ).rowcount
    return sent


#: Prototypes of library changes (NOT the library), applied with --prototype.
PROTOTYPES = {
    "analyze_outbox": "PostgreSQL: the tick's OutboxSink runs ANALYZE outbox, enrollment inside the tick's "
    "transaction each time it has inserted more rows than at the previous ANALYZE (from 10,000 on). "
    "Within the first tick's transaction the planner has no statistics for the rows it wrote, so "
    "Planner._outbox_rows (customer_id IN 1,000 ids) becomes a (parallel) sequential scan of the "
    "growing outbox once per batch; ANALYZE counts the transaction's own rows.",
}


def analyze_outbox_sink() -> type:
    """Prototype (NOT the library): ``OutboxSink`` that refreshes the statistics of what it writes."""
    from automation.outbox.sink import OutboxSink

    class AnalyzingSink(OutboxSink):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._inserted = 0
            self._analyzed_at = 10_000 // 2
            self.analyzes = 0

        def flush(self) -> None:
            self._inserted += len(self._actions)
            super().flush()
            if self.conn.dialect.name == "postgresql" and self._inserted >= 2 * self._analyzed_at:
                self.conn.exec_driver_sql("ANALYZE outbox, enrollment")
                self._analyzed_at = self._inserted
                self.analyzes += 1

    return AnalyzingSink


# -- timing -----------------------------------------------------------------------------------------
def compiled_at(now: datetime) -> Any:
    from automation.playbook.models import load_playbook
    from automation.rules.compiled import compile_playbook

    return compile_playbook(load_playbook(PLAYBOOK), now)


def time_tick(engine: Any, compiled: Any) -> tuple[float, dict[str, int]]:
    from automation.worker.tick import run_tick

    start = time.perf_counter()
    result = run_tick(engine, compiled)
    return time.perf_counter() - start, dict(result.stats)


def time_tick_wal(
    engine: Any, backend: str, compiled: Any, detail: bool = False
) -> tuple[float, dict[str, int], float | None, dict[str, int] | None]:
    """A timed tick, the MB of WAL written meanwhile (PostgreSQL; None on SQLite) and, with ``detail``,
    its full-page images per relation."""
    before = wal_position(engine, backend)
    seconds, stats = time_tick(engine, compiled)
    after = wal_position(engine, backend)
    images = full_page_images(engine, before, after) if detail else None
    return seconds, stats, wal_mb(engine, before, after), images


def time_evaluate(engine: Any, compiled: Any) -> tuple[float, int]:
    from automation.plan.evaluate import evaluate

    start = time.perf_counter()
    with engine.connect() as conn:
        counts = evaluate(conn, compiled)
    return time.perf_counter() - start, counts.total


def summary(times: list[float]) -> dict[str, Any]:
    return {
        "min_s": round(min(times), 4),
        "median_s": round(statistics.median(times), 4),
        "runs_s": [round(t, 4) for t in times],
    }


# -- where the time goes ----------------------------------------------------------------------------
#: (label, pattern) for every statement a tick sends; the first that matches names it.
STATEMENT_KINDS = (
    ("incremental: candidates (INSERT INTO tick_candidates ... SELECT)", r"^INSERT INTO tick_candidates"),
    ("incremental: change log position, cursor, prune", r"customer_change|tick_cursor"),
    ("transitions: materialize (INSERT INTO tick_changes ... SELECT)", r"^INSERT INTO tick_changes"),
    ("transitions: the second connection's half of the candidates", r"^SELECT evaluated\.customer_id"),
    ("transitions: temp table DDL", r"^(CREATE TEMPORARY TABLE|DROP TABLE|DELETE FROM tick_changes|PRAGMA)"),
    ("write: customer_state upsert", r"^INSERT INTO customer_state"),
    ("write: stage_history insert", r"^INSERT INTO stage_history"),
    ("write: enrollment insert", r"^INSERT INTO enrollment"),
    ("write: enrollment update", r"^UPDATE enrollment"),
    ("write: outbox cancel on exit", r"^UPDATE outbox"),
    ("write: outbox insert", r"^INSERT INTO outbox"),
    ("write: run_log", r"^INSERT INTO run_log"),
    ("transitions: read tick_changes", r"FROM tick_changes"),
    ("plan: due enrollments", r"enrollment\.next_step_at <="),
    ("plan: enrollments of leavers and entrants (exits, re-entry)", r"FROM enrollment"),
    ("plan: recurring scan (birthday_reward)", r"^SELECT customer\.id, customer\.timezone, CASE"),
    ("plan: facts (customers + guards)", r"FROM customer"),
    ("plan: facts (suppression)", r"FROM suppression"),
    ("plan: facts (open tasks)", r"FROM task"),
    ("plan: facts (the batch's outbox rows) / recurring keys", r"FROM outbox"),
)


class StatementClock:
    """Time spent in every cursor execute of ``engine``, by kind of statement.

    On SQLite a SELECT's execute only steps to its first row: the rest of the scan happens while the
    rows are fetched, which this does not see (the cProfile figures do).
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.seconds: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self.rows: dict[str, int] = defaultdict(int)
        self.slowest: list[tuple[float, str, Any]] = []

    def __enter__(self) -> StatementClock:
        from sqlalchemy import event

        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *_: Any) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, *_: Any) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def _after(self, conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool) -> None:
        elapsed = time.perf_counter() - conn.info["bench_started"].pop()
        kind = next((label for label, pattern in STATEMENT_KINDS if re.search(pattern, statement)), "other")
        self.seconds[kind] += elapsed
        self.count[kind] += 1
        self.rows[kind] += len(parameters) if many and parameters is not None else 1
        self.slowest.append((elapsed, statement, parameters if not many else None))
        self.slowest.sort(key=lambda item: -item[0])
        del self.slowest[5:]

    def report(self) -> list[dict[str, Any]]:
        return [
            {
                "statement": kind,
                "seconds": round(self.seconds[kind], 4),
                "executes": self.count[kind],
                "rows_or_params": self.rows[kind],
            }
            for kind in sorted(self.seconds, key=lambda k: -self.seconds[k])
        ]


#: Functions whose cumulative time (cProfile) tells where a tick goes.
PROFILED = (
    ("automation/worker/tick.py", "run_tick"),
    ("automation/plan/planner.py", "plan"),
    ("automation/plan/evaluate.py", "transitions"),
    ("automation/plan/planner.py", "leave_and_enter"),
    ("automation/plan/planner.py", "exit_enrollments"),
    ("automation/plan/planner.py", "enter"),
    ("automation/plan/planner.py", "reentry_blocked"),
    ("automation/plan/planner.py", "run"),
    ("automation/plan/alongside.py", "run"),
    ("automation/plan/guards.py", "facts"),
    ("automation/plan/planner.py", "advance_due"),
    ("automation/plan/recurring.py", "recurring"),
    ("automation/outbox/sink.py", "transition"),
    ("automation/outbox/sink.py", "enrollment"),
    ("automation/outbox/sink.py", "action"),
    ("automation/outbox/sink.py", "flush"),
)


def profile_tick(engine: Any, backend: str, compiled: Any) -> dict[str, Any]:
    """One tick under cProfile and the statement clock: cumulative time per planner step, per SQL kind."""
    from automation.worker.tick import run_tick

    profiler = cProfile.Profile()
    with StatementClock(engine) as clock:
        start = time.perf_counter()
        profiler.enable()
        result = run_tick(engine, compiled)
        profiler.disable()
        elapsed = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    steps = []
    for path, name in PROFILED:
        for (filename, _line, function), (_cc, calls, _tt, cumtime, _callers) in raw.items():
            if function == name and filename.endswith(path):
                steps.append(
                    {"function": f"{path}:{name}", "calls": calls, "cumulative_s": round(cumtime, 4)}
                )
    top = sorted(raw.items(), key=lambda item: -item[1][2])[:15]
    own = [
        {
            "function": f"{Path(filename).name}:{line}:{function}",
            "calls": calls,
            "own_s": round(tottime, 4),
            "cumulative_s": round(cumtime, 4),
        }
        for (filename, line, function), (_cc, calls, tottime, cumtime, _callers) in top
    ]
    sql_seconds = sum(clock.seconds.values())
    plans = explain_slowest(engine, backend, clock.slowest)
    return {
        "seconds_under_profile": round(elapsed, 4),
        "stats": dict(result.stats),
        "steps": steps,
        "top_own_time": own,
        "sql": clock.report(),
        "sql_execute_total_s": round(sql_seconds, 4),
        "slowest_statements": plans,
    }


def explain_slowest(engine: Any, backend: str, slowest: list[tuple[float, str, Any]]) -> list[dict[str, Any]]:
    """The slowest statements of the profiled tick, with their query plans (SELECT part only)."""
    out = []
    prefix = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN "
    for elapsed, statement, parameters in slowest:
        item: dict[str, Any] = {"seconds": round(elapsed, 4), "statement": statement[:4000]}
        select_part = re.sub(r"^INSERT INTO \w+ \([^)]*\)\s*", "", statement)
        if select_part.lstrip().upper().startswith("SELECT") and parameters is not None:
            try:
                with engine.connect() as conn:
                    rows = conn.exec_driver_sql(prefix + select_part, parameters).fetchall()
                item["plan"] = [
                    f"{row[0]}<-{row[1]} {row[3]}" if backend == "sqlite" else str(row[0]) for row in rows
                ]
            except Exception as exc:  # a statement on the tick's temporary table, for instance
                item["plan_error"] = str(exc).splitlines()[0]
        out.append(item)
    return out


# -- one backend ------------------------------------------------------------------------------------
def benchmark(b: Any, args: argparse.Namespace, reused: bool) -> dict[str, Any]:
    from automation.db.connect import make_engine, upgrade

    engine = make_engine(b.url)
    if reused:  # a database kept by an earlier version: bring its schema up to date
        started = time.perf_counter()
        upgrade(engine)
        log(f"{b.name}: schema upgraded in {time.perf_counter() - started:.1f} s")
    out: dict[str, Any] = {}
    last = last_tick(engine) if reused and args.keep_state else None
    if last is not None:
        log(f"{b.name}: keeping the engine's state (last tick at {last:%Y-%m-%d %H:%M}); no first tick")
    elif reused:
        log(f"{b.name}: resetting the engine's state in the reused database")
        reset(engine, b.name)
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE TABLE IF NOT EXISTS {SAVED} (id VARCHAR(255) PRIMARY KEY, orders_count INT)"
            )

    # the first tick: nobody has a state yet, so everyone is a transition and gets enrolled
    compiled = compiled_at(last or NOW)
    seconds, total = time_evaluate(engine, compiled)  # warms the caches like a preview would
    log(f"{b.name}: evaluation at {compiled.now:%H:%M} (warm-up): {seconds:.2f} s, {total:,} customers")
    out["first_tick"] = None
    if last is None:
        log(f"{b.name}: first tick (enrolls everyone)")
        seconds, stats = time_tick(engine, compiled)
        out["first_tick"] = {"seconds": round(seconds, 3), "stats": stats}
        log(f"{b.name}: first tick: {seconds:.1f} s, {stats}")
        if args.deliver:
            log(f"{b.name}: delivered {deliver(engine, compiled.now):,} due messages (dispatcher stand-in)")
        settled = settle(engine, b.name, STATE_TABLES)
        out["settle_s"] = round(settled, 3)
        log(f"{b.name}: {'VACUUM ANALYZE' if b.name == 'postgresql' else 'WAL checkpoint'}: {settled:.1f} s")

    # steady state: 1% changes stage between ticks, 15 minutes apart; a kept state goes on with the
    # slices no earlier tick changed, so customers do not bounce back into a stage within its cooldown
    offset = ticks_since_first(engine) if last is not None else 0
    ticks: list[float] = []
    evaluations: list[float] = []
    rounds = []
    now = compiled.now
    for k in range(args.repeat):
        changed = change_stage(engine, b.name, offset + k)
        now += STEP
        compiled = compiled_at(now)
        prune_s = prune(engine) if b.name == "postgresql" and args.prune else None
        checkpoint_s = checkpoint(engine) if b.name == "postgresql" and args.checkpoint else None
        tick_first = k % 2 == 1
        if tick_first:
            tick_s, stats, tick_wal, images = time_tick_wal(engine, b.name, compiled, args.wal_detail)
        eval_s, total = time_evaluate(engine, compiled)
        if not tick_first:
            tick_s, stats, tick_wal, images = time_tick_wal(engine, b.name, compiled, args.wal_detail)
        assert total == args.customers, f"{b.name}: evaluation counted {total:,} customers"
        if args.deliver:
            deliver(engine, now)
        ticks.append(tick_s)
        evaluations.append(eval_s)
        rounds.append(
            {
                "round": k + 1,
                "now": now.isoformat(),
                "customers_changed": changed,
                "order": "tick, evaluate" if tick_first else "evaluate, tick",
                "tick_s": round(tick_s, 4),
                "evaluate_s": round(eval_s, 4),
                "ratio": round(tick_s / eval_s, 3),
                "pruned_before_s": None if prune_s is None else round(prune_s, 3),
                "checkpoint_before_s": None if checkpoint_s is None else round(checkpoint_s, 3),
                "tick_wal_mb": tick_wal,
                "tick_full_page_images": images,
                "tick_stats": stats,
            }
        )
        log(
            f"{b.name}: round {k + 1}/{args.repeat} now={now:%H:%M} changed {changed:,}: "
            f"tick {tick_s:.3f} s ({stats.get('candidates', 'all'):,} evaluated, "
            f"{stats['transitions']:,} transitions, {stats['enrolled']:,} enrolled, "
            f"{stats['exited']:,} exited, {stats['actions']:,} actions"
            f"{'' if tick_wal is None else f', {tick_wal:.0f} MB of WAL'}), evaluate {eval_s:.3f} s, "
            f"ratio {tick_s / eval_s:.2f}{'' if checkpoint_s is None else ' (after a CHECKPOINT)'}"
        )
    out["rounds"] = rounds
    out["tick"] = summary(ticks)
    out["evaluate"] = summary(evaluations)
    out["ratio_median"] = round(out["tick"]["median_s"] / out["evaluate"]["median_s"], 3)
    out["ratio_min"] = round(out["tick"]["min_s"] / out["evaluate"]["min_s"], 3)
    transitions = [r["tick_stats"]["transitions"] for r in rounds]
    out["transitions"] = {
        "per_tick": transitions,
        "min": min(transitions),
        "max": max(transitions),
        "percent_of_customers_median": round(100 * statistics.median(transitions) / args.customers, 3),
        "customers_changed_per_tick": [r["customers_changed"] for r in rounds],
    }
    share = statistics.median(transitions) / args.customers
    out["transitions"]["about_one_percent"] = 0.005 <= share <= 0.015
    if not out["transitions"]["about_one_percent"]:
        log(f"{b.name}: WARNING: {100 * share:.2f}% of the customers changed per tick, not about 1%")

    # one more round, profiled: where a steady-state tick spends its time
    if args.profile:
        k = args.repeat
        changed = change_stage(engine, b.name, offset + k)
        now += STEP
        compiled = compiled_at(now)
        log(f"{b.name}: profiled round (changed {changed:,})")
        out["profile"] = {"customers_changed": changed, **profile_tick(engine, b.name, compiled)}
        eval_s, _ = time_evaluate(engine, compiled)
        out["profile"]["evaluate_s"] = round(eval_s, 4)
        for line in breakdown_lines(out["profile"]):
            log(f"{b.name}: {line}")

    # SQLite: how much of a tick is the WAL checkpoint its commit triggers (prototype: checkpoint after)
    if args.profile and b.name == "sqlite":
        changed = change_stage(engine, b.name, offset + args.repeat + 1)
        now += STEP
        out["checkpoint"] = checkpoint_outside(b.url, compiled_at(now), changed)
        c = out["checkpoint"]
        log(
            f"{b.name}: tick with wal_autocheckpoint=0: {c['tick_s']:.3f} s ({c['transitions']:,} "
            f"transitions), {c['wal_mb']:.0f} MB of WAL ({c['wal_pages']:,} pages), then "
            f"wal_checkpoint(PASSIVE) {c['checkpoint_s']:.3f} s"
        )

    # the two full scans of a tick, alone, next to the evaluation, with prototypes of cheaper forms
    if args.scans:
        k = args.repeat + 2
        changed = change_stage(engine, b.name, offset + k)  # 1% waiting for the next tick, which never runs
        now += STEP
        log(f"{b.name}: scans of a tick at now={now:%H:%M} ({changed:,} customers changed)")
        out["scans"] = scan_prototypes(engine, b.name, compiled_at(now), args.scan_repeat)
        for name, t in out["scans"]["timings"].items():
            log(
                f"{b.name}:   {name:<34} min {t['min_s']:.3f} s median {t['median_s']:.3f} s "
                f"({t['vs_evaluate']:.2f}x evaluation, {t['rows']:,} rows)"
            )
    engine.dispose()
    return out


def checkpoint_outside(url: str, compiled: Any, changed: int) -> dict[str, Any]:
    """Prototype (SQLite): one tick with automatic checkpoints off, then the checkpoint on its own.

    In WAL mode a commit that leaves the WAL above ``wal_autocheckpoint`` pages (1,000) copies it
    back into the database file before returning, so a tick pays for the checkpoint of every page it
    wrote. This measures that part: the tick with ``PRAGMA wal_autocheckpoint=0``, the size of the WAL
    it left, then ``PRAGMA wal_checkpoint(PASSIVE)`` (what the worker could run after the tick).
    """
    from sqlalchemy import event

    from automation.db.connect import make_engine

    engine = make_engine(url)

    def no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

    event.listen(engine, "connect", no_autocheckpoint)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
    seconds, stats = time_tick(engine, compiled)
    wal = Path(url.removeprefix("sqlite:///") + "-wal")
    size = wal.stat().st_size if wal.exists() else 0
    with engine.connect() as conn:
        start = time.perf_counter()
        conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        checkpoint = time.perf_counter() - start
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return {
        "customers_changed": changed,
        "tick_s": round(seconds, 4),
        "transitions": stats["transitions"],
        "wal_mb": round(size / 2**20, 1),
        "wal_pages": size // (page_size + 24),
        "checkpoint_s": round(checkpoint, 4),
    }


#: What each scan measured by ``scan_prototypes`` is.
SCANS = {
    "evaluate": "evaluate(conn, compiled): the preview's evaluation (the baseline)",
    "transitions": "the library's materialize() then transitions(materialized=True): changed customers "
    "into a temporary table, then read back in id order (what a tick runs first)",
    "transitions_covering_state": "the same with a prototype index customer_state (playbook, "
    "customer_id, segment, stage), so the state lookup needs no table access",
    "recurring": "the library's recurring scan (Planner.recurring): customers matching "
    "birthday_reward now, ORDER BY id",
    "recurring_unordered": "prototype: the same query without ORDER BY (sorted in Python instead)",
    "one_scan": "prototype: transitions and the recurring rule in one scan (changed OR matching), "
    "into a temporary table, read back in id order",
    "transitions_ctas": "prototype: the library's transitions query materialized with CREATE TEMPORARY "
    "TABLE ... AS SELECT instead of INSERT ... SELECT (PostgreSQL may then plan it in parallel, as it "
    "does the evaluation), read back in id order",
    "transitions_ctas_parallel": "PostgreSQL prototype: transitions_ctas under SET LOCAL "
    "parallel_tuple_cost = 0.001 (the planner cannot tell that only ~1% of the rows come out, so by "
    "default it does not run the customer x customer_state join in parallel)",
}


def scan_prototypes(engine: Any, backend: str, compiled: Any, rounds: int) -> dict[str, Any]:
    """Time the full scans a tick makes, alone, and prototypes of cheaper forms (rolled back)."""
    from sqlalchemy import Column, MetaData, String, Table, insert, or_, select

    from automation.db.tables import CUSTOMER
    from automation.plan.evaluate import evaluate, evaluated, materialize, transitions

    pb = compiled.loaded.playbook
    cover = "ix_bench_state_cover"

    def recurring_query(ordered: bool) -> Any:
        rule = pb.recurring[0]
        query = select(
            CUSTOMER.c.id,
            CUSTOMER.c.timezone,
            compiled.segment.label("segment"),
            compiled.stage.label("stage"),
        ).where(compiled.recurring[rule.name])
        return query.order_by(CUSTOMER.c.id) if ordered else query

    def changed_query(conn: Any, recurring: bool) -> Any:
        """The library's transitions query (and, with ``recurring``, the recurring flags too)."""
        rows, changed = evaluated(conn, compiled, None, None, recurring=recurring)
        flags = [rows.c[f"recurring_{i}"] for i in range(len(pb.recurring))] if recurring else []
        return select(rows).where(or_(changed, *flags))

    def one_scan(conn: Any) -> int:
        query = changed_query(conn, recurring=True)
        names = [c.name for c in query.selected_columns]
        table = Table(
            "bench_scan",
            MetaData(),
            *(Column(n, String(255)) for n in names),
            prefixes=["TEMPORARY"],
        )
        table.drop(conn, checkfirst=True)
        table.create(conn)
        conn.execute(insert(table).from_select(names, query))
        return len(conn.execute(select(table).order_by(table.c.customer_id)).all())

    def ctas(conn: Any, parallel: bool = False) -> int:
        if parallel:
            conn.exec_driver_sql("SET LOCAL parallel_tuple_cost = 0.001")
        query = changed_query(conn, recurring=False)
        sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        conn.exec_driver_sql("DROP TABLE IF EXISTS bench_ctas")
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE bench_ctas AS {sql}")
        return len(conn.exec_driver_sql("SELECT * FROM bench_ctas ORDER BY customer_id").all())

    def evaluated_then_read(conn: Any) -> int:
        """The tick's evaluation: into its table, then its transitions read back."""
        materialize(conn, compiled)
        return sum(1 for _ in transitions(conn, compiled, materialized=True))

    runs: dict[str, Any] = {
        "evaluate": lambda conn: evaluate(conn, compiled).total,
        "transitions": evaluated_then_read,
        "transitions_covering_state": evaluated_then_read,
        "recurring": lambda conn: len(conn.execute(recurring_query(True)).all()),
        "recurring_unordered": lambda conn: len(sorted(conn.execute(recurring_query(False)).all())),
        "one_scan": one_scan,
        "transitions_ctas": ctas,
    }
    if backend == "postgresql":
        runs["transitions_ctas_parallel"] = lambda conn: ctas(conn, parallel=True)
    times: dict[str, list[float]] = {name: [] for name in runs}
    rows: dict[str, int] = {}
    order = list(runs)
    for k in range(rounds + 1):  # the first round warms up and is not counted
        for name in order if k % 2 == 0 else reversed(order):
            with engine.connect() as conn:
                if name == "transitions_covering_state":
                    conn.exec_driver_sql(
                        f"CREATE INDEX {cover} ON customer_state (playbook, customer_id, segment, stage)"
                    )
                    if backend == "postgresql":
                        conn.exec_driver_sql("ANALYZE customer_state")
                    conn.commit()
                try:
                    start = time.perf_counter()
                    rows[name] = runs[name](conn)
                    elapsed = time.perf_counter() - start
                finally:
                    conn.rollback()
                    if name == "transitions_covering_state":
                        conn.exec_driver_sql(f"DROP INDEX {cover}")
                        conn.commit()
            if k:
                times[name].append(elapsed)
    base = statistics.median(times["evaluate"])
    plans: dict[str, list[str]] = {}
    with engine.connect() as conn:
        from automation.plan.records import CHANGES, TRANSITION_COLUMNS

        sql = str(
            changed_query(conn, False).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        )
        prefix = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN "
        CHANGES.drop(conn, checkfirst=True)
        CHANGES.create(conn)
        conn.exec_driver_sql("DROP TABLE IF EXISTS bench_ctas")
        for name, statement in (
            ("transitions", f"INSERT INTO tick_changes ({', '.join(TRANSITION_COLUMNS)}) {sql}"),
            ("transitions_ctas", f"CREATE TEMPORARY TABLE bench_ctas AS {sql}"),
        ):
            try:
                found = conn.exec_driver_sql(prefix + statement).fetchall()
                plans[name] = [f"{r[0]}<-{r[1]} {r[3]}" if backend == "sqlite" else str(r[0]) for r in found]
            except Exception as exc:
                plans[name] = [f"error: {str(exc).splitlines()[0]}"]
        conn.rollback()
    return {
        "plans": plans,
        "describe": SCANS,
        "timings": {
            name: {**summary(t), "vs_evaluate": round(statistics.median(t) / base, 3), "rows": rows[name]}
            for name, t in times.items()
        },
    }


def breakdown_lines(profile: dict[str, Any]) -> list[str]:
    lines = [
        f"profiled tick {profile['seconds_under_profile']:.2f} s (under cProfile), "
        f"evaluation {profile['evaluate_s']:.2f} s; cumulative time per step:"
    ]
    lines += [
        f"  {s['function']:<40} {s['calls']:>8} calls {s['cumulative_s']:8.3f} s" for s in profile["steps"]
    ]
    lines.append(
        f"SQL execute time by statement ({profile['sql_execute_total_s']:.2f} s in all; on PostgreSQL the "
        "tick's two connections run at the same time, so this can exceed the tick):"
    )
    lines += [
        f"  {s['statement']:<58} {s['executes']:>7}x {s['seconds']:8.3f} s"
        for s in profile["sql"]
        if s["seconds"]
    ]
    return lines


# -- idle CPU ---------------------------------------------------------------------------------------
def _cpu(pid: int) -> tuple[float, float, int]:
    """(utime + stime in seconds, summed per-thread run time in seconds, context switches) of ``pid``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    ran_ns, switches = 0, 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ran_ns += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return cpu, ran_ns / 1e9, switches


def idle_project(folder: Path) -> dict[str, str]:
    """A small SQLite project: 200 sample customers imported, the playbook ticking once an hour."""
    cli = str(Path(sys.executable).with_name("automation"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTOMATION_") or k == "AUTOMATION_BENCH_PG_URL"
    }
    env.update(
        AUTOMATION_DATABASE_URL=f"sqlite:///{folder / 'automation.db'}",
        AUTOMATION_TEMPLATES_DIR=str(ROOT / "templates"),
        AUTOMATION_OUTBOX_DIR=str(folder / "outbox"),
        LOYALTY_WEBHOOK_URL="https://loyalty.example.com/points",
    )
    (folder / "playbooks").mkdir()
    text, replaced = re.subn(r"(?m)^schedule:.*$", "schedule: every 1 hour", PLAYBOOK.read_text())
    assert replaced == 1, "playbooks/lifecycle.yaml has no schedule line to replace"
    (folder / "playbooks" / "lifecycle.yaml").write_text(text)
    for command in (
        ["db", "upgrade"],
        ["sample-data", str(folder / "sample"), "--customers", "200", "--seed", "7"],
        ["import", "customers", str(folder / "sample" / "customers.csv")],
        ["import", "events", str(folder / "sample" / "events.jsonl")],
    ):
        subprocess.run([cli, *command], env=env, cwd=folder, check=True, capture_output=True)
    env["BENCH_CLI"] = cli
    return env


def idle_cpu(
    folder: Path, env: dict[str, str], poll: float, seconds: float, settle_s: float
) -> dict[str, Any]:
    """Start ``automation run --poll poll``; after its first tick and drain, measure ``seconds`` of idling."""
    log_path = folder / f"run-poll-{poll:g}.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [env["BENCH_CLI"], "run", "--playbooks", str(folder / "playbooks"), "--poll", str(poll)],
            env=env,
            cwd=folder,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "tick in" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"automation run did not tick:\n{log_path.read_text()}")
            time.sleep(0.2)
        started = time.monotonic()
        time.sleep(settle_s)  # let the drain of the first tick's messages finish
        cpu0, ran0, sw0 = _cpu(proc.pid)
        t0 = time.monotonic()
        time.sleep(seconds)
        cpu1, ran1, sw1 = _cpu(proc.pid)
        window = time.monotonic() - t0
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        stopped_after = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    tick_line = next((line for line in text.splitlines() if "tick in" in line), "")
    cpu, ran = cpu1 - cpu0, ran1 - ran0
    return {
        "poll_s": poll,
        "window_s": round(window, 2),
        "cpu_s": round(cpu, 3),  # utime + stime, clock-tick resolution (10 ms)
        "cpu_s_per_minute": round(cpu * 60 / window, 4),
        "cpu_percent": round(100 * cpu / window, 3),
        "run_time_s": round(ran, 5),  # summed schedstat of every thread, nanosecond resolution
        "run_time_ms_per_minute": round(1000 * ran * 60 / window, 2),
        "context_switches": sw1 - sw0,
        "wakeups_per_s": round((sw1 - sw0) / window, 3),
        "exit_code": code,
        "stopped_within_s": round(stopped_after - settle_s - window, 2),
        "first_tick_log": tick_line.strip(),
        "log_tail": text.splitlines()[-8:],
    }


def wake_costs(env: dict[str, str], repeat: int = 300) -> dict[str, Any]:
    """CPU of one wake-up of an idle worker, in this process, on the idle project's outbox.

    ``next_due``: ``automation.outbox.lease.next_due`` (what the worker asks to know how long to sleep);
    ``drain``: what it does when it wakes (``Daemon.drain``: a new Dispatcher, then ``drain()``: one
    claiming write transaction per lane, each finding nothing); ``claim``: one such transaction.
    """
    import asyncio

    from automation.channels.registry import build_channels
    from automation.config import Settings
    from automation.db.connect import make_engine
    from automation.messages.store import TemplateStore
    from automation.outbox.dispatch import DispatchConfig, Dispatcher
    from automation.outbox.lease import claim, next_due

    settings = Settings.from_env(env)
    engine = make_engine(settings.database_url)
    built = build_channels(settings, engine)
    config = DispatchConfig(rates=built.rates, concurrency=built.concurrency)
    templates = TemplateStore(settings.templates_dir)
    with engine.connect() as conn:
        waiting = conn.exec_driver_sql(
            "SELECT count(*) FROM outbox WHERE status IN ('pending', 'retry', 'claimed')"
        ).scalar_one()
    upcoming = next_due(engine)
    clock = lambda: datetime.now(UTC)  # noqa: E731

    def measure(run: Any) -> float:
        run()  # warm: statement cache, pool
        cpu = time.process_time()
        for _ in range(repeat):
            run()
        return 1000 * (time.process_time() - cpu) / repeat

    async def drain_once() -> None:
        await Dispatcher(engine, built.channels, templates, config, clock=clock).drain()

    def claim_once() -> None:
        with engine.begin() as conn:
            assert not claim(
                conn, config.worker_id, clock(), config.lease, config.batch_size, list(built.channels)
            )

    loop = asyncio.new_event_loop()
    try:
        drain_ms = measure(lambda: loop.run_until_complete(drain_once()))
        loop.run_until_complete(built.aclose())
    finally:
        loop.close()
    out = {
        "outbox_waiting": waiting,
        "next_due": upcoming.isoformat() if upcoming else None,
        "next_due_in_s": round((upcoming - clock()).total_seconds(), 1) if upcoming else None,
        "repeat": repeat,
        "next_due_ms": round(measure(lambda: next_due(engine)), 3),
        "drain_ms": round(drain_ms, 3),
        "lanes": config.lanes,
        "claim_ms": round(measure(claim_once), 3),
    }
    engine.dispose()
    return out


def idle(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="automation-idle-"))
    try:
        log(f"idle: preparing a 200-customer SQLite project in {folder}")
        env = idle_project(folder)
        runs = []
        # the brief's window, then (--idle-long) one longer than the worker's longest sleep (60 s)
        for seconds in (args.idle_seconds, *([args.idle_long] if args.idle_long else [])):
            log(f"idle: automation run --poll 1, {seconds:.0f} s of idling")
            r = idle_cpu(folder, env, 1.0, seconds, args.idle_settle)
            runs.append(r)
            log(
                f"idle: {r['cpu_s']:.2f} s CPU in {r['window_s']:.0f} s = "
                f"{r['cpu_s_per_minute']:.3f} CPU s/min ({r['cpu_percent']:.3f}%), run time "
                f"{r['run_time_ms_per_minute']:.2f} ms/min, {r['wakeups_per_s']:.2f} wakeups/s, "
                f"exit {r['exit_code']}, stopped within {r['stopped_within_s']:.1f} s"
            )
        costs = wake_costs(env)
        log(
            f"idle: one wake-up in-process: next_due {costs['next_due_ms']:.2f} ms CPU, drain "
            f"{costs['drain_ms']:.2f} ms ({costs['lanes']} lanes; one claim {costs['claim_ms']:.2f} ms); "
            f"{costs['outbox_waiting']} messages waiting, next due in {costs['next_due_in_s']} s"
        )
        return {"customers": 200, "schedule": "every 1 hour", "poll_s": 1.0, "runs": runs, "wake": costs}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- reporting --------------------------------------------------------------------------------------
def summary_table(results: dict[str, Any]) -> str:
    lines = [
        "| Backend | First tick | Steady tick min / median | Evaluation min / median | Ratio (median) "
        "| Ratio per round | Transitions per tick | Goal (<= 2x in every round) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["backends"].items():
        first, tick, evaluation = r["first_tick"], r["tick"], r["evaluate"]
        t = r["transitions"]
        rounds = [x["ratio"] for x in r["rounds"]]
        lines.append(
            f"| {name} | "
            + (
                f"{first['seconds']:.0f} s ({first['stats']['transitions']:,} transitions) "
                if first
                else "(state kept) "
            )
            + f"| {tick['min_s']:.2f} s / {tick['median_s']:.2f} s "
            f"| {evaluation['min_s']:.2f} s / {evaluation['median_s']:.2f} s "
            f"| {r['ratio_median']:.2f}x | {min(rounds):.2f}-{max(rounds):.2f}x "
            f"| {t['min']:,}-{t['max']:,} ({t['percent_of_customers_median']:.2f}%) "
            f"| {'yes' if max(rounds) <= GOAL_RATIO else 'no'} |"
        )
    return "\n".join(lines)


def idle_table(result: dict[str, Any]) -> str:
    lines = [
        "| Window | CPU (utime+stime) | CPU s per minute | CPU % | Run time per minute (schedstat) "
        "| Context switches per minute |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['window_s']:.0f} s | {r['cpu_s']:.2f} s | {r['cpu_s_per_minute']:.3f} "
            f"| {r['cpu_percent']:.3f}% | {r['run_time_ms_per_minute']:.2f} ms "
            f"| {60 * r['context_switches'] / r['window_s']:.1f} |"
        )
    return "\n".join(lines)


def _git(*command: str) -> str:
    done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "both", "none"),
        default="both",
        help="none: only the idle CPU measurement",
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="steady-state rounds (a tick and an evaluation)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated databases")
    parser.add_argument(
        "--no-deliver",
        dest="deliver",
        action="store_false",
        help="leave every planned message pending (no dispatcher stand-in between ticks)",
    )
    parser.add_argument("--reuse", action="store_true", help="reuse a kept database of the same size")
    parser.add_argument(
        "--keep-state",
        action="store_true",
        help="with --reuse: keep the engine's state and go on from the last tick (no first tick)",
    )
    parser.add_argument(
        "--no-checkpoint",
        dest="checkpoint",
        action="store_false",
        help="PostgreSQL: no CHECKPOINT before each round (rounds back to back within a checkpoint cycle)",
    )
    parser.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        help="PostgreSQL: leave the changed customers' pages unpruned before each round's CHECKPOINT (the "
        "tick or the evaluation, whichever reads them first, then prunes them and logs them whole)",
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profiled round")
    parser.add_argument(
        "--no-scans", dest="scans", action="store_false", help="skip timing the scans and their prototypes"
    )
    parser.add_argument("--scan-repeat", type=int, default=3, help="timed rounds of each scan")
    parser.add_argument("--no-idle", dest="idle", action="store_false", help="skip the idle CPU measurement")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="idle window measured")
    parser.add_argument(
        "--idle-long", type=float, default=75.0, help="a second, longer idle window (0: none)"
    )
    parser.add_argument("--idle-settle", type=float, default=5.0, help="wait after the first tick before it")
    parser.add_argument(
        "--prototype",
        action="append",
        default=[],
        choices=sorted(PROTOTYPES),
        help="time a prototype of a library change (see PROTOTYPES) instead of the library as it is",
    )
    parser.add_argument(
        "--wal-detail",
        action="store_true",
        help="PostgreSQL: count each tick's full-page images per relation (pg_walinspect)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "tick.json")
    args = parser.parse_args()
    if not 1 <= args.repeat < SLICES - 3:
        parser.error(f"--repeat must be between 1 and {SLICES - 4}")
    sys.path.insert(0, str(ROOT))
    if "analyze_outbox" in args.prototype:
        import automation.worker.tick

        automation.worker.tick.OutboxSink = analyze_outbox_sink()  # type: ignore[misc]  # looked up per call

    names = {"both": ["sqlite", "postgresql"], "none": []}.get(args.backend, [args.backend])
    results: dict[str, Any] = {
        "now": NOW.isoformat(),
        "step_minutes": STEP.total_seconds() / 60,
        "playbook": str(PLAYBOOK.relative_to(ROOT)),
        "customers": args.customers,
        "events": args.events,
        "repeat": args.repeat,
        "changed_per_tick_percent": 100 / SLICES,
        "delivered_between_ticks": args.deliver,
        "checkpoint_before_each_round": args.checkpoint,
        "goal": {"max_ratio": GOAL_RATIO},
        "prototypes": {name: PROTOTYPES[name] for name in args.prototype},
        "commit": _git("rev-parse", "HEAD"),
        "automation_modified": bool(_git("status", "--porcelain", "--", "automation")),
        "backends": {},
    }
    prepared: list[Any] = []
    try:
        for name in names:
            b, generation = ev.prepare(name, args)
            prepared.append(b)
            results["load_average_before"] = list(os.getloadavg())
            r = benchmark(b, args, reused=bool(generation.get("reused")))
            results["backends"][name] = {"generation": generation, **r}
            results["load_average_after"] = list(os.getloadavg())
            write(args.output, results)  # after each backend: a later failure keeps these figures
        if args.idle:
            results["idle"] = idle(args)
        results["machine"] = ev.machine(prepared)
    finally:
        if not args.keep:
            for b in prepared:
                ev.drop(b)
    write(args.output, results)

    print()
    print(
        f"{args.customers:,} customers, {args.events:,} events, {args.repeat} steady-state rounds, "
        f"1% changing stage and now += 15 min per round, first tick at {NOW:%Y-%m-%dT%H:%M:%SZ}"
    )
    if args.prototype:
        print(f"PROTOTYPES (not the library): {', '.join(args.prototype)}")
    print()
    if results["backends"]:
        print(summary_table(results))
        print()
    for name, r in results["backends"].items():
        if "checkpoint" in r:
            c = r["checkpoint"]
            print(
                f"{name}: a tick with wal_autocheckpoint=0 took {c['tick_s']:.2f} s and left "
                f"{c['wal_mb']:.0f} MB of WAL; wal_checkpoint(PASSIVE) then took {c['checkpoint_s']:.2f} s"
            )
            print()
        if "scans" in r:
            print(f"{name}: the tick's full scans alone (median, vs the evaluation)")
            for scan, t in r["scans"]["timings"].items():
                print(f"  {scan:<28} {t['median_s']:7.3f} s {t['vs_evaluate']:5.2f}x  {SCANS[scan]}")
            print()
        if "profile" in r:
            print(f"{name}: where a steady-state tick spends its time")
            for line in breakdown_lines(r["profile"]):
                print(f"  {line}")
            print()
    if "idle" in results:
        wake = results["idle"]["wake"]
        print("Idle worker: automation run --poll 1 (200 customers, SQLite, schedule every 1 hour):")
        print()
        print(idle_table(results["idle"]))
        print()
        print(
            f"one wake-up: next_due {wake['next_due_ms']:.2f} ms CPU, drain {wake['drain_ms']:.2f} ms "
            f"({wake['lanes']} claim transactions of {wake['claim_ms']:.2f} ms); "
            f"{wake['outbox_waiting']} messages waiting, the next due in {wake['next_due_in_s']} s"
        )
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
