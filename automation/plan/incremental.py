"""Incremental ticks: evaluate only the customers whose segment or stage may have changed.

Between two ticks a customer's rules can change for two reasons only:

* their data changed: database triggers log every write to ``customer`` and ``event`` in
  ``customer_change`` (see ``automation.db.triggers``), whoever the writer;
* time moved on: a rule part that depends on ``now`` (``days_since``, ``days_until``, an
  ``events(...)`` window, ``anniversary``; recorded by the compiler in ``CompiledPlaybook.clock``)
  flips for the customers whose value lies between its boundary at the last tick and now. Those are
  found with range conditions (``signed_up_at BETWEEN ...``, events by name and time), and for
  recurring rules the customers whose local day, week, month or year has turned since then.

The union of both is the tick's candidate set; the tick evaluates it through the same path as a
full scan and compares with ``customer_state``. ``tick_cursor`` remembers, per playbook, the last
tick's ``now`` and log position. Everyone is evaluated on the first tick, when the rules changed,
when the clock went back, on request, and once a day (``AUTOMATION_FULL_TICK_EVERY``) to catch
writes no trigger sees (a restore, logical replication, a TRUNCATE).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.elements import ColumnElement

from automation.config import DEFAULT_FULL_TICK_EVERY
from automation.db.tables import CHANGE, CURSOR, CUSTOMER, EVENT
from automation.plan.timeutil import aware, period
from automation.rules.ast import format_duration
from automation.rules.compiled import CompiledPlaybook
from automation.rules.compiler import (
    Anniversary,
    DaysBoundary,
    EventWindow,
    known_zones,
    on_month_days,
    zone_or_utc,
)

#: How often a tick evaluates everyone even when nothing says it must.
FULL_EVERY = DEFAULT_FULL_TICK_EVERY
#: A cursor this much older than a tick no longer holds the change log back (its playbook was
#: probably removed); should that playbook tick again, it evaluates everyone.
STALE = timedelta(days=7)
#: How long a PostgreSQL tick waits for writers to commit before it reads the log without a horizon.
LOCK_TIMEOUT = "5s"

#: The customers a tick evaluates (a temporary table per connection).
CANDIDATES = Table(
    "tick_candidates",
    MetaData(),
    Column("customer_id", String(255), primary_key=True),
    prefixes=["TEMPORARY"],
)


@dataclass(frozen=True)
class Window:
    """What changed since the last tick: the time it ran and the log rows written since."""

    since: datetime
    from_seq: int
    to_seq: int | None  # None: every row visible now (PostgreSQL could not fix a horizon)


@dataclass(frozen=True)
class TickScope:
    """Whom a tick evaluates (``window`` None: everyone, for ``reason``) and where its cursor goes."""

    window: Window | None
    reason: str
    store_seq: int
    full_at: datetime

    @property
    def full(self) -> bool:
        return self.window is None


def change_horizon(engine: Engine) -> int | None:
    """PostgreSQL: the log position up to which every writer has committed; None elsewhere or on timeout.

    Sequence numbers are handed out before commit, so a row numbered below the highest visible one
    may still appear later. Taking the table's EXCLUSIVE lock waits for every transaction that has
    written to it; once granted, everything up to the highest number is committed. The lock is held
    only for the read. SQLite has one writer at a time, so the tick reads the position itself.
    """
    if engine.dialect.name != "postgresql":
        return None
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            conn.exec_driver_sql("LOCK TABLE customer_change IN EXCLUSIVE MODE")
            return _latest_seq(conn)
    except OperationalError:  # a long write holds the table: read without a horizon this time
        return None


def newest_change(engine: Engine) -> int:
    """The highest change log position (0 when the log is empty): one read of the primary key's end,
    cheap enough for the worker to poll every fraction of a second to notice new writes."""
    with engine.connect() as conn:
        return _latest_seq(conn)


def _latest_seq(conn: Connection) -> int:
    """The highest change log position visible to ``conn`` (0 when the log is empty)."""
    seq: int = conn.execute(select(func.coalesce(func.max(CHANGE.c.seq), 0))).scalar_one()
    return seq


def begin(
    conn: Connection,
    compiled: CompiledPlaybook,
    horizon: int | None,
    full: bool = False,
    full_every: timedelta = FULL_EVERY,
) -> TickScope:
    """Decide whom this tick evaluates, before it reads anything else."""
    now = compiled.now
    latest = horizon if conn.dialect.name == "postgresql" else _latest_seq(conn)
    row = conn.execute(select(CURSOR).where(CURSOR.c.playbook == compiled.name)).first()
    store = latest if latest is not None else (row.change_seq if row is not None else 0)
    reason = None
    if full:
        reason = "requested"
    elif row is None:
        reason = "first tick"
    elif row.fingerprint != compiled.fingerprint:
        reason = "rules changed"
    elif now < aware(row.at):
        reason = "clock moved back"
    elif now - aware(row.full_at) >= full_every:
        reason = f"once every {format_duration(full_every)}"
    if reason is not None or row is None:
        return TickScope(None, reason or "first tick", store, now)
    return TickScope(Window(aware(row.at), row.change_seq, latest), "changes", store, aware(row.full_at))


def finish(conn: Connection, compiled: CompiledPlaybook, scope: TickScope) -> None:
    """Store where this tick left off, then delete log rows every recent cursor has read."""
    values = {
        "at": compiled.now,
        "change_seq": scope.store_seq,
        "fingerprint": compiled.fingerprint,
        "full_at": scope.full_at,
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(CURSOR).values(playbook=compiled.name, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["playbook"], set_=values))
    point = conn.execute(
        select(func.min(CURSOR.c.change_seq)).where(CURSOR.c.at >= compiled.now - STALE)
    ).scalar()
    if point is None:
        return
    # a stale cursor behind the point can no longer trust the log: its next tick evaluates everyone
    conn.execute(update(CURSOR).where(CURSOR.c.change_seq < point).values(fingerprint=""))
    conn.execute(delete(CHANGE).where(CHANGE.c.seq <= point))


def candidates(conn: Connection, compiled: CompiledPlaybook, window: Window) -> tuple[Any, Any]:
    """Fill the connection's candidate table for ``window``.

    Returns two SELECTs of customer ids: whom the segment, stage and recurring rules evaluate (logged
    writes and crossings of those rules' time boundaries), and whom the recurring rules look at as
    well (crossings of their own time boundaries and the time zones where their period turned; None
    when there are none).
    """
    CANDIDATES.drop(conn, checkfirst=True)
    CANDIDATES.create(conn)
    parts = [select(CHANGE.c.customer_id).where(*_logged(window))]
    parts += crossings(compiled.clock, compiled, window.since, compiled.now)
    query = parts[0] if len(parts) == 1 else union(*parts)
    conn.execute(insert(CANDIDATES).from_select(["customer_id"], query))
    staged = select(CANDIDATES.c.customer_id)
    extra = crossings(compiled.recurring_clock, compiled, window.since, compiled.now, recurring=True)
    return staged, (None if not extra else extra[0] if len(extra) == 1 else union(*extra))


def count_candidates(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(CANDIDATES)).scalar_one())


def _logged(window: Window) -> list[ColumnElement[bool]]:
    where = [CHANGE.c.seq > window.from_seq]
    if window.to_seq is not None:
        where.append(CHANGE.c.seq <= window.to_seq)
    return where


def crossings(
    clock: tuple[Any, ...],
    compiled: CompiledPlaybook,
    since: datetime,
    now: datetime,
    recurring: bool = False,
) -> list[Any]:
    """SELECTs of the customers for whom a rule part in ``clock`` may differ at ``since`` and ``now``.

    With ``recurring``, also the customers in time zones where a recurring rule's period turned.
    """
    if now <= since:
        return []
    on_customer: list[ColumnElement[bool]] = []
    selects: list[Any] = []
    seen: set[tuple[Any, ...]] = set()
    for atom in clock:
        if isinstance(atom, DaysBoundary):
            key: tuple[Any, ...] = ("days", str(atom.column), atom.kind, atom.offset)
            bounds = _boundaries(atom, since, now)
            if key in seen or bounds is None:
                continue
            seen.add(key)
            on_customer.append(atom.column.between(*bounds))
        elif isinstance(atom, EventWindow):
            ranges = [(since, now)]
            if atom.within is not None:
                ranges.append((since - atom.within, now - atom.within))
            for lo, hi in ranges:
                key = ("events", atom.name, lo, hi)
                if key not in seen:
                    seen.add(key)
                    selects.append(
                        select(EVENT.c.customer_id).where(
                            EVENT.c.name == atom.name, EVENT.c.occurred_at.between(lo, hi)
                        )
                    )
        elif isinstance(atom, Anniversary):
            key = ("anniversary", str(atom.column))
            days = _turned_days(since, now, compiled.loaded.playbook.timezone)
            if key in seen or not days:
                continue
            seen.add(key)
            on_customer.append(on_month_days(atom.column, atom.kind, days, now.year))
    zones = _recurring_zones(compiled, since, now) if recurring else None
    if zones is not None:
        on_customer.append(zones)
    if on_customer:
        selects.insert(0, select(CUSTOMER.c.id).where(or_(*on_customer)))
    return selects


def _boundaries(atom: DaysBoundary, since: datetime, now: datetime) -> tuple[Any, Any] | None:
    """The column values between the comparison's boundary at ``since`` and at ``now`` (None: none)."""
    try:
        if atom.kind == "date":
            first, last = since.astimezone(UTC).date(), now.astimezone(UTC).date()
            if first == last:
                return None
            return first + atom.offset, last + atom.offset
        return since + atom.offset, now + atom.offset
    except OverflowError:  # beyond any date: the comparison is a constant
        return None


def _turned_days(since: datetime, now: datetime, fallback: str) -> list[tuple[int, int]]:
    """(month, day) pairs that some time zone left or reached between ``since`` and ``now``."""
    turned: set[date] = set()
    for zone in (*known_zones(), zone_or_utc(fallback)):
        first, last = since.astimezone(zone).date(), now.astimezone(zone).date()
        if first != last:  # only the two dates matter: the rule holds on one day at a time
            turned.update((first, last))
    days = set()
    for day in turned:
        days.add((day.month, day.day))
        if day.month == 2 and day.day == 28:  # 29 February counts on the 28th in common years
            days.add((2, 29))
    return sorted(days)


def _recurring_zones(
    compiled: CompiledPlaybook, since: datetime, now: datetime
) -> ColumnElement[bool] | None:
    """Customers in a time zone where a recurring rule's period (day, week, ...) turned since then."""
    pb = compiled.loaded.playbook
    if not pb.recurring:
        return None
    periods = {rule.once_per for rule in pb.recurring}

    def turned(zone: ZoneInfo) -> bool:
        return any(period(since.astimezone(zone), p) != period(now.astimezone(zone), p) for p in periods)

    zones = [zone.key for zone in known_zones() if turned(zone)]
    parts: list[ColumnElement[bool]] = []
    if zones:
        parts.append(CUSTOMER.c.timezone.in_(zones))
    if turned(zone_or_utc(pb.timezone)):  # customers whose zone is unknown count in the playbook's
        parts.append(CUSTOMER.c.timezone.not_in([zone.key for zone in known_zones()]))
    if not parts:
        return None
    return or_(*parts) if len(parts) > 1 else parts[0]


__all__ = [
    "CANDIDATES",
    "TickScope",
    "Window",
    "begin",
    "candidates",
    "change_horizon",
    "count_candidates",
    "crossings",
    "finish",
]
