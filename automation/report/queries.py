"""The report's SQL: every figure is an aggregate computed in the database, with bound parameters.

Each function takes a ``Connection``, the playbook's name and the period ``[since, until)`` and
returns a few aggregate rows (one per step, stage, transition, goal and cohort, or day); no table is
read into Python. The same statements run on SQLite and PostgreSQL; where the spelling differs (the
day of a timestamp, seconds between two timestamps, the median) the dialect is asked.

The period selects *who*: program entries (``enrollment.started_at``), messages
(``outbox.created_at``), transitions (``stage_history.at``) and, for goals, conversions whose entry
is in it (``conversion.entered_at``). What happened to them afterwards is counted as recorded when the
report runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Float, String, and_, case, cast, exists, func, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement

from automation.db.tables import CONVERSION, CURSOR, ENROLLMENT, FEEDBACK, HISTORY, OUTBOX, STATE

#: The per-message counts of ``steps``, in the order they are returned.
STEP_COUNTS = (
    "planned",
    "sent",
    "held_out",
    "failed",
    "delivered",
    "bounced",
    "opened",
    "machine_opened",
    "clicked",
    "unsubscribed",
    "complained",
    "converted",
)


def known_playbook(conn: Connection, playbook: str) -> bool:
    """Whether any state, entry, transition, message or conversion names ``playbook``.

    The tables with an index led by ``playbook`` are asked first; the outbox (no such index) last.
    """
    probes = [
        exists().where(table.c.playbook == playbook)
        for table in (CURSOR, STATE, ENROLLMENT, HISTORY, CONVERSION, OUTBOX)
    ]
    return bool(conn.execute(select(or_(*probes))).scalar())


def _in(column: Any, since: datetime, until: datetime) -> ColumnElement[bool]:
    return and_(column >= since, column < until)


def _flag(condition: ColumnElement[bool]) -> Any:
    return func.sum(case((condition, 1), else_=0))


@dataclass(frozen=True)
class StepRow:
    stage: str | None
    step: str | None
    template: str
    channel: str
    counts: dict[str, int]


def steps(conn: Connection, playbook: str, since: datetime, until: datetime) -> list[StepRow]:
    """Per (stage, step, template, channel): the messages planned in the period and what became of them.

    ``sent`` counts messages with a ``sent_at`` (also ones a provider later reported failed);
    ``opened`` the ones opened by a person at least once, ``machine_opened`` the ones with machine-made
    opens; ``unsubscribed`` the ones with an ``unsubscribed`` feedback fact; ``converted`` the ones a
    conversion is attributed to (last touch, any goal).
    """
    o = OUTBOX
    unsub = (
        select(FEEDBACK.c.outbox_id)
        .where(FEEDBACK.c.kind == "unsubscribed", FEEDBACK.c.outbox_id.is_not(None))
        .group_by(FEEDBACK.c.outbox_id)
        .subquery("unsub")
    )
    conv = (
        select(CONVERSION.c.outbox_id)
        .where(CONVERSION.c.playbook == playbook, CONVERSION.c.outbox_id.is_not(None))
        .group_by(CONVERSION.c.outbox_id)
        .subquery("conv")
    )
    query = (
        select(
            o.c.stage,
            o.c.step,
            o.c.template,
            o.c.channel,
            func.count().label("planned"),
            func.count(o.c.sent_at).label("sent"),
            _flag(o.c.status == "held_out").label("held_out"),
            _flag(o.c.status == "failed").label("failed"),
            func.count(o.c.delivered_at).label("delivered"),
            func.count(o.c.bounced_at).label("bounced"),
            func.count(o.c.opened_at).label("opened"),
            _flag(o.c.machine_opens > 0).label("machine_opened"),
            func.count(o.c.clicked_at).label("clicked"),
            func.count(unsub.c.outbox_id).label("unsubscribed"),
            func.count(o.c.complained_at).label("complained"),
            func.count(conv.c.outbox_id).label("converted"),
        )
        .select_from(
            o.outerjoin(unsub, unsub.c.outbox_id == o.c.id).outerjoin(conv, conv.c.outbox_id == o.c.id)
        )
        .where(o.c.playbook == playbook, _in(o.c.created_at, since, until))
        .group_by(o.c.stage, o.c.step, o.c.template, o.c.channel)
    )
    rows = [
        StepRow(r.stage, r.step, r.template, r.channel, {k: int(getattr(r, k) or 0) for k in STEP_COUNTS})
        for r in conn.execute(query)
    ]
    return sorted(rows, key=lambda r: (r.stage or "", r.step or "", r.template, r.channel))


def entries(conn: Connection, playbook: str, since: datetime, until: datetime) -> dict[tuple[str, str], int]:
    """(stage, cohort) -> program entries started in the period."""
    e = ENROLLMENT
    query = (
        select(e.c.stage, e.c.cohort, func.count())
        .where(e.c.playbook == playbook, _in(e.c.started_at, since, until))
        .group_by(e.c.stage, e.c.cohort)
    )
    return {(stage, cohort): int(n) for stage, cohort, n in conn.execute(query)}


def funnel(
    conn: Connection, playbook: str, since: datetime, until: datetime
) -> list[tuple[str | None, str | None, int]]:
    """(from stage, to stage, transitions) in the period; segment-only changes (same stage) left out."""
    h = HISTORY
    query = (
        select(h.c.from_stage, h.c.to_stage, func.count().label("n"))
        .where(
            h.c.playbook == playbook, _in(h.c.at, since, until), h.c.from_stage.is_distinct_from(h.c.to_stage)
        )
        .group_by(h.c.from_stage, h.c.to_stage)
    )
    rows = [(a, b, int(n)) for a, b, n in conn.execute(query)]
    return sorted(rows, key=lambda r: (-r[2], r[0] or "", r[1] or ""))


def conversions(
    conn: Connection, playbook: str, since: datetime, until: datetime
) -> dict[tuple[str, str], int]:
    """(goal, cohort) -> conversions of entries in the period."""
    c = CONVERSION
    query = (
        select(c.c.goal, c.c.cohort, func.count())
        .where(c.c.playbook == playbook, _in(c.c.entered_at, since, until))
        .group_by(c.c.goal, c.c.cohort)
    )
    return {(goal, cohort): int(n) for goal, cohort, n in conn.execute(query)}


def _seconds(conn: Connection, start: Any, end: Any) -> Any:
    """Seconds from ``start`` to ``end`` as a float expression."""
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * literal(86400.0, Float)


def median_time_to_convert(
    conn: Connection, playbook: str, since: datetime, until: datetime
) -> dict[tuple[str, str], float]:
    """(goal, cohort) -> the median seconds from entry to conversion.

    PostgreSQL: ``percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds)``. SQLite has no percentile
    function: the rows of each group are numbered in order (``ROW_NUMBER``) and counted (``COUNT`` as a
    window), and the median is the mean of the middle one or two (rank (n + 1) / 2 and (n + 2) / 2 in
    integer division), which gives the same value.
    """
    c = CONVERSION
    seconds = _seconds(conn, c.c.entered_at, c.c.converted_at)
    where = (c.c.playbook == playbook, _in(c.c.entered_at, since, until))
    if conn.dialect.name == "postgresql":
        query: Any = (
            select(c.c.goal, c.c.cohort, func.percentile_cont(0.5).within_group(seconds))
            .where(*where)
            .group_by(c.c.goal, c.c.cohort)
        )
    else:
        part = (c.c.goal, c.c.cohort)
        ranked = (
            select(
                c.c.goal,
                c.c.cohort,
                seconds.label("s"),
                func.row_number().over(partition_by=part, order_by=seconds).label("rn"),
                func.count().over(partition_by=part).label("n"),
            )
            .where(*where)
            .subquery("ranked")
        )
        r = ranked.c
        query = (
            select(r.goal, r.cohort, func.avg(r.s))
            .where(or_(r.rn == (r.n + 1) // 2, r.rn == (r.n + 2) // 2))
            .group_by(r.goal, r.cohort)
        )
    return {(goal, cohort): float(m) for goal, cohort, m in conn.execute(query) if m is not None}


def daily_conversions(
    conn: Connection, playbook: str, since: datetime, until: datetime
) -> list[tuple[str, str, str, int]]:
    """(day as YYYY-MM-DD in UTC, goal, cohort, conversions) of entries in the period, by conversion day."""
    c = CONVERSION
    if conn.dialect.name == "postgresql":
        day: Any = func.to_char(c.c.converted_at, "YYYY-MM-DD")
    else:  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC)
        day = func.substr(cast(c.c.converted_at, String), 1, 10)
    query = (
        select(day.label("day"), c.c.goal, c.c.cohort, func.count())
        .where(c.c.playbook == playbook, _in(c.c.entered_at, since, until))
        .group_by(day, c.c.goal, c.c.cohort)
    )
    return sorted((str(d), g, k, int(n)) for d, g, k, n in conn.execute(query))


__all__ = [
    "STEP_COUNTS",
    "StepRow",
    "conversions",
    "daily_conversions",
    "entries",
    "funnel",
    "known_playbook",
    "median_time_to_convert",
    "steps",
]
