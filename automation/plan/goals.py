"""Conversions: the goals of a playbook detected by its tick, in the database, for the tick's candidates.

A goal (``goal:`` for the playbook, ``goals: {stage: ...}`` for a stage's program) is a rule compiled like
any other (``CompiledPlaybook.goals``). At a tick, for every enrollment of the playbook (of the stage, for
a stage's goal) that started at most ``within`` before ``now`` and has no conversion yet, the goal rule is
evaluated on the customer; where it holds, one INSERT ... SELECT records the conversion with the
enrollment's cohort, its start as ``entered_at``, the tick's ``now`` as ``converted_at``, and the
program's last message sent before ``now`` (last-touch attribution; none for a held-out customer, who
was sent nothing). The UNIQUE key (playbook, goal, customer, entered_at) and ON CONFLICT DO NOTHING make
a repeated tick record nothing new.

Windows are absolute durations from entry (``7d`` is 168 hours, also across a change of the clocks),
so neither the customer's time zone nor the playbook's changes when a window closes.

An incremental tick evaluates the goals of its candidates only: the customers written since the last
tick (the change log) and those whose segment or stage rules may have flipped, plus the customers for
whom a time-dependent part of a goal rule may have flipped (``CompiledPlaybook.goal_clock``). A full tick
evaluates every enrollment in a window.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, String, and_, exists, literal, select, union
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from automation.db.tables import CONVERSION, CUSTOMER, ENROLLMENT, OUTBOX
from automation.db.types import UTCDateTime, to_utc_naive
from automation.plan.incremental import CANDIDATES, Window, crossings
from automation.rules.compiled import CompiledGoal, CompiledPlaybook

#: The columns a conversion is inserted with, in the order of ``_entries``'s SELECT.
COLUMNS = (
    "playbook",
    "goal",
    "customer_id",
    "enrollment_id",
    "cohort",
    "entered_at",
    "converted_at",
    "outbox_id",
    "template",
)


def detect(conn: Connection, compiled: CompiledPlaybook, window: Window | None) -> int:
    """Record the conversions of ``compiled``'s goals at its ``now``; how many were new.

    ``window`` None: a full tick, every enrollment in a goal's window is looked at; else only the tick's
    candidates (the connection's ``tick_candidates``, filled by ``incremental.candidates``) and the
    customers whose goal rules' time-dependent parts may have flipped since ``window.since``.
    """
    if not compiled.goals:
        return 0
    only: Any = None
    if window is not None:
        parts = [select(CANDIDATES.c.customer_id)]
        parts += crossings(compiled.goal_clock, compiled, window.since, compiled.now)
        only = parts[0] if len(parts) == 1 else union(*parts)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    recorded = 0
    for goal in compiled.goals:
        entries = _entries(compiled, goal, only, conn.dialect.name)
        stmt = dialect.insert(CONVERSION).from_select(list(COLUMNS), entries)
        stmt = stmt.on_conflict_do_nothing(index_elements=["playbook", "goal", "customer_id", "entered_at"])
        # counted from RETURNING: a driver's rowcount of INSERT ... SELECT is not reliable everywhere
        recorded += len(conn.execute(stmt.returning(CONVERSION.c.id)).all())
    return recorded


def at_or_after(column: ColumnElement[Any], moment: datetime, dialect: str) -> ColumnElement[bool]:
    """``column >= moment`` for a timestamp column, inclusive on both databases.

    SQLite compares the stored text: the tick's sink writes whole seconds without a fraction
    (``10:00:00``), a bound timestamp has one (``10:00:00.000000``), which sorts after it. The shorter
    form is the smaller of the two, so a row stored at exactly ``moment`` is included either way.
    """
    if dialect == "sqlite":
        return column >= literal(str(to_utc_naive(moment)), String())
    return column >= moment


def _entries(compiled: CompiledPlaybook, goal: CompiledGoal, only: Any, dialect: str) -> Any:
    """The SELECT of the conversions of ``goal``: entries in the window, no conversion yet, rule true."""
    now = compiled.now
    e = ENROLLMENT
    entry = [
        e.c.playbook == compiled.name,
        at_or_after(e.c.started_at, now - goal.within, dialect),
        e.c.started_at <= now,
    ]
    if goal.stage is not None:
        entry.append(e.c.stage == goal.stage)
    if only is not None:
        entry.append(e.c.customer_id.in_(only))
    converted = exists().where(
        CONVERSION.c.playbook == compiled.name,
        CONVERSION.c.goal == goal.name,
        CONVERSION.c.customer_id == e.c.customer_id,
        CONVERSION.c.entered_at == e.c.started_at,
    )
    # the program's last message sent before now: same playbook, customer and stage, since the entry
    last_sent = (
        select(OUTBOX.c.id)
        .where(
            OUTBOX.c.playbook == e.c.playbook,
            OUTBOX.c.customer_id == e.c.customer_id,
            OUTBOX.c.stage == e.c.stage,
            OUTBOX.c.created_at >= e.c.started_at,
            OUTBOX.c.status == "sent",
            OUTBOX.c.sent_at <= now,
        )
        .order_by(OUTBOX.c.sent_at.desc(), OUTBOX.c.id.desc())
        .limit(1)
        .correlate(e)
        .scalar_subquery()
    )
    message = OUTBOX.alias("attributed")
    attributed = select(message.c.template).where(message.c.id == last_sent).scalar_subquery()
    return (
        select(
            e.c.playbook,
            literal(goal.name),
            e.c.customer_id,
            e.c.id,
            e.c.cohort,
            e.c.started_at,
            literal(now, UTCDateTime()),
            last_sent,
            attributed,
        )
        .select_from(e.join(CUSTOMER, CUSTOMER.c.id == e.c.customer_id))
        .where(and_(*entry), ~converted, goal.condition)
    )


__all__ = ["COLUMNS", "at_or_after", "detect"]
