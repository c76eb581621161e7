"""What the worker has been doing and what the outbox holds: for ``automation status``, ``retry-dead``
and the metrics endpoint.

Pure functions over a ``Connection`` (a few aggregate queries each; the caller owns the transaction):

* ``playbook_status(conn)``: per playbook the number of ticks, the last tick (from ``run_log``: when,
  how long, what changed), customers per stage now (``customer_state``) and open enrollments.
* ``queue_status(conn, now)``: outbox counts by channel and status, what is due now and the oldest
  due message, and the most recent dead letters.
* ``retry_dead(conn, now, ...)``: put dead letters back in the queue.

Dead letters carry no time of death (the outbox has no such column). ``when`` is the time the message
was last due: for a permanent failure or exhausted retries that is the attempt that killed it; for an
expired message it is its original due time (it expired ``DEFAULT_TTL`` later). ``--since`` filters on
the same column.

Personal data is masked in what these functions return (customer ids and error texts go through
``automation.masking.mask_text``), so their output can be printed or logged as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, bindparam, case, func, literal, select, update

from automation.db.tables import metadata
from automation.db.types import UTCDateTime
from automation.errors import InputError
from automation.masking import mask_text
from automation.outbox.lease import CLAIMABLE
from automation.outbox.sink import DEFAULT_TTL

OUTBOX: Table = metadata.tables["outbox"]
RUN_LOG: Table = metadata.tables["run_log"]
STATE: Table = metadata.tables["customer_state"]
ENROLLMENT: Table = metadata.tables["enrollment"]

#: Outbox statuses in the order they are shown (unknown ones follow, sorted).
STATUSES = ("pending", "claimed", "retry", "sent", "dead", "suppressed", "skipped", "cancelled")
#: The stage of customers who match no stage rule.
NO_STAGE = "(none)"
#: Prefix put in front of ``last_error`` when a dead letter is requeued (cleared once it is sent).
REQUEUED_PREFIX = "requeued: "
_TICK_CHANGES = ("transitions", "enrolled", "exited", "actions", "deferred")


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
        }


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
    return QueueStatus(at=now, counts=counts, due=int(due), oldest_due=oldest_due, dead=dead)


# -- dead letters ---------------------------------------------------------------------------------
def retry_dead(
    conn: Connection,
    now: datetime,
    since: datetime | None = None,
    channel: str | None = None,
    playbook: str | None = None,
    ttl: timedelta = DEFAULT_TTL,
) -> int:
    """Requeue dead letters; returns how many. The next dispatch pass sends them.

    Each matching ``dead`` row becomes ``pending`` with ``due_at = now`` and ``attempts = 0``.
    ``last_error`` is kept, prefixed with ``"requeued: "`` (so the reason stays visible until the
    message is sent, which clears it, or fails again, which replaces it). A message with a
    time-to-live gets ``expires_at = now + ttl``, the span a tick gives it (``DEFAULT_TTL``; its
    ``due_at`` moves with retries and deferrals, so the span cannot be read back from the row), so
    an expired message is not expired again at once; messages without one keep none.

    Filters: ``since`` (last due at or after it), ``channel``, ``playbook``.
    """
    conditions = [OUTBOX.c.status == "dead"]
    if since is not None:
        conditions.append(OUTBOX.c.due_at >= since)
    if channel:
        conditions.append(OUTBOX.c.channel == channel)
    if playbook:
        conditions.append(OUTBOX.c.playbook == playbook)
    new_expiry = bindparam("new_expiry", now + ttl, type_=UTCDateTime())
    error = literal(REQUEUED_PREFIX) + func.coalesce(OUTBOX.c.last_error, "")
    stmt = (
        update(OUTBOX)
        .where(*conditions)
        .values(
            status="pending",
            due_at=now,
            attempts=0,
            lease_owner=None,
            lease_until=None,
            expires_at=case((OUTBOX.c.expires_at.is_(None), None), else_=new_expiry),
            last_error=func.substr(error, 1, 2000),
        )
    )
    return int(conn.execute(stmt).rowcount)


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: a duration back from ``now`` (``90s``, ``30m``, ``24h``, ``7d``, ``2w``) or ISO 8601."""
    match = _DURATION.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        try:
            return now - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            raise InputError(f"--since {text!r} reaches too far back") from None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            f"--since {text!r} is neither a duration (e.g. 30m, 24h, 7d) "
            "nor an ISO 8601 time (e.g. 2026-11-22T09:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
