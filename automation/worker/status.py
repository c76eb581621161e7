"""What the worker has been doing and what the outbox holds: for ``automation status``, the report of
``run --once`` and the metrics endpoint.

Pure functions over a ``Connection`` (a few aggregate queries each; the caller owns the transaction):

* ``playbook_status(conn)``: per playbook the number of ticks, the last tick (from ``run_log``: when,
  how long, what changed), customers per stage now (``customer_state``) and open enrollments.
* ``queue_status(conn, now)``: outbox counts by channel and status, what is due now and the oldest
  due message, and the most recent dead letters.
* ``held_back(conn)``: the messages not sent, grouped by channel, status and reason.
* ``goal_status(conn, now)``: per playbook and goal the entries of the last 7 days by cohort, their
  conversions and conversion rate (both counted in SQL), and the lift of treatment over holdout.

Requeueing dead letters (``retry-dead``) changes the outbox, so it lives with it, in
``automation.outbox.retry``.

Dead letters carry no time of death (the outbox has no such column). ``when`` is the time the message
was last due: for a permanent failure or exhausted retries that is the attempt that killed it; for an
expired message it is its original due time (it expired ``DEFAULT_TTL`` later). ``retry-dead --since``
filters on the same column.

Personal data is masked in what these functions return (customer ids and error texts go through
``automation.masking.mask_text``), so their output can be printed or logged as it is; the one exception
is the reasons of ``held_back``, grouped as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Float, and_, case, cast, func, literal, or_, select

from automation.db.tables import CONVERSION, ENROLLMENT, OUTBOX, RUN_LOG, STATE
from automation.masking import mask_text
from automation.outbox.lease import CLAIMABLE
from automation.plan.goals import at_or_after

#: Outbox statuses in the order they are shown (unknown ones follow, sorted).
STATUSES = (
    *("pending", "claimed", "retry", "sent", "dead"),
    *("suppressed", "skipped", "cancelled", "failed", "held_out"),
)
#: The stage of customers who match no stage rule.
NO_STAGE = "(none)"
_TICK_CHANGES = ("transitions", "enrolled", "exited", "actions", "deferred")


#: The entries ``goal_status`` looks at: programs entered this long before now.
GOAL_WINDOW = timedelta(days=7)
#: The goal name of a playbook's own goal (``automation.playbook.models.PLAYBOOK_GOAL``).
_PLAYBOOK_GOAL = "playbook"


# -- playbooks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LastTick:
    started_at: datetime
    seconds: float | None
    changes: dict[str, int]  # transitions, enrolled, exited, actions, deferred
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "seconds": self.seconds,
            **self.changes,
            "error": self.error,
        }


@dataclass(frozen=True)
class PlaybookStatus:
    playbook: str
    ticks: int
    last_tick: LastTick | None
    stages: dict[str, int]  # stage (NO_STAGE for none) -> customers
    open_enrollments: int

    @property
    def customers(self) -> int:
        return sum(self.stages.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "ticks": self.ticks,
            "last_tick": self.last_tick.as_json() if self.last_tick else None,
            "customers": self.customers,
            "stages": dict(self.stages),
            "open_enrollments": self.open_enrollments,
        }


def playbook_status(conn: Connection) -> list[PlaybookStatus]:
    """Every playbook that has ticked or has state, by name."""
    is_tick = RUN_LOG.c.kind == "tick"
    ticks: dict[str, int] = {
        name: n
        for name, n in conn.execute(
            select(RUN_LOG.c.playbook, func.count())
            .where(is_tick, RUN_LOG.c.playbook.is_not(None))
            .group_by(RUN_LOG.c.playbook)
        )
    }
    # the latest tick per playbook: by evaluation time, then by insertion order
    rank = (
        func.row_number()
        .over(partition_by=RUN_LOG.c.playbook, order_by=(RUN_LOG.c.started_at.desc(), RUN_LOG.c.id.desc()))
        .label("rank")
    )
    ranked = (
        select(RUN_LOG.c.playbook, RUN_LOG.c.started_at, RUN_LOG.c.stats, RUN_LOG.c.error, rank)
        .where(is_tick, RUN_LOG.c.playbook.is_not(None))
        .subquery()
    )
    last: dict[str, LastTick] = {}
    for row in conn.execute(select(ranked).where(ranked.c.rank == 1)):
        stats = row.stats if isinstance(row.stats, dict) else {}
        seconds = stats.get("seconds")
        last[row.playbook] = LastTick(
            started_at=row.started_at,
            seconds=float(seconds) if isinstance(seconds, int | float) else None,
            changes={k: int(stats.get(k) or 0) for k in _TICK_CHANGES},
            error=mask_text(row.error) if row.error else None,
        )
    stages: dict[str, dict[str, int]] = {}
    for name, stage, n in conn.execute(
        select(STATE.c.playbook, STATE.c.stage, func.count())
        .group_by(STATE.c.playbook, STATE.c.stage)
        .order_by(STATE.c.playbook, STATE.c.stage)
    ):
        stages.setdefault(name, {})[stage if stage is not None else NO_STAGE] = n
    open_enrollments: dict[str, int] = {
        name: n
        for name, n in conn.execute(
            select(ENROLLMENT.c.playbook, func.count())
            .where(ENROLLMENT.c.status == "active")
            .group_by(ENROLLMENT.c.playbook)
        )
    }
    names = sorted(set(ticks) | set(stages) | set(open_enrollments))
    return [
        PlaybookStatus(
            playbook=name,
            ticks=ticks.get(name, 0),
            last_tick=last.get(name),
            stages=stages.get(name, {}),
            open_enrollments=open_enrollments.get(name, 0),
        )
        for name in names
    ]


# -- the outbox -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OldestDue:
    id: int
    channel: str
    status: str
    due_at: datetime
    age_seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "channel": self.channel,
            "status": self.status,
            "due_at": self.due_at.isoformat(),
            "age_seconds": round(self.age_seconds, 3),
        }


@dataclass(frozen=True)
class DeadLetter:
    id: int
    playbook: str
    channel: str
    customer_id: str  # masked
    template: str
    attempts: int
    last_error: str | None  # masked
    when: datetime  # the time it was last due (see the module docstring)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "playbook": self.playbook,
            "channel": self.channel,
            "customer": self.customer_id,
            "template": self.template,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "when": self.when.isoformat(),
        }


@dataclass(frozen=True)
class QueueStatus:
    at: datetime
    counts: dict[tuple[str, str], int]  # (channel, status) -> messages
    due: int  # pending or retry with due_at <= at
    oldest_due: OldestDue | None
    dead: list[DeadLetter] = field(default_factory=list)  # newest first, at most the limit asked
    #: channel -> fact (ENGAGEMENT) -> messages it happened to, from the providers' and our own reports
    engagement: dict[str, dict[str, int]] = field(default_factory=dict)

    def by_status(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, status), n in self.counts.items():
            out[status] = out.get(status, 0) + n
        return {s: out[s] for s in ordered_statuses(out)}

    def by_channel(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (channel, status), n in sorted(self.counts.items()):
            out.setdefault(channel, {})[status] = n
        return {ch: {s: row[s] for s in ordered_statuses(row)} for ch, row in out.items()}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "total": self.total,
            "by_status": self.by_status(),
            "by_channel": self.by_channel(),
            "due": self.due,
            "oldest_due": self.oldest_due.as_json() if self.oldest_due else None,
            "dead": [d.as_json() for d in self.dead],
            "engagement": self.engagement,
        }


#: What happened after sending, per message: each counts the messages it happened to at least once.
ENGAGEMENT = ("delivered", "bounced", "complained", "opened", "machine_opened", "clicked")


def engagement(conn: Connection) -> dict[str, dict[str, int]]:
    """Per channel, how many messages were delivered, bounced, ..., clicked (one statement)."""
    facts = (
        func.count(OUTBOX.c.delivered_at),
        func.count(OUTBOX.c.bounced_at),
        func.count(OUTBOX.c.complained_at),
        func.count(OUTBOX.c.opened_at),
        func.count(case((OUTBOX.c.machine_opens > 0, 1))),
        func.count(OUTBOX.c.clicked_at),
    )
    query = select(OUTBOX.c.channel, *facts).where(OUTBOX.c.sent_at.is_not(None)).group_by(OUTBOX.c.channel)
    return {row[0]: dict(zip(ENGAGEMENT, map(int, row[1:]), strict=True)) for row in conn.execute(query)}


def ordered_statuses(statuses: Any) -> list[str]:
    """The known statuses in lifecycle order, then any others sorted."""
    present = set(statuses)
    return [s for s in STATUSES if s in present] + sorted(present - set(STATUSES))


def queue_status(conn: Connection, now: datetime, dead_limit: int = 10) -> QueueStatus:
    """Outbox counts, what is due at ``now`` (and the oldest of it), and the ``dead_limit`` newest dead."""
    counts: dict[tuple[str, str], int] = {
        (channel, status): n
        for channel, status, n in conn.execute(
            select(OUTBOX.c.channel, OUTBOX.c.status, func.count()).group_by(
                OUTBOX.c.channel, OUTBOX.c.status
            )
        )
    }
    is_due = (OUTBOX.c.status.in_(CLAIMABLE), OUTBOX.c.due_at <= now)
    due = conn.execute(select(func.count()).select_from(OUTBOX).where(*is_due)).scalar_one()
    oldest = conn.execute(
        select(OUTBOX.c.id, OUTBOX.c.channel, OUTBOX.c.status, OUTBOX.c.due_at)
        .where(*is_due)
        .order_by(OUTBOX.c.due_at, OUTBOX.c.id)
        .limit(1)
    ).first()
    oldest_due = (
        OldestDue(
            oldest.id,
            oldest.channel,
            oldest.status,
            oldest.due_at,
            max((now - oldest.due_at).total_seconds(), 0.0),
        )
        if oldest is not None
        else None
    )
    dead: list[DeadLetter] = []
    if dead_limit > 0:
        rows = conn.execute(
            select(
                OUTBOX.c.id,
                OUTBOX.c.playbook,
                OUTBOX.c.channel,
                OUTBOX.c.customer_id,
                OUTBOX.c.template,
                OUTBOX.c.attempts,
                OUTBOX.c.last_error,
                OUTBOX.c.due_at,
            )
            .where(OUTBOX.c.status == "dead")
            .order_by(OUTBOX.c.due_at.desc(), OUTBOX.c.id.desc())
            .limit(dead_limit)
        )
        dead = [
            DeadLetter(
                id=r.id,
                playbook=r.playbook,
                channel=r.channel,
                customer_id=mask_text(r.customer_id),
                template=r.template,
                attempts=r.attempts,
                last_error=mask_text(r.last_error) if r.last_error else None,
                when=r.due_at,
            )
            for r in rows
        ]
    return QueueStatus(
        at=now, counts=counts, due=int(due), oldest_due=oldest_due, dead=dead, engagement=engagement(conn)
    )


# -- what was held back ---------------------------------------------------------------------------
#: The statuses of messages that were not sent (``pending`` counts only with a reason: deferred).
HELD_STATUSES = ("pending", "suppressed", "skipped", "dead", "retry")


@dataclass(frozen=True)
class HeldBack:
    """Messages of one channel and status that share a reason, e.g. 40 email deferred by quiet hours."""

    channel: str
    status: str
    reason: str  # "" when the row has none (then never "pending": that is merely queued)
    count: int


def held_back(conn: Connection) -> list[HeldBack]:
    """Messages held back or failed, grouped by channel, status and reason, the largest groups first.

    A ``pending`` message without a reason is simply queued and left out; with one (quiet hours, a
    frequency cap) it was deferred. Reasons are grouped and returned as they are stored, not masked,
    unlike the rest of this module's results.
    """
    reason = func.coalesce(OUTBOX.c.last_error, "")
    rows = conn.execute(
        select(OUTBOX.c.channel, OUTBOX.c.status, reason, func.count())
        .where(OUTBOX.c.status.in_(HELD_STATUSES))
        .group_by(OUTBOX.c.channel, OUTBOX.c.status, reason)
        .order_by(func.count().desc())
    ).all()
    return [
        HeldBack(channel, status, why, int(n))
        for channel, status, why, n in rows
        if status != "pending" or why
    ]


# -- goals ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CohortFigures:
    entries: int
    conversions: int
    rate: float  # conversions / entries

    def as_json(self) -> dict[str, Any]:
        return {"entries": self.entries, "conversions": self.conversions, "rate": self.rate}


@dataclass(frozen=True)
class GoalStatus:
    """One goal of one playbook over the entries of the last ``GOAL_WINDOW``, by cohort."""

    playbook: str
    goal: str
    cohorts: dict[str, CohortFigures]  # treatment, holdout, control (those with entries)

    @property
    def lift(self) -> float | None:
        """Treatment's conversion rate over holdout's, minus 1 (0.25: a quarter more); None without both."""
        treated, held = self.cohorts.get("treatment"), self.cohorts.get("holdout")
        if treated is None or held is None or held.rate == 0:
            return None
        return treated.rate / held.rate - 1

    def as_json(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "goal": self.goal,
            "cohorts": {name: figures.as_json() for name, figures in self.cohorts.items()},
            "lift": self.lift,
        }


def goal_status(conn: Connection, now: datetime, window: timedelta = GOAL_WINDOW) -> list[GoalStatus]:
    """Per playbook and goal (those with a conversion ever recorded), the entries started in the
    ``window`` before ``now`` by cohort, how many of them converted and the rate, counted in SQL.

    The entries of the playbook's own goal are all its enrollments; a stage goal's, its stage's."""
    e, c = ENROLLMENT, CONVERSION
    goals = select(c.c.playbook, c.c.goal).distinct().subquery("goals")
    entries = func.count(e.c.id)
    converted = func.count(c.c.id)
    rate = cast(converted, Float) / cast(entries, Float)
    query = (
        select(e.c.playbook, goals.c.goal, e.c.cohort, entries, converted, rate)
        .select_from(
            e.join(
                goals,
                and_(
                    goals.c.playbook == e.c.playbook,
                    or_(goals.c.goal == literal(_PLAYBOOK_GOAL), goals.c.goal == e.c.stage),
                ),
            ).outerjoin(
                c,
                and_(
                    c.c.playbook == e.c.playbook,
                    c.c.goal == goals.c.goal,
                    c.c.customer_id == e.c.customer_id,
                    c.c.entered_at == e.c.started_at,
                ),
            )
        )
        .where(at_or_after(e.c.started_at, now - window, conn.dialect.name), e.c.started_at <= now)
        .group_by(e.c.playbook, goals.c.goal, e.c.cohort)
        .order_by(e.c.playbook, goals.c.goal, e.c.cohort)
    )
    found: dict[tuple[str, str], dict[str, CohortFigures]] = {}
    for playbook, goal, cohort, n, k, r in conn.execute(query):
        found.setdefault((playbook, goal), {})[cohort] = CohortFigures(int(n), int(k), float(r))
    return [GoalStatus(playbook, goal, cohorts) for (playbook, goal), cohorts in found.items()]


def conversion_counts(conn: Connection) -> dict[tuple[str, str, str], int]:
    """Every conversion recorded, counted by (playbook, goal, cohort)."""
    c = CONVERSION
    columns = (c.c.playbook, c.c.goal, c.c.cohort)
    query = select(*columns, func.count()).group_by(*columns)
    return {(playbook, goal, cohort): int(n) for playbook, goal, cohort, n in conn.execute(query)}
