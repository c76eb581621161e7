"""Benchmark: the preview's evaluation of a playbook against hand-written SQL computing the same counts.

Generates customers and events inside the database with SQL (deterministic: the same sizes give the same
rows on SQLite and on PostgreSQL), then times, in the same run and alternating,

* the library: ``evaluate(conn, compile_playbook(load_playbook(path), now))`` (loading and compiling
  the playbook is part of the timed work), and
* hand-written SQL (text with bound parameters) computing the same (segment, stage, count) rows;
  several formulations are timed and the fastest one on each backend is the baseline,

asserts that every query returns identical counts, measures the peak RSS of a fresh process that only
runs the evaluation, and writes the figures to ``bench/results/evaluate.json``.

    .venv/bin/python bench/evaluate.py [--customers N] [--events M] [--backend sqlite|postgresql|both]
                                       [--repeat K] [--keep] [--reuse] [--explain-analyze]
                                       [--no-prototypes] [--output PATH]

Prototypes of library changes (the library's compiled playbook with one change each) are timed next
to it and reported separately; see bench/README.md.

Goal: the library at most 1.2x the best hand-written query in every round; peak memory under 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PLAYBOOK = ROOT / "playbooks" / "lifecycle.yaml"
PG_ADMIN_URL = os.environ.get("AUTOMATION_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_DATABASE = "automation_bench"  # other sizes get a suffix: automation_bench_<customers>_<events>
SQLITE_FILE = RESULTS / "evaluate.sqlite"
DEFAULT_SIZE = (1_000_000, 5_000_000)

#: The moment every query is evaluated at (fixed, so both sides and every run agree).
NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
GOAL_RATIO = 1.2  # in every round, against the best hand-written formulation in the same round
GOAL_RSS_MB = 300.0

# -- deterministic data ---------------------------------------------------------------------------
#: A Mersenne prime: every hash below is computed modulo P, so products stay under 2**62 on both
#: backends (SQLite's 64-bit integers, PostgreSQL's bigint) and both produce the same numbers.
P = 2_147_483_647
TIMEZONES = (
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Australia/Sydney",
    "Pacific/Auckland",
)
LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "pt-BR")
INDUSTRIES = ("retail", "software", "healthcare", "education", "finance")
OWNERS = ("dana.owner@example.com", "lee.owner@example.com", "sam.owner@example.org")
DAY = 86_400


def _h(n: str, salt: int) -> str:
    """SQL for a pseudo-random integer in [0, P) from the integer expression ``n``, one stream per salt.

    (a*n + b) mod P, squared mod P (the nonlinear step), then (c*x + d) mod P.
    """
    rng = random.Random(salt)
    a, b, c, d = (rng.randrange(1, P) for _ in range(4))
    x = f"(({n}) * {a} + {b}) % {P}"
    return f"((((({x}) * ({x})) % {P}) * {c} + {d}) % {P})"


def _pick(hash_sql: str, values: tuple[str, ...]) -> str:
    whens = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values))
    return f"CASE {hash_sql} % {len(values)} {whens} END"


@dataclass(frozen=True)
class Dialect:
    """The few SQL spellings that differ between the backends, used by the generator."""

    name: str

    def numbers(self, count: int) -> tuple[str, str]:
        """(WITH clause, FROM clause) producing n = 1..count."""
        if self.name == "sqlite":
            return (
                f"WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {count}) ",
                "seq",
            )
        return "", f"(SELECT g::bigint AS n FROM generate_series(1, {count}) AS g) AS seq"

    def customer_id(self, number: str) -> str:
        if self.name == "sqlite":
            return f"printf('c%08d', {number})"
        return f"'c' || lpad(({number})::text, 8, '0')"

    def ago(self, seconds: str) -> str:
        """NOW minus ``seconds`` in the storage form of ``UTCDateTime`` (naive UTC)."""
        if self.name == "sqlite":
            # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' and compares the text
            return f"(datetime('{_naive(NOW)}', '-' || ({seconds}) || ' seconds') || '.000000')"
        return f"(TIMESTAMP '{_naive(NOW)}' - ({seconds}) * INTERVAL '1 second')"

    def date_plus(self, start: str, days: str) -> str:
        if self.name == "sqlite":
            return f"date('{start}', '+' || ({days}) || ' days')"
        return f"(DATE '{start}' + ({days})::int)"

    def json_one(self, key: str, value_sql: str) -> str:
        if self.name == "sqlite":
            return f"json_object('{key}', {value_sql})"
        return f"jsonb_build_object('{key}', {value_sql})"

    def empty_json(self) -> str:
        return "'{}'" if self.name == "sqlite" else "'{}'::jsonb"

    def text(self, number: str) -> str:
        return f"CAST({number} AS TEXT)"


def run_sql(conn: Any, sql: str) -> None:
    """Run SQL text on the DBAPI cursor, no parameters (so psycopg leaves ``%`` alone)."""
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


def _naive(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def customers_sql(d: Dialect, count: int) -> str:
    """INSERT ... SELECT generating ``count`` customers.

    orders_count: 40% 0, 20% 1, 30% 2-9, 10% 10-99.  clv: 3% >= 10,000, 20% 1,000-9,999.99,
    75% under 1,000, 2% unknown.  plan: 2% enterprise, 5% unknown.  signed_up_at: uniform over two
    years (6% more in the last 30 days, 1% unknown).  birthday: 90% known.  nps: half unknown.
    """
    with_, from_ = d.numbers(count)
    hashes = ", ".join(f"{_h('seq.n', 1000 + k)} AS h{k}" for k in range(12))
    n = "r.n"
    h = {k: f"r.h{k}" for k in range(12)}
    seconds = f"CASE WHEN {h[5]} % 100 < 6 THEN {h[6]} % {30 * DAY} ELSE {h[6]} % {730 * DAY} END"
    return f"""
INSERT INTO customer (id, email, first_name, last_name, timezone, locale, owner_email, plan, clv,
                      orders_count, signed_up_at, last_seen_at, birthday, nps, attributes)
{with_}SELECT
  {d.customer_id(n)},
  'customer' || {d.text(n)} || '@example.com',
  'First' || {d.text(f"{h[0]} % 500")},
  'Last' || {d.text(f"{h[1]} % 2000")},
  {_pick(h[2], TIMEZONES)},
  {_pick(h[3], LOCALES)},
  CASE WHEN {h[4]} % 10 < 3 THEN {_pick(h[4], OWNERS)} END,
  CASE WHEN {h[7]} % 100 < 2 THEN 'enterprise' WHEN {h[7]} % 100 < 30 THEN 'pro'
       WHEN {h[7]} % 100 < 60 THEN 'starter' WHEN {h[7]} % 100 < 95 THEN 'free' END,
  CASE WHEN {h[8]} % 100 < 3 THEN 10000 + ({h[9]} % 9000000) / 100.0
       WHEN {h[8]} % 100 < 23 THEN 1000 + ({h[9]} % 900000) / 100.0
       WHEN {h[8]} % 100 < 98 THEN ({h[9]} % 100000) / 100.0 END,
  CASE WHEN {h[10]} % 100 < 40 THEN 0 WHEN {h[10]} % 100 < 60 THEN 1
       WHEN {h[10]} % 100 < 90 THEN 2 + {h[11]} % 8 ELSE 10 + {h[11]} % 90 END,
  CASE WHEN {h[5]} % 1000 >= 990 THEN NULL ELSE {d.ago(seconds)} END,
  {d.ago(f"{h[1]} % {60 * DAY}")},
  CASE WHEN {h[3]} % 10 < 9 THEN {d.date_plus("1950-01-01", f"{h[0]} % 20000")} END,
  CASE WHEN {h[11]} % 2 = 0 THEN {h[2]} % 11 END,
  {d.json_one("industry", _pick(h[9], INDUSTRIES))}
FROM (SELECT seq.n AS n, {hashes} FROM {from_}) AS r
"""


def events_sql(d: Dialect, count: int, customers: int) -> str:
    """INSERT ... SELECT generating ``count`` events for random customers over the last 180 days.

    Names: 2% referral_sent, 10% activated, 25% email_clicked, 63% page_viewed.
    """
    with_, from_ = d.numbers(count)
    who, kind, when = _h("seq.n", 2001), _h("seq.n", 2002), _h("seq.n", 2003)
    return f"""
INSERT INTO event (customer_id, name, occurred_at, properties)
{with_}SELECT
  {d.customer_id(f"1 + r.who % {customers}")},
  CASE WHEN r.kind % 1000 < 20 THEN 'referral_sent' WHEN r.kind % 1000 < 120 THEN 'activated'
       WHEN r.kind % 1000 < 370 THEN 'email_clicked' ELSE 'page_viewed' END,
  {d.ago(f"r.age % {180 * DAY}")},
  {d.empty_json()}
FROM (SELECT {who} AS who, {kind} AS kind, {when} AS age FROM {from_}) AS r
"""


EVENT_INDEX = "CREATE INDEX ix_event_customer_name_time ON event (customer_id, name, occurred_at)"


# -- hand-written queries -------------------------------------------------------------------------
# The same rules as playbooks/lifecycle.yaml, written directly in SQL:
#   segments: strategic (clv >= 10000 or plan = enterprise), growth (clv >= 1000), self_serve (else)
#   stages:   loyalty (orders >= 10 or a referral_sent event in [now - 90d, now]), retention (orders >= 2),
#             conversion (orders = 1), acquisition (orders = 0 and days_since(signed_up_at) <= 30,
#             i.e. signed_up_at > now - 31 days), else none
SEGMENTS = ("strategic", "growth", "self_serve")
STAGES = ("loyalty", "retention", "conversion", "acquisition", None)
#: Every (segment, stage) cell, in the order the conditional-aggregation queries return them.
CELLS = tuple((s, t) for s in SEGMENTS for t in STAGES)

_SEGMENT = """CASE WHEN c.clv >= 10000 OR c.plan = 'enterprise' THEN 'strategic'
                WHEN c.clv >= 1000 THEN 'growth'
                ELSE 'self_serve' END"""
_REFERRED = "e.name = :referral AND e.occurred_at >= :referral_since AND e.occurred_at <= :now"
#: How "has a referral_sent event in the window" is asked: (condition, join added to FROM).
_MEMBERSHIP = {
    # one correlated probe of (customer_id, name, occurred_at) per customer with fewer than 10 orders
    "exists": (f"EXISTS (SELECT 1 FROM event e WHERE e.customer_id = c.id AND {_REFERRED})", ""),
    # the referrers collected once (SQLite: an ephemeral index; PostgreSQL: a hashed subplan)
    "in": (f"c.id IN (SELECT e.customer_id FROM event e WHERE {_REFERRED})", ""),
    # the referrers as a derived table, joined once
    "join": (
        "r.customer_id IS NOT NULL",
        f"\n        LEFT JOIN (SELECT DISTINCT e.customer_id FROM event e WHERE {_REFERRED}) AS r"
        "\n               ON r.customer_id = c.id",
    ),
}
#: name -> (membership test, aggregation): "group" is GROUP BY segment, stage; "filter" counts each
#: known cell with count(*) FILTER (...) over a subquery the planner may not flatten, so no sort or
#: hash table is needed (one row back, turned into the same cells in Python).
HAND_WRITTEN: dict[str, tuple[str, str]] = {
    "exists": ("exists", "group"),
    "in_subquery": ("in", "group"),
    "left_join": ("join", "group"),
    "exists_filter": ("exists", "filter"),
    "in_filter": ("in", "filter"),
}
#: A LIMIT/OFFSET keeps the subquery from being merged into the aggregate (which would evaluate the
#: CASE expressions once per FILTER): SQLite has no OFFSET without LIMIT, PostgreSQL no LIMIT -1.
_FENCE = {"sqlite": "LIMIT -1", "postgresql": "OFFSET 0"}


def hand_sql(variant: str, backend: str) -> str:
    membership, aggregation = HAND_WRITTEN[variant]
    loyal, join = _MEMBERSHIP[membership]
    evaluated = f"""SELECT {_SEGMENT} AS segment,
           CASE WHEN c.orders_count >= 10 OR {loyal} THEN 'loyalty'
                WHEN c.orders_count >= 2 THEN 'retention'
                WHEN c.orders_count = 1 THEN 'conversion'
                WHEN c.orders_count = 0 AND c.signed_up_at > :signed_up_after THEN 'acquisition' END AS stage
    FROM customer c{join}"""
    if aggregation == "group":
        return (
            f"SELECT segment, stage, COUNT(*) AS n FROM (\n    {evaluated}\n) AS evaluated\n"
            "GROUP BY segment, stage"
        )
    counts = ",\n       ".join(
        f"COUNT(*) FILTER (WHERE segment = '{s}' AND stage {'IS NULL' if t is None else '= ' + repr(t)})"
        for s, t in CELLS
    )
    return f"SELECT {counts}\nFROM (\n    {evaluated}\n    {_FENCE[backend]}\n) AS evaluated"


def hand_params() -> dict[str, Any]:
    naive = NOW.astimezone(UTC).replace(tzinfo=None)
    return {
        "now": naive,
        "referral": "referral_sent",
        "referral_since": naive - timedelta(days=90),
        "signed_up_after": naive - timedelta(days=31),
    }


def hand_statement(sql: str) -> Any:
    from sqlalchemy import DateTime, bindparam, text

    # typed binds: on SQLite the DateTime type writes the same text form the columns hold
    return text(sql).bindparams(
        bindparam("now", type_=DateTime()),
        bindparam("referral_since", type_=DateTime()),
        bindparam("signed_up_after", type_=DateTime()),
    )


Cells = dict[tuple[str | None, str | None], int]


def run_library(conn: Any) -> Cells:
    from automation.plan.evaluate import evaluate
    from automation.playbook.models import load_playbook
    from automation.rules.compiled import compile_playbook

    return dict(evaluate(conn, compile_playbook(load_playbook(PLAYBOOK), NOW)).matrix)


def run_hand(conn: Any, variant: str) -> Cells:
    rows = conn.execute(hand_statement(hand_sql(variant, conn.dialect.name)), hand_params()).all()
    if HAND_WRITTEN[variant][1] == "group":
        return {(row[0], row[1]): int(row[2]) for row in rows}
    return {cell: int(n) for cell, n in zip(CELLS, rows[0], strict=True) if n}


# -- prototypes of library changes (NOT the library) -------------------------------------------------
# Each starts from the library's own compiled playbook (compile_playbook), changes one thing in how
# evaluate() runs or shapes its query, and must return the same counts.
def _library_query(
    conn: Any, hoist_events: bool = False, filter_counts: bool = False
) -> tuple[Any, Callable[[Any], Cells]]:
    """A prototype of ``automation.plan.evaluate.evaluate``'s query, and how to read its result."""
    from sqlalchemy import and_, func, select
    from sqlalchemy.sql import visitors
    from sqlalchemy.sql.selectable import Exists

    from automation.db.tables import CUSTOMER
    from automation.playbook.models import load_playbook
    from automation.rules.compiled import compile_playbook
    from automation.rules.compiler import EVENT

    compiled = compile_playbook(load_playbook(PLAYBOOK), NOW)
    segment, stage = compiled.segment, compiled.stage
    source: Any = CUSTOMER
    if hoist_events:
        # events(...) > 0 compiles to a correlated EXISTS; here each distinct one becomes a LEFT JOIN to
        # the DISTINCT customer ids that have such events, and the EXISTS a test for a joined row
        correlation = EVENT.c.customer_id == CUSTOMER.c.id
        joined: dict[int, Any] = {}

        def swap(element: Any) -> Any:
            if not isinstance(element, Exists):
                return None
            inner = element.element.element  # Exists -> ScalarSelect -> Select
            rest = [c for c in inner.whereclause.clauses if not c.compare(correlation)]
            key = id(element)  # the same EXISTS reached from segment and from stage joins once
            if key not in joined:
                joined[key] = (
                    select(EVENT.c.customer_id).where(*rest).distinct().subquery(f"has_events_{len(joined)}")
                )
            return joined[key].c.customer_id.is_not(None)

        segment = visitors.replacement_traverse(segment, {}, swap)
        stage = visitors.replacement_traverse(stage, {}, swap)
        for sub in joined.values():
            source = source.outerjoin(sub, sub.c.customer_id == CUSTOMER.c.id)
    inner = select(segment.label("segment"), stage.label("stage")).select_from(source)
    if not filter_counts:
        cells = inner.subquery("evaluated")
        query = select(cells.c.segment, cells.c.stage, func.count()).group_by(cells.c.segment, cells.c.stage)
        return query, lambda rows: {(row[0], row[1]): int(row[2]) for row in rows}
    pb = compiled.loaded.playbook
    has_catch_all = any(s.when is None for s in pb.segments)
    names = [
        (s, t)
        for s in [*pb.segment_names, *([] if has_catch_all else [None])]
        for t in [*pb.stage_names, None]
    ]
    fenced = (inner.limit(-1) if conn.dialect.name == "sqlite" else inner.offset(0)).subquery("evaluated")

    def same(column: Any, value: str | None) -> Any:
        return column.is_(None) if value is None else column == value

    query = select(
        *(func.count().filter(and_(same(fenced.c.segment, s), same(fenced.c.stage, t))) for s, t in names)
    )
    return query, lambda rows: {cell: int(n) for cell, n in zip(names, rows[0], strict=True) if n}


@dataclass(frozen=True)
class Prototype:
    backends: tuple[str, ...]
    describe: str
    settings: tuple[str, ...] = ()  # SET LOCAL statements run first, in the same transaction
    hoist_events: bool = False
    filter_counts: bool = False


PROTOTYPES: dict[str, Prototype] = {
    "library_jit_off": Prototype(
        ("postgresql",), "evaluate() unchanged, under SET LOCAL jit = off", ("SET LOCAL jit = off",)
    ),
    "library_filter_counts": Prototype(  # on SQLite the library counts this way already
        ("postgresql",),
        "compiled rules unchanged; each known cell counted with COUNT(*) FILTER over a fenced subquery",
        filter_counts=True,
    ),
    "library_filter_counts_jit_off": Prototype(
        ("postgresql",),
        "library_filter_counts under SET LOCAL jit = off",
        ("SET LOCAL jit = off",),
        filter_counts=True,
    ),
    "library_hoisted_events": Prototype(
        ("sqlite", "postgresql"),
        "compiled rules with each events(...) EXISTS hoisted into a LEFT JOIN of distinct customer ids",
        hoist_events=True,
    ),
}


def run_prototype(conn: Any, name: str) -> Cells:
    proto = PROTOTYPES[name]
    conn.rollback()  # a fresh transaction: SET LOCAL lasts until it ends
    try:
        for statement in proto.settings:
            conn.exec_driver_sql(statement)
        if not (proto.hoist_events or proto.filter_counts):
            return run_library(conn)
        query, read = _library_query(conn, proto.hoist_events, proto.filter_counts)
        return read(conn.execute(query).all())
    finally:
        conn.rollback()


# -- backends ---------------------------------------------------------------------------------------
@dataclass
class Backend:
    name: str
    url: str
    sqlite_file: Path | None = None
    database: str | None = None
    admin_url: str | None = None


def _sized(args: argparse.Namespace) -> str:
    size = (args.customers, args.events)
    return "" if size == DEFAULT_SIZE else f"_{args.customers}_{args.events}"


def _unlink_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


@contextmanager
def timed(label: str, into: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    into[key] = round(time.perf_counter() - start, 3)
    log(f"  {label}: {into[key]:.1f} s")


def prepare(backend: str, args: argparse.Namespace) -> tuple[Backend, dict[str, Any]]:
    """Create (or reuse) the database, load the data, return the backend and generation figures."""
    from sqlalchemy import text

    from automation.db.connect import make_engine, upgrade

    if backend == "sqlite":
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = SQLITE_FILE.with_stem(SQLITE_FILE.stem + _sized(args))
        b = Backend("sqlite", f"sqlite:///{path}", sqlite_file=path)
        if path.exists() and not (args.reuse and _has_data(b, args)):
            _unlink_sqlite(path)
    else:
        admin = PG_ADMIN_URL
        database = PG_DATABASE + _sized(args)
        b = Backend(
            "postgresql", admin.rsplit("/", 1)[0] + "/" + database, database=database, admin_url=admin
        )
        engine = make_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": database}
            ).first()
            if exists and not (args.reuse and _has_data(b, args)):
                conn.execute(text(f'DROP DATABASE "{database}" WITH (FORCE)'))
                exists = None
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{database}"'))
        engine.dispose()

    if args.reuse and _has_data(b, args):
        log(f"{backend}: reusing the existing database ({args.customers:,} customers)")
        return b, {"reused": True}

    log(f"{backend}: generating {args.customers:,} customers and {args.events:,} events")
    figures: dict[str, Any] = {"reused": False}
    engine = make_engine(b.url)
    total = time.perf_counter()
    with timed("schema (automation.db.connect.upgrade)", figures, "schema_s"):
        upgrade(engine)
    d = Dialect(backend)
    with engine.connect() as conn:
        if backend == "sqlite":
            # bulk load: the generator only produces valid customer ids; skip the per-row FK lookups
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
        else:
            conn.exec_driver_sql("SET session_replication_role = replica")  # no per-row FK triggers
            conn.exec_driver_sql("SET maintenance_work_mem = '512MB'")
        # the index is part of the schema: drop it for the bulk load and build it again afterwards
        conn.exec_driver_sql("DROP INDEX ix_event_customer_name_time")
        conn.commit()
        with timed("customers", figures, "customers_s"):
            run_sql(conn, customers_sql(d, args.customers))
            conn.commit()
        with timed("events", figures, "events_s"):
            run_sql(conn, events_sql(d, args.events, args.customers))
            conn.commit()
        with timed("index ix_event_customer_name_time", figures, "index_s"):
            conn.exec_driver_sql(EVENT_INDEX)
            conn.commit()
        if backend == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
    with engine.connect() as conn:
        if backend == "sqlite":
            with timed("ANALYZE", figures, "analyze_s"):
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            conn.commit()
            raw = conn.execution_options(isolation_level="AUTOCOMMIT")
            with timed("VACUUM ANALYZE", figures, "analyze_s"):
                raw.exec_driver_sql("VACUUM ANALYZE customer")
                raw.exec_driver_sql("VACUUM ANALYZE event")
    engine.dispose()
    figures["total_s"] = round(time.perf_counter() - total, 3)
    log(f"{backend}: generation took {figures['total_s']:.1f} s")
    return b, figures


def _has_data(b: Backend, args: argparse.Namespace) -> bool:
    from sqlalchemy import text

    from automation.db.connect import make_engine

    try:
        engine = make_engine(b.url, pool_pre_ping=False) if b.name == "postgresql" else make_engine(b.url)
        with engine.connect() as conn:
            customers = conn.execute(text("SELECT count(*) FROM customer")).scalar_one()
            events = conn.execute(text("SELECT count(*) FROM event")).scalar_one()
        engine.dispose()
    except Exception:
        return False
    return bool(customers == args.customers and events == args.events)


def drop(b: Backend) -> None:
    from sqlalchemy import text

    from automation.db.connect import make_engine

    if b.sqlite_file is not None:
        _unlink_sqlite(b.sqlite_file)
        return
    assert b.admin_url is not None
    engine = make_engine(b.admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{b.database}" WITH (FORCE)'))
    engine.dispose()


# -- measuring ---------------------------------------------------------------------------------------
@dataclass
class Series:
    times: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "min_s": round(min(self.times), 4),
            "median_s": round(statistics.median(self.times), 4),
            "runs_s": [round(t, 4) for t in self.times],
        }


def capture_sql(conn: Any, run: Callable[[], Any]) -> tuple[str, Any]:
    """The last statement and parameters ``run`` sends (for EXPLAIN), captured at the cursor."""
    from sqlalchemy import event

    seen: list[tuple[str, Any]] = []

    def listener(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    engine = conn.engine
    event.listen(engine, "before_cursor_execute", listener)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    return seen[-1]


def explain(conn: Any, backend: str, analyze: bool, prototypes: list[str]) -> dict[str, Any]:
    """Query plans of every query (PostgreSQL: EXPLAIN, or EXPLAIN ANALYZE with --explain-analyze)."""
    prefix = (
        "EXPLAIN QUERY PLAN "
        if backend == "sqlite"
        else ("EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN ")
    )
    statement, parameters = capture_sql(conn, lambda: run_library(conn))
    plans: dict[str, Any] = {"library_sql": {"statement": statement, "parameters": parameters}}
    plans["library"] = [
        _plan_line(row, backend) for row in conn.exec_driver_sql(prefix + statement, parameters)
    ]
    for variant in HAND_WRITTEN:
        rows = conn.execute(hand_statement(prefix + hand_sql(variant, backend)), hand_params())
        plans[variant] = [_plan_line(row, backend) for row in rows]
    for name in prototypes:
        proto = PROTOTYPES[name]
        statement, parameters = capture_sql(conn, lambda name=name: run_prototype(conn, name))
        try:
            for setting in proto.settings:
                conn.exec_driver_sql(setting)
            rows = conn.exec_driver_sql(prefix + statement, parameters).fetchall()
        finally:
            conn.rollback()
        plans[name] = [_plan_line(row, backend) for row in rows]
    return plans


def _plan_line(row: Any, backend: str) -> str:
    if backend == "sqlite":  # (id, parent, notused, detail)
        return f"{row[0]}<-{row[1]} {row[3]}"
    return str(row[0])


def benchmark(b: Backend, args: argparse.Namespace) -> dict[str, Any]:
    from automation.db.connect import make_engine

    engine = make_engine(b.url)
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        # one untimed run of everything: warms caches, checks that every query agrees
        log(f"{b.name}: warm-up and correctness check")
        reference = run_library(conn)
        for variant in HAND_WRITTEN:
            got = run_hand(conn, variant)
            if got != reference:
                raise SystemExit(
                    f"{b.name}: hand-written {variant!r} disagrees with the library\n"
                    f"library: {sorted(reference.items(), key=str)}\n"
                    f"{variant}: {sorted(got.items(), key=str)}"
                )
        out["counts"] = [
            {"segment": s, "stage": t, "customers": n} for (s, t), n in sorted(reference.items(), key=str)
        ]
        total = sum(reference.values())
        if total != args.customers:
            raise SystemExit(f"{b.name}: counts add up to {total:,}, expected {args.customers:,}")
        empty = [
            name for name in ("strategic", "growth", "self_serve") if not any(s == name for s, _ in reference)
        ] + [
            name
            for name in ("loyalty", "retention", "conversion", "acquisition", None)
            if not any(t == name for _, t in reference)
        ]
        if empty:
            log(f"{b.name}: WARNING: nothing in {empty}")

        runners: dict[str, Callable[[], Cells]] = {
            "library": lambda: run_library(conn),
            **{v: (lambda v=v: run_hand(conn, v)) for v in HAND_WRITTEN},  # type: ignore[misc]
        }
        prototypes = [p for p, proto in PROTOTYPES.items() if args.prototypes and b.name in proto.backends]
        runners.update({p: (lambda p=p: run_prototype(conn, p)) for p in prototypes})  # type: ignore[misc]
        series = {name: Series() for name in runners}
        out["load_average_before"] = list(os.getloadavg())
        order = list(runners)
        for k in range(args.repeat):
            # alternate: library first on even rounds, last on odd rounds
            names = order if k % 2 == 0 else list(reversed(order))
            for name in names:
                start = time.perf_counter()
                got = runners[name]()
                elapsed = time.perf_counter() - start
                series[name].times.append(elapsed)
                assert got == reference, f"{b.name}: {name} changed its answer in round {k + 1}"
                log(f"{b.name}: round {k + 1}/{args.repeat} {name:<30} {elapsed:7.3f} s")
        out["load_average_after"] = list(os.getloadavg())
        timings = {name: s.summary() for name, s in series.items()}
        out["timings"] = {name: t for name, t in timings.items() if name not in PROTOTYPES}
        if any(name in PROTOTYPES for name in timings):
            out["prototypes"] = {
                name: {
                    **t,
                    "change": PROTOTYPES[name].describe,
                    "ratio_median": round(
                        t["median_s"] / min(timings[v]["median_s"] for v in HAND_WRITTEN), 3
                    ),
                }
                for name, t in timings.items()
                if name in PROTOTYPES
            }
        hand = {v: out["timings"][v] for v in HAND_WRITTEN}
        best = min(hand, key=lambda v: hand[v]["median_s"])
        lib = out["timings"]["library"]
        out["hand_written"] = {
            "variant": best,
            "sql": hand_sql(best, b.name),
            **hand[best],
        }
        out["ratio_median"] = round(lib["median_s"] / hand[best]["median_s"], 3)
        out["ratio_min"] = round(lib["min_s"] / hand[best]["min_s"], 3)
        # each round's library time against the best formulation's time in the same round
        out["ratio_per_round"] = [
            round(a / h, 3) for a, h in zip(series["library"].times, series[best].times, strict=True)
        ]
        out["ratio_per_variant"] = {v: round(lib["median_s"] / hand[v]["median_s"], 3) for v in HAND_WRITTEN}
        log(f"{b.name}: plans")
        out["plans"] = explain(conn, b.name, args.explain_analyze, prototypes)
    engine.dispose()
    out["memory"] = {
        "library": peak_memory(b, "library"),
        "hand_written": peak_memory(b, out["hand_written"]["variant"]),
        "prototypes": {p: peak_memory(b, p) for p in prototypes},
    }
    return out


def peak_memory(b: Backend, what: str) -> dict[str, Any]:
    """Peak RSS of a fresh interpreter that imports, connects and runs only ``what`` once."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", what, "--url", b.url]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    log(
        f"{b.name}: peak RSS running {what}: {result['peak_rss_mb']:.1f} MB "
        f"(after imports and connecting: {result['baseline_rss_mb']:.1f} MB)"
    )
    return result


def child(what: str, url: str) -> None:
    # everything the evaluation needs is imported before the baseline is taken
    import automation.plan.evaluate
    import automation.playbook.models  # noqa: F401
    from automation.db.connect import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        baseline = _maxrss_mb()
        start = time.perf_counter()
        if what == "library":
            cells = run_library(conn)
        elif what in PROTOTYPES:
            cells = run_prototype(conn, what)
        else:
            cells = run_hand(conn, what)
        elapsed = time.perf_counter() - start
    engine.dispose()
    print(
        json.dumps(
            {
                "what": what,
                "seconds": round(elapsed, 4),
                "baseline_rss_mb": round(baseline, 1),
                "peak_rss_mb": round(_maxrss_mb(), 1),
                "customers": sum(cells.values()),
            }
        )
    )


def _maxrss_mb() -> float:
    """This process's peak resident set size.

    VmHWM (Linux) belongs to this process's own address space. ``ru_maxrss`` is only the fallback:
    on Linux it also carries the peak of the parent process at the moment this one was spawned.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


# -- reporting ---------------------------------------------------------------------------------------
def machine(backends: list[Backend]) -> dict[str, Any]:
    import sqlite3

    import sqlalchemy
    from sqlalchemy import text

    from automation.db.connect import make_engine

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
    }
    for b in backends:
        if b.name == "postgresql":
            engine = make_engine(b.url)
            with engine.connect() as conn:
                info["postgresql"] = conn.execute(text("SHOW server_version")).scalar_one()
                info["postgresql_settings"] = {
                    name: conn.execute(text(f"SHOW {name}")).scalar_one()
                    for name in (
                        "shared_buffers",
                        "work_mem",
                        "effective_cache_size",
                        "max_parallel_workers_per_gather",
                        "jit",
                    )
                }
            engine.dispose()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def summary_table(results: dict[str, Any]) -> str:
    lines = [
        "| Backend | Generation | Library min / median | Hand-written min / median (variant) "
        "| Ratio (median) | Ratio per round | Peak RSS library | Goal met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["backends"].items():
        lib, hand = r["timings"]["library"], r["hand_written"]
        gen = r["generation"].get("total_s")
        rss = r["memory"]["library"]["peak_rss_mb"]
        rounds = r["ratio_per_round"]
        ok = max(rounds) <= GOAL_RATIO and rss < GOAL_RSS_MB
        lines.append(
            f"| {name} | {f'{gen:.0f} s' if gen else 'reused'} "
            f"| {lib['min_s']:.2f} s / {lib['median_s']:.2f} s "
            f"| {hand['min_s']:.2f} s / {hand['median_s']:.2f} s ({hand['variant']}) "
            f"| {r['ratio_median']:.2f}x | {min(rounds):.2f}-{max(rounds):.2f}x "
            f"| {rss:.0f} MB | {'yes' if ok else 'no'} |"
        )
    return "\n".join(lines)


def detail_table(results: dict[str, Any]) -> str:
    lines = ["| Backend | Query | min | median | vs best hand-written (median) |", "|---|---|---|---|---|"]
    for name, r in results["backends"].items():
        best = r["hand_written"]["median_s"]
        rows = [*r["timings"].items(), *((f"{p} (prototype)", t) for p, t in r.get("prototypes", {}).items())]
        for query, t in rows:
            ratio = t["median_s"] / best
            lines.append(f"| {name} | {query} | {t['min_s']:.3f} s | {t['median_s']:.3f} s | {ratio:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each query (alternating)")
    parser.add_argument("--keep", action="store_true", help="keep the generated databases")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse a kept database of the same size instead of generating"
    )
    parser.add_argument(
        "--explain-analyze", action="store_true", help="PostgreSQL: EXPLAIN (ANALYZE, BUFFERS) the queries"
    )
    parser.add_argument(
        "--no-prototypes",
        dest="prototypes",
        action="store_false",
        help="PostgreSQL: skip timing the library under prototype planner settings",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "evaluate.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        child(args.child, args.url)
        return

    names = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results: dict[str, Any] = {
        "now": NOW.isoformat(),
        "playbook": str(PLAYBOOK.relative_to(ROOT)),
        "customers": args.customers,
        "events": args.events,
        "repeat": args.repeat,
        "goal": {"max_ratio": GOAL_RATIO, "max_peak_rss_mb": GOAL_RSS_MB},
        "backends": {},
    }
    prepared: list[Backend] = []
    try:
        for name in names:
            b, generation = prepare(name, args)
            prepared.append(b)
            r = benchmark(b, args)
            results["backends"][name] = {"generation": generation, **r}
        results["machine"] = machine(prepared)
    finally:
        if not args.keep:
            for b in prepared:
                drop(b)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")

    print()
    print(
        f"{args.customers:,} customers, {args.events:,} events, {args.repeat} timed runs per query, "
        f"now={NOW:%Y-%m-%dT%H:%M:%SZ}"
    )
    print()
    print(summary_table(results))
    print()
    print(detail_table(results))
    print()
    for name, r in results["backends"].items():
        print(f"{name}: counts")
        for cell in r["counts"]:
            print(f"  {cell['segment'] or '-':<11} {cell['stage'] or '-':<12} {cell['customers']:>9,}")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
