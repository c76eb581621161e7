"""Benchmark: ``automation report`` against hand-written SQL computing the same figures.

Generates customers and events with bench/evaluate.py's generator, then program entries, messages,
stage transitions, conversions and unsubscribe facts inside the database with one ``INSERT ... SELECT``
each (deterministic: the same sizes give the same rows on SQLite and on PostgreSQL), and times, in the
same run and alternating,

* the library: ``build_report(conn, "lifecycle", since, until)`` (every query and the statistics), and
* hand-written SQL (text with bound parameters) computing the same figures: per step the counts, entries
  per stage and cohort, the transitions, conversions per goal and cohort, the median time to convert,
  conversions per day,

asserts that both give the same figures and writes them to ``bench/results/report.json``.

    .venv/bin/python bench/report.py [--customers N] [--events M] [--outbox K]
                                     [--backend sqlite|postgresql|both] [--repeat R] [--keep] [--reuse]
                                     [--output PATH]

Goal: the library at most 1.5x the hand-written SQL and under 10 s, at 1,000,000 customers,
10,000,000 events and 3,000,000 messages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import evaluate as ev  # noqa: E402  (bench/evaluate.py: the generator, NOW, backends)

ev.SQLITE_FILE = ev.RESULTS / "report.sqlite"
ev.PG_DATABASE = "automation_bench_report"
PLAYBOOK = "lifecycle"
UNTIL = ev.NOW
SINCE = UNTIL - timedelta(days=30)
DAY = ev.DAY
STAGES = ("acquisition", "conversion", "retention", "loyalty")
GOAL_RATIO, GOAL_SECONDS = 1.5, 10.0


# -- deterministic data -----------------------------------------------------------------------------
def report_sql(d: ev.Dialect, outbox: int, customers: int) -> list[str]:
    """INSERT ... SELECT statements for entries (outbox / 2), messages, transitions, conversions, facts.

    Entry e (1..E): playbook lifecycle (90%) or other, one of four stages, cohort 80% treatment, 15%
    holdout, 5% control, started (3 * e) seconds mod 60 days before NOW (unique per entry). Its two
    messages are ids e (step #0, variant welcome or welcome_short) and E + e (step #1): held out
    outside treatment, else sent (5% failed), 90% delivered, 40% opened, 20% clicked, 3% bounced, 1%
    complained. Conversions of the goal ``playbook``: 30% / 20% / 15% of the entries by cohort, within
    10 days, attributed to message e in treatment. Unsubscribes: every 97th message sent.
    """
    entries = outbox // 2
    e = "r.n"
    pb = f"CASE WHEN {ev._h(e, 3001)} % 10 = 0 THEN 'other' ELSE '{PLAYBOOK}' END"
    stage = ev._pick(ev._h(e, 3002), STAGES)
    variant = ev._pick(ev._h(e, 3003), ("welcome", "welcome_short"))
    cohort_h = f"{ev._h(e, 3004)} % 100"
    cohort = (
        f"CASE WHEN {cohort_h} < 80 THEN 'treatment' WHEN {cohort_h} < 95 THEN 'holdout' ELSE 'control' END"
    )
    age = f"(({e}) * 3) % {60 * DAY}"
    customer = d.customer_id(f"1 + ({e}) % {customers}")
    with_, from_ = d.numbers(entries)
    enrollment = f"""
INSERT INTO enrollment (id, playbook, customer_id, stage, touch, started_at, step_index, status, cohort)
{with_}SELECT {e}, {pb}, {customer}, {stage}, 'none', {d.ago(age)}, 0, 'completed', {cohort}
FROM (SELECT seq.n AS n FROM {from_}) AS r"""
    history = f"""
INSERT INTO stage_history (playbook, customer_id, from_stage, to_stage, at)
{with_}SELECT {pb}, {customer},
  CASE WHEN {ev._h(e, 3005)} % 5 = 0 THEN NULL ELSE {ev._pick(ev._h(e, 3006), STAGES)} END,
  {stage}, {d.ago(age)}
FROM (SELECT seq.n AS n FROM {from_}) AS r"""
    conv_h = f"{ev._h(e, 3007)} % 100"
    converts = (
        f"(({cohort_h} < 80 AND {conv_h} < 30) OR ({cohort_h} >= 80 AND {cohort_h} < 95 AND {conv_h} < 20)"
        f" OR ({cohort_h} >= 95 AND {conv_h} < 15))"
    )
    later = f"CASE WHEN {age} > {10 * DAY} THEN {age} - {ev._h(e, 3008)} % {10 * DAY} ELSE ({age}) / 2 END"
    treated = f"{cohort_h} < 80"
    conversion = f"""
INSERT INTO conversion (playbook, goal, customer_id, enrollment_id, cohort, entered_at, converted_at,
                        outbox_id, template)
{with_}SELECT {pb}, 'playbook', {customer}, {e}, {cohort}, {d.ago(age)}, {d.ago(later)},
  CASE WHEN {treated} THEN {e} END, CASE WHEN {treated} THEN {variant} END
FROM (SELECT seq.n AS n FROM {from_}) AS r WHERE {converts}"""
    # messages: n in 1..2E; entry e = (n - 1) % E + 1, step k = (n - 1) / E
    with2, from2 = d.numbers(2 * entries)
    m = "r.n"
    ent = f"(({m} - 1) % {entries} + 1)"
    k = f"(({m} - 1) / {entries})"

    def on_entry(sql: str) -> str:
        return sql.replace(e, ent)

    m_age = (
        f"(CASE WHEN {on_entry(age)} >= {DAY} THEN {on_entry(age)} - {k} * {DAY} ELSE {on_entry(age)} END)"
    )
    m_cohort_h = on_entry(cohort_h)
    sent = f"{m_cohort_h} < 80 AND {ev._h(m, 3010)} % 100 >= 5"
    at = d.ago(f"{m_age} - {m_age} / 100")  # never negative: SQLite's datetime() takes no '--'

    def fact(pct: int, salt: int) -> str:
        return f"CASE WHEN {sent} AND {ev._h(m, salt)} % 100 < {pct} THEN {at} END"

    outbox_sql = f"""
INSERT INTO outbox (id, idempotency_key, playbook, customer_id, channel, template, stage, touch, step,
                    priority, payload, status, due_at, attempts, created_at, sent_at, delivered_at,
                    opened_at, opens, machine_opens, clicked_at, clicks, bounced_at, complained_at)
{with2}SELECT {m}, 'k' || {d.text(m)}, {on_entry(pb)}, {on_entry(customer)}, 'email',
  CASE WHEN {k} = 0 THEN {on_entry(variant)} ELSE 'followup' END, {on_entry(stage)}, 'none',
  {on_entry(stage)} || '/none#' || {d.text(k)}, 0, {d.empty_json()},
  CASE WHEN {m_cohort_h} >= 80 THEN 'held_out' WHEN {sent} THEN 'sent' ELSE 'failed' END,
  {d.ago(m_age)}, 1, {d.ago(m_age)},
  CASE WHEN {m_cohort_h} < 80 THEN {at} END,
  {fact(90, 3011)}, {fact(40, 3012)}, 0,
  CASE WHEN {ev._h(m, 3013)} % 100 < 30 THEN 1 ELSE 0 END,
  {fact(20, 3014)}, 0, {fact(3, 3015)}, {fact(1, 3016)}
FROM (SELECT seq.n AS n FROM {from2}) AS r"""
    feedback = f"""
INSERT INTO feedback (dedupe_key, outbox_id, customer_id, channel, kind, source, occurred_at,
                      received_at, detail)
SELECT 'u' || {d.text("o.id")}, o.id, o.customer_id, 'email', 'unsubscribed', 'generic', o.sent_at, o.sent_at,
  {d.empty_json()}
FROM outbox o WHERE o.id % 97 = 0 AND o.sent_at IS NOT NULL"""
    return [enrollment, history, conversion, outbox_sql, feedback]


# -- hand-written queries -----------------------------------------------------------------------------
def hand_queries(backend: str) -> dict[str, str]:
    seconds = (
        "EXTRACT(EPOCH FROM converted_at - entered_at)"
        if backend == "postgresql"
        else "(julianday(converted_at) - julianday(entered_at)) * 86400.0"
    )
    day = "to_char(converted_at, 'YYYY-MM-DD')" if backend == "postgresql" else "substr(converted_at, 1, 10)"
    if backend == "postgresql":
        median = f"""SELECT goal, cohort, percentile_cont(0.5) WITHIN GROUP (ORDER BY {seconds})
FROM conversion WHERE playbook = :p AND entered_at >= :since AND entered_at < :until GROUP BY goal, cohort"""
    else:
        median = f"""SELECT goal, cohort, AVG(s) FROM (
  SELECT goal, cohort, {seconds} AS s,
         ROW_NUMBER() OVER (PARTITION BY goal, cohort ORDER BY {seconds}) AS rn,
         COUNT(*) OVER (PARTITION BY goal, cohort) AS n
  FROM conversion WHERE playbook = :p AND entered_at >= :since AND entered_at < :until) AS r
WHERE rn = (n + 1) / 2 OR rn = (n + 2) / 2 GROUP BY goal, cohort"""
    return {
        "known": "SELECT EXISTS (SELECT 1 FROM tick_cursor WHERE playbook = :p) "
        "OR EXISTS (SELECT 1 FROM customer_state WHERE playbook = :p) "
        "OR EXISTS (SELECT 1 FROM enrollment WHERE playbook = :p)",
        "steps": """SELECT o.stage, o.step, o.template, o.channel, COUNT(*), COUNT(o.sent_at),
  SUM(CASE WHEN o.status = 'held_out' THEN 1 ELSE 0 END),
  SUM(CASE WHEN o.status = 'failed' THEN 1 ELSE 0 END),
  COUNT(o.delivered_at), COUNT(o.bounced_at), COUNT(o.opened_at),
  SUM(CASE WHEN o.machine_opens > 0 THEN 1 ELSE 0 END), COUNT(o.clicked_at), COUNT(u.outbox_id),
  COUNT(o.complained_at), COUNT(c.outbox_id)
FROM outbox o
LEFT JOIN (SELECT outbox_id FROM feedback WHERE kind = 'unsubscribed' AND outbox_id IS NOT NULL
           GROUP BY outbox_id) u ON u.outbox_id = o.id
LEFT JOIN (SELECT outbox_id FROM conversion WHERE playbook = :p AND outbox_id IS NOT NULL
           GROUP BY outbox_id) c ON c.outbox_id = o.id
WHERE o.playbook = :p AND o.created_at >= :since AND o.created_at < :until
GROUP BY o.stage, o.step, o.template, o.channel""",
        "entries": """SELECT stage, cohort, COUNT(*) FROM enrollment
WHERE playbook = :p AND started_at >= :since AND started_at < :until GROUP BY stage, cohort""",
        "funnel": """SELECT from_stage, to_stage, COUNT(*) FROM stage_history
WHERE playbook = :p AND at >= :since AND at < :until
  AND (from_stage <> to_stage OR (from_stage IS NULL) <> (to_stage IS NULL))
GROUP BY from_stage, to_stage""",
        "conversions": """SELECT goal, cohort, COUNT(*) FROM conversion
WHERE playbook = :p AND entered_at >= :since AND entered_at < :until GROUP BY goal, cohort""",
        "median": median,
        "daily": f"""SELECT {day}, goal, cohort, COUNT(*) FROM conversion
WHERE playbook = :p AND entered_at >= :since AND entered_at < :until GROUP BY {day}, goal, cohort""",
    }


def run_hand(conn: Any) -> dict[str, Any]:
    from sqlalchemy import DateTime, bindparam, text

    params = {"p": PLAYBOOK, "since": SINCE.replace(tzinfo=None), "until": UNTIL.replace(tzinfo=None)}
    out: dict[str, Any] = {}
    for name, sql in hand_queries(conn.dialect.name).items():
        statement = text(sql).bindparams(
            *(bindparam(k, type_=DateTime()) for k in ("since", "until") if f":{k}" in sql)
        )
        out[name] = [
            tuple(row) for row in conn.execute(statement, {k: v for k, v in params.items() if f":{k}" in sql})
        ]
    return out


def run_library(conn: Any) -> Any:
    from automation.report import build_report

    return build_report(conn, PLAYBOOK, SINCE, UNTIL)


def check_same(report: Any, hand: dict[str, Any]) -> None:
    steps = {(r.stage, r.step, r.template, r.channel): tuple(r.counts.values()) for r in report.steps}
    assert steps == {tuple(r[:4]): tuple(int(v) for v in r[4:]) for r in hand["steps"]}, "steps differ"
    assert report.entries == {(a, b): int(n) for a, b, n in hand["entries"]}, "entries differ"
    assert {(a, b): n for a, b, n in report.funnel} == {(a, b): int(n) for a, b, n in hand["funnel"]}
    converted = {(g.name, k): n for g in report.goals for k, n in g.converted.items() if n}
    assert converted == {(a, b): int(n) for a, b, n in hand["conversions"]}, "conversions differ"
    assert {(d, g, k): n for d, g, k, n in report.daily} == {
        (d, g, k): int(n) for d, g, k, n in hand["daily"]
    }
    medians = {(g.name, k): v for g in report.goals for k, v in g.median_seconds.items()}
    hand_medians = {(a, b): float(v) for a, b, v in hand["median"]}
    assert set(medians) == set(hand_medians) and all(
        abs(medians[k] - hand_medians[k]) < 0.01 for k in medians
    )


# -- running ---------------------------------------------------------------------------------------------
def prepare(backend: str, args: argparse.Namespace) -> ev.Backend:
    from sqlalchemy import text

    from automation.db.connect import make_engine

    b, figures = ev.prepare(backend, args)
    engine = make_engine(b.url)
    with engine.connect() as conn:
        have = conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
        if figures.get("reused") and have == args.outbox // 2 * 2:
            ev.log(f"{backend}: reusing {have:,} messages")
            engine.dispose()
            return b
        for table in ("feedback", "conversion", "outbox", "stage_history", "enrollment"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
        conn.commit()
        d = ev.Dialect(backend)
        for sql in report_sql(d, args.outbox, args.customers):
            start = time.perf_counter()
            ev.run_sql(conn, sql)
            conn.connection.commit()  # the DBAPI's: run_sql's cursor began a transaction SQLAlchemy did not
            ev.log(f"  {sql.split()[2]}: {time.perf_counter() - start:.1f} s")
        if backend == "sqlite":
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    if backend == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as raw:
            for table in ("outbox", "enrollment", "stage_history", "conversion", "feedback"):
                raw.exec_driver_sql(f"VACUUM ANALYZE {table}")
    engine.dispose()
    return b


def benchmark(b: ev.Backend, args: argparse.Namespace) -> dict[str, Any]:
    from automation.db.connect import make_engine

    engine = make_engine(b.url)
    times: dict[str, list[float]] = {"library": [], "hand": []}
    with engine.connect() as conn:
        check_same(run_library(conn), run_hand(conn))  # warm-up and the check
        runners = {"library": lambda: run_library(conn), "hand": lambda: run_hand(conn)}
        for k in range(args.repeat):
            for name in ("library", "hand") if k % 2 == 0 else ("hand", "library"):
                start = time.perf_counter()
                runners[name]()
                times[name].append(time.perf_counter() - start)
                ev.log(f"{b.name}: round {k + 1}/{args.repeat} {name:<8} {times[name][-1]:7.3f} s")
    engine.dispose()
    lib, hand = statistics.median(times["library"]), statistics.median(times["hand"])
    return {
        "library_median_s": round(lib, 3),
        "hand_median_s": round(hand, 3),
        "ratio": round(lib / hand, 3),
        "runs": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "goal_met": lib / hand <= GOAL_RATIO and lib < GOAL_SECONDS,
        "load_average": list(os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--outbox", type=int, default=3_000_000, help="messages (entries: half as many)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the generated databases")
    parser.add_argument("--reuse", action="store_true", help="reuse a kept database of the same size")
    parser.add_argument("--output", type=Path, default=ev.RESULTS / "report.json")
    args = parser.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    results: dict[str, Any] = {
        "sizes": {"customers": args.customers, "events": args.events, "outbox": args.outbox // 2 * 2}
    }
    for name in backends:
        b = prepare(name, args)
        try:
            results[name] = benchmark(b, args)
        finally:
            if not args.keep:
                ev.drop(b)
        r = results[name]
        print(
            f"{name}: library {r['library_median_s']:.3f} s, hand-written {r['hand_median_s']:.3f} s, "
            f"ratio {r['ratio']:.2f} (goal <= {GOAL_RATIO} and < {GOAL_SECONDS:.0f} s: "
            f"{'met' if r['goal_met'] else 'NOT met'})"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ev.ROOT))
    main()
