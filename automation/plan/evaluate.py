"""Evaluate a playbook's segments and stages in the database, and find the customers who changed.

``evaluate`` counts customers per segment and stage (the preview). ``transitions`` streams the
customers whose segment or stage differs from the stored ``customer_state`` (all of them before the
first tick). A tick first evaluates into its table (``materialize``, ``changes_table``), so that it can
write ``customer_state`` from it in the database while the planner reads the transitions back.
Customers are never loaded into Python to test a rule: the rules are compiled SQL
(``automation.rules.compiled``), and only what changed comes back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Boolean, Connection, and_, func, insert, or_, select
from sqlalchemy.sql.elements import ColumnElement

from automation.db.explain import hashes_every_subplan, plan_text
from automation.db.in_list import PgArray, among
from automation.db.tables import CUSTOMER, STATE
from automation.plan.alongside import Background
from automation.plan.records import (
    BATCH,
    CHANGES,
    CONTACT_COLUMNS,
    TRANSITION_COLUMNS,
    Contact,
    Counts,
    Transition,
    changes_table,
)
from automation.rules.compiled import CompiledPlaybook


def evaluate(
    conn: Connection, compiled: CompiledPlaybook, customer_ids: Sequence[str] | None = None
) -> Counts:
    """Segment and stage of every customer, counted in the database in one query.

    SQLite counts each segment x stage cell with ``COUNT(*) FILTER`` (it has no hash aggregate, and
    sorting a million rows for GROUP BY costs as much as evaluating them); PostgreSQL groups. Over
    everyone, event tests are asked once for all customers, not per customer: on SQLite and, when the
    planner hashes every set, on PostgreSQL as ``IN (SELECT ...)``, otherwise as joins.
    """
    segment, stage, source = _scan(conn, compiled, customer_ids)
    inner = select(segment.label("segment"), stage.label("stage")).select_from(source)
    if customer_ids is not None:
        inner = inner.where(among(CUSTOMER.c.id, customer_ids, conn.dialect.name))
    if conn.dialect.name == "sqlite":
        pb = compiled.loaded.playbook
        segments: list[str | None] = list(pb.segment_names)
        if all(s.when is not None for s in pb.segments):
            segments.append(None)
        keys = [(seg, st) for seg in segments for st in [*pb.stage_names, None]]
        rows = inner.limit(-1).subquery("evaluated")  # LIMIT keeps SQLite from re-running the CASEs per count
        columns = [
            func.count().filter(and_(_same(rows.c.segment, seg), _same(rows.c.stage, st))) for seg, st in keys
        ]
        counts = conn.execute(select(*columns)).one()
        return Counts({key: int(n) for key, n in zip(keys, counts, strict=True) if n})
    query = _grouped(inner)
    if customer_ids is None and compiled.scan_joins and compiled.listed_stage is not None:
        # IN (SELECT ...) when the planner would hash every event set once; when it expects a set not
        # to fit hash_mem it runs that subquery again per customer: then the joins (decision 0040).
        # Without event tests (no joins) both forms are the same query.
        assert compiled.listed_segment is not None
        segment, stage = compiled.listed_segment.label("segment"), compiled.listed_stage.label("stage")
        listed = _grouped(select(segment, stage).select_from(CUSTOMER))
        if hashes_every_subplan(plan_text(conn, listed)):
            query = listed
    return Counts({(row[0], row[1]): int(row[2]) for row in conn.execute(query)})


def _grouped(inner: Any) -> Any:
    """PostgreSQL's count of each (segment, stage) of ``inner``."""
    cells = inner.subquery("evaluated")
    return select(cells.c.segment, cells.c.stage, func.count()).group_by(cells.c.segment, cells.c.stage)


def _same(column: Any, value: str | None) -> ColumnElement[bool]:
    result: ColumnElement[bool] = column.is_(None) if value is None else column == value
    return result


def _scan(
    conn: Connection, compiled: CompiledPlaybook, customer_ids: Sequence[str] | None, only: Any = None
) -> tuple[ColumnElement[Any], ColumnElement[Any], Any]:
    """Segment, stage and FROM for a query over customers: for a full scan, the join form on
    PostgreSQL and the IN form on SQLite (event tests asked once for everyone, not per customer)."""
    full = customer_ids is None and only is None
    if conn.dialect.name == "postgresql" and full and compiled.scan_stage is not None:
        assert compiled.scan_segment is not None
        return compiled.scan_segment, compiled.scan_stage, compiled.scan_from()
    if conn.dialect.name == "sqlite" and full and compiled.listed_stage is not None:
        assert compiled.listed_segment is not None
        return compiled.listed_segment, compiled.listed_stage, CUSTOMER
    return compiled.segment, compiled.stage, CUSTOMER


def evaluated(
    conn: Connection,
    compiled: CompiledPlaybook,
    customer_ids: Sequence[str] | None,
    only: Any,
    recurring: bool,
) -> tuple[Any, ColumnElement[bool]]:
    """Each customer's segment, stage, stored state and contact (with ``recurring``, whether each
    recurring rule matches), behind a fence; and the condition that their segment or stage changed."""
    segment_expr, stage_expr, customers = _scan(conn, compiled, customer_ids, only)
    rules = compiled.loaded.playbook.recurring if recurring else []
    joined = customers.outerjoin(
        STATE, and_(STATE.c.playbook == compiled.name, STATE.c.customer_id == CUSTOMER.c.id)
    )
    inner = select(
        CUSTOMER.c.id.label("customer_id"),
        segment_expr.label("segment"),
        stage_expr.label("stage"),
        STATE.c.segment.label("previous_segment"),
        STATE.c.stage.label("previous_stage"),
        STATE.c.customer_id.label("known"),
        *(CUSTOMER.c[name].label(f"contact_{name}") for name in CONTACT_COLUMNS[1:]),
        *(compiled.recurring[rule.name].label(f"recurring_{i}") for i, rule in enumerate(rules)),
    ).select_from(joined)
    if customer_ids is not None:
        inner = inner.where(among(CUSTOMER.c.id, customer_ids, conn.dialect.name))
    if only is not None:
        inner = inner.where(CUSTOMER.c.id.in_(only))
    # a fence, so the database computes each customer's segment and stage once, not once per test below
    fenced = inner.limit(-1) if conn.dialect.name == "sqlite" else inner.offset(0)
    rows = fenced.subquery("evaluated")
    changed = or_(
        and_(rows.c.known.is_(None), or_(rows.c.segment.is_not(None), rows.c.stage.is_not(None))),
        rows.c.segment.is_distinct_from(rows.c.previous_segment),
        rows.c.stage.is_distinct_from(rows.c.previous_stage),
    )
    return rows, changed


def materialize(
    conn: Connection,
    compiled: CompiledPlaybook,
    customer_ids: Sequence[str] | None = None,
    only: Any = None,
    helper: Connection | None = None,
) -> None:
    """Evaluate into the tick's table (``changes_table``, temporary, per connection), in the database.

    It holds the customers whose segment or stage changed (``changed``), so a tick can write
    ``customer_state`` from it with INSERT ... SELECT and then plan from it (``transitions`` with
    ``materialized``), and the customers each recurring rule matches now (``recurring_<i>``, in the
    playbook's order), so the recurring rules need not look them up again. ``only`` (a SELECT of
    customer ids) limits the evaluation to those customers (an incremental tick).

    ``helper`` (PostgreSQL, with ``only``): a second connection that evaluates half of the customers
    at the same time, on another core; its rows are then added to the table.
    """
    table = changes_table(len(compiled.loaded.playbook.recurring))
    table.drop(conn, checkfirst=True)
    table.create(conn)
    names = [c.name for c in table.c]
    if helper is None or only is None or customer_ids is not None:
        conn.execute(insert(table).from_select(names, _changes(conn, compiled, customer_ids, only)))
        return
    ids = [customer_id for (customer_id,) in conn.execute(only)]
    theirs = ids[len(ids) // 2 :]
    other = Background(
        lambda: helper.execute(_changes(helper, compiled, theirs, None)).all(), "tick-evaluation"
    )
    try:
        # the rest through ``only`` itself, not as an array: the planner then looks each customer's
        # state up by key (estimating thousands of ids, it scans all of customer_state to hash it)
        found = only.subquery("candidates")
        mine = select(found.c[0]).where(~among(found.c[0], theirs, conn.dialect.name))
        conn.execute(insert(table).from_select(names, _changes(conn, compiled, None, mine)))
    finally:  # each connection serves one thread at a time, also on the way out
        other.join()
    rows = other.result()
    if rows:  # one array per column, unnested: one statement however many rows
        casts = ", ".join(f"%s::{'boolean' if isinstance(c.type, Boolean) else 'text'}[]" for c in table.c)
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({casts})",
            tuple(PgArray(column) for column in zip(*rows, strict=True)),
        )


def _changes(
    conn: Connection, compiled: CompiledPlaybook, customer_ids: Sequence[str] | None, only: Any
) -> Any:
    """The evaluated customers a tick keeps: those whose segment or stage changed, and those a
    recurring rule matches (``changes_table``'s columns, in its order)."""
    rows, changed = evaluated(conn, compiled, customer_ids, only, recurring=True)
    flags = [rows.c[f"recurring_{i}"] for i in range(len(compiled.loaded.playbook.recurring))]
    return select(*(rows.c[name] for name in TRANSITION_COLUMNS), changed.label("changed"), *flags).where(
        or_(changed, *flags)
    )


def transitions(
    conn: Connection,
    compiled: CompiledPlaybook,
    customer_ids: Sequence[str] | None = None,
    materialized: bool = False,
    only: Any = None,
) -> Iterator[Transition]:
    """Customers whose segment or stage is not what ``customer_state`` held, streamed in id order.

    With ``materialized`` they are read from the tick's table (see ``materialize``), so the caller
    may write ``customer_state`` before and while reading them (a tick does; the preview evaluates as
    it streams). ``only`` (a SELECT of customer ids) limits the evaluation to those customers.
    """
    if materialized:
        table = CHANGES
        source: Any = (
            select(*(table.c[name] for name in TRANSITION_COLUMNS))
            .where(table.c.changed)
            .order_by(table.c.customer_id)
        )
    else:
        rows, changed = evaluated(conn, compiled, customer_ids, only, recurring=False)
        source = select(*(rows.c[name] for name in TRANSITION_COLUMNS)).where(changed)
        source = source.order_by(rows.c.customer_id)
    touch_of = {s.name: s.touch for s in compiled.loaded.playbook.segments}
    result = conn.execute(source.execution_options(yield_per=BATCH))
    for customer_id, segment, stage, previous_segment, previous_stage, known, *contact in result:
        touch = touch_of.get(segment) if segment else None
        yield Transition(
            customer_id,
            segment,
            touch,
            stage,
            previous_segment,
            previous_stage,
            known is not None,
            Contact(customer_id, *contact),
        )
