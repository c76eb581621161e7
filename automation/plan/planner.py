"""Evaluate a playbook at a moment ``now`` and plan a tick: the one path shared by preview and daemon.

The database does the filtering. ``evaluate`` counts customers per segment and stage with one GROUP BY.
``plan`` streams only what changed: customers whose segment or stage differs from the stored
``customer_state`` (all of them before the first tick), enrollments whose next step is due, and
recurring rules that match today. For each, it plans actions (a message or task) and checks whether
each would be held back: step guard, missing address, consent, quiet hours, frequency cap.

A ``Sink`` receives the plan. The preview's sink keeps what it needs to show and writes nothing;
the tick's sink writes state, history, enrollments and the outbox in one transaction.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    MetaData,
    String,
    Table,
    and_,
    func,
    insert,
    or_,
    select,
    type_coerce,
    union,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from automation.db.in_list import PgArray, among
from automation.db.tables import metadata
from automation.playbook.models import (
    FrequencyCap,
    Playbook,
    QuietHours,
    TaskStep,
    WaitStep,
    step_channel,
    step_template,
)
from automation.rules.compiled import AnyStep, CompiledPlaybook

CUSTOMER: Table = metadata.tables["customer"]
STATE: Table = metadata.tables["customer_state"]
ENROLLMENT: Table = metadata.tables["enrollment"]
OUTBOX: Table = metadata.tables["outbox"]
SUPPRESSION: Table = metadata.tables["suppression"]
TASK: Table = metadata.tables["task"]
#: A message held by an open high-touch task is looked at again after this long.
TASK_HOLD_RECHECK = timedelta(hours=6)

#: Channels that reach the customer: quiet hours and frequency caps apply to these only.
CUSTOMER_CHANNELS = ("email", "sms")
#: Outbox states that count against a frequency cap (planned or delivered, not dead or cancelled).
COUNTED_STATES = ("pending", "claimed", "retry", "sent")
BATCH = 1000


# -- what a plan is made of ----------------------------------------------------------------------
class Contact(NamedTuple):
    """How a customer is reached: what the checks read besides guards."""

    id: str
    email: str | None
    phone: str | None
    owner_email: str | None
    timezone: str | None


#: The customer columns a ``Contact`` holds, in its order.
CONTACT_COLUMNS = ("id", "email", "phone", "owner_email", "timezone")


@dataclass(slots=True)  # slots, not frozen: built tens of thousands of times a tick
class Transition:
    """A customer whose segment or stage differs from what was stored at the last tick."""

    customer_id: str
    segment: str | None
    touch: str | None
    stage: str | None
    previous_segment: str | None
    previous_stage: str | None
    known: bool  # False when the customer had no stored state for this playbook
    contact: Contact | None = None  # read with the evaluation, so entering a program needs no lookup

    @property
    def stage_changed(self) -> bool:
        return self.stage != self.previous_stage or not self.known


@dataclass(slots=True)
class EnrollmentChange:
    """A program run that starts, advances, completes or exits."""

    customer_id: str
    stage: str
    touch: str
    segment: str | None
    started_at: datetime
    step_index: int  # index of the next step to run
    next_step_at: datetime | None
    status: str  # active | completed | exited
    enrollment_id: int | None = None  # None for a new enrollment
    reason: str | None = None


@dataclass(slots=True)
class PlannedAction:
    playbook: str
    customer_id: str
    segment: str | None
    touch: str | None
    stage: str | None
    step: str  # e.g. "acquisition/none#1" or "recurring/birthday_reward#1"
    channel: str
    template: str
    due_at: datetime
    idempotency_key: str
    priority: int
    status: str  # planned | suppressed
    reason: str | None = None
    until: datetime | None = None  # for actions deferred (quiet hours, frequency cap): when they may go
    assignee: str | None = None
    due: datetime | None = None  # tasks: when the person should have done it
    url: str | None = None  # webhooks: the target (may name ${ENV})

    def as_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("due_at", "until", "due"):
            if data[key] is not None:
                data[key] = data[key].isoformat()
        return data


class Sink(Protocol):
    def transition(self, item: Transition) -> None: ...

    def enrollment(self, item: EnrollmentChange) -> None: ...

    def action(self, item: PlannedAction) -> None: ...


@dataclass
class Counts:
    """Customers per segment, per stage, and the segment x stage matrix (None: no segment / no stage)."""

    matrix: dict[tuple[str | None, str | None], int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.matrix.values())

    def by_segment(self) -> dict[str | None, int]:
        out: Counter[str | None] = Counter()
        for (segment, _), n in self.matrix.items():
            out[segment] += n
        return dict(out)

    def by_stage(self) -> dict[str | None, int]:
        out: Counter[str | None] = Counter()
        for (_, stage), n in self.matrix.items():
            out[stage] += n
        return dict(out)


# -- evaluation ---------------------------------------------------------------------------------
def evaluate(
    conn: Connection, compiled: CompiledPlaybook, customer_ids: Sequence[str] | None = None
) -> Counts:
    """Segment and stage of every customer, counted in the database in one query.

    SQLite counts each segment x stage cell with ``COUNT(*) FILTER`` (it has no hash aggregate, and
    sorting a million rows for GROUP BY costs as much as evaluating them); PostgreSQL groups, with
    event tests joined once instead of correlated per customer.
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
    cells = inner.subquery("evaluated")
    query = select(cells.c.segment, cells.c.stage, func.count()).group_by(cells.c.segment, cells.c.stage)
    return Counts({(row[0], row[1]): int(row[2]) for row in conn.execute(query)})


def _same(column: Any, value: str | None) -> ColumnElement[bool]:
    result: ColumnElement[bool] = column.is_(None) if value is None else column == value
    return result


def _scan(
    conn: Connection, compiled: CompiledPlaybook, customer_ids: Sequence[str] | None, only: Any = None
) -> tuple[ColumnElement[Any], ColumnElement[Any], Any]:
    """Segment, stage and FROM for a query over customers: the join form for a full PostgreSQL scan."""
    full = customer_ids is None and only is None
    if conn.dialect.name == "postgresql" and full and compiled.scan_stage is not None:
        assert compiled.scan_segment is not None
        return compiled.scan_segment, compiled.scan_stage, compiled.scan_from()
    return compiled.segment, compiled.stage, CUSTOMER


def _evaluated(
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
    other = _Background(
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
    rows, changed = _evaluated(conn, compiled, customer_ids, only, recurring=True)
    flags = [rows.c[f"recurring_{i}"] for i in range(len(compiled.loaded.playbook.recurring))]
    return select(*(rows.c[name] for name in TRANSITION_COLUMNS), changed.label("changed"), *flags).where(
        or_(changed, *flags)
    )


class _Background:
    """``work`` run on a thread: ``join`` waits for it, ``result`` returns what it returned or raises
    what it raised."""

    def __init__(self, work: Callable[[], Any], name: str) -> None:
        self._work = work
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._work()
        except BaseException as exc:  # raised again by ``result``, on the caller's thread
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


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
        rows, changed = _evaluated(conn, compiled, customer_ids, only, recurring=False)
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


TRANSITION_COLUMNS = (
    "customer_id",
    "segment",
    "stage",
    "previous_segment",
    "previous_stage",
    "known",
    *(f"contact_{name}" for name in CONTACT_COLUMNS[1:]),
)


def changes_table(recurring: int = 0) -> Table:
    """Where a tick materializes its evaluation (a temporary table, per connection), so state can be
    written from it with INSERT ... SELECT while the planner reads it: the customers whose segment or
    stage changed (``changed``), and those a recurring rule matches (``recurring_<i>``, one column for
    each of the playbook's ``recurring`` rules)."""
    return Table(
        "tick_changes",
        MetaData(),
        *(Column(name, String(255)) for name in TRANSITION_COLUMNS[:6]),
        *(Column(name, String()) for name in TRANSITION_COLUMNS[6:]),  # contact: as long as the customer's
        Column("changed", Boolean()),
        *(Column(f"recurring_{i}", Boolean()) for i in range(recurring)),
        prefixes=["TEMPORARY"],
    )


#: The columns every tick's table has (``changes_table`` with no recurring rule).
CHANGES = changes_table()


# -- planning ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _Due:
    """One program position to run for one customer."""

    customer_id: str
    stage: str
    touch: str
    segment: str | None
    started_at: datetime
    step_index: int
    enrollment_id: int | None
    contact: Contact | None = None  # known when the run starts from a transition


def plan(
    conn: Connection,
    compiled: CompiledPlaybook,
    sink: Sink,
    customer_ids: Sequence[str] | None = None,
    global_cap: FrequencyCap | None = None,
    materialized: bool = False,
    only: Any = None,
    only_recurring: Any = None,
    alongside: Alongside | None = None,
) -> None:
    """Plan the next tick of ``compiled`` at ``compiled.now`` into ``sink``.

    Nothing is written here. A tick first evaluates into its table (``materialize``) and passes
    ``materialized=True``; the same ``customer_ids`` and ``only`` must have been given to both.
    ``only`` (a SELECT of customer ids) limits the stage and recurring rules to those customers, and
    ``only_recurring`` (another, or None) adds customers for the recurring rules alone: an incremental
    tick's candidates (``automation.plan.incremental``). Due program steps run for everyone.

    ``alongside``: work for ``conn`` that runs on a thread while the tick is planned, the planner's
    lookups going through ``alongside.reader`` meanwhile (see ``Alongside``).
    """
    planner = _Planner(conn, compiled, sink, global_cap)
    found: Iterable[Transition] = transitions(conn, compiled, customer_ids, materialized, only)
    if materialized:  # the evaluated customers' matches are in the tick's table; look up the others only
        extra = None if only is None or only_recurring is None else [only_recurring, only]
        looked_at, marked = None, True
    else:
        extra, marked, looked_at = None, False, only
        if only is not None and only_recurring is not None:
            looked_at = union(*[only, only_recurring])  # a list: mypy cannot type the two-argument call

    def plan_all(recurring: list[list[Any]] | None = None) -> None:
        exited = _leave_and_enter(planner, sink, found)
        planner.advance_due(exited, customer_ids)
        if recurring is None:
            recurring = planner.recurring_rows(customer_ids, looked_at, marked=marked, extra=extra)
        planner.recurring(recurring)

    if alongside is None:
        plan_all()
        return
    # what reads the tick's own tables is read before its connection is handed over
    found = list(found)
    recurring = planner.recurring_rows(customer_ids, looked_at, marked=marked, extra=extra)
    alongside.run(planner, lambda: plan_all(recurring))


def _leave_and_enter(planner: _Planner, sink: Sink, found: Iterable[Transition]) -> set[str]:
    """Plan the transitions a batch at a time; returns the customers who left a stage."""
    exited: set[str] = set()
    batch: list[Transition] = []
    for item in found:
        sink.transition(item)
        batch.append(item)
        if len(batch) >= BATCH:
            exited.update(planner.leave_and_enter(batch))
            batch = []
    if batch:
        exited.update(planner.leave_and_enter(batch))
    return exited


@dataclass
class Alongside:
    """Database work that overlaps the planning of a tick (PostgreSQL).

    ``work`` runs on a thread with the tick's connection until the event it is given is set: a tick
    writes the state and history (which read only the tick's table), then the rows planned so far
    (``OutboxSink.write_while``). Meanwhile the planner looks customers, enrollments and messages up
    through ``reader``, a second connection: the server writes on one core while the planner plans on
    the other. ``reader`` does not see what the tick's transaction writes; the planner needs none of
    it: it keeps what it planned itself (a tick's plan is the same written at once or seven rows at a
    time).
    """

    reader: Connection
    work: Callable[[threading.Event], None]

    def run(self, planner: _Planner, plan: Callable[[], None]) -> None:
        conn, planner.conn = planner.conn, self.reader
        planning = threading.Event()
        writes = _Background(lambda: self.work(planning), "tick-writes")
        try:
            plan()
        finally:  # the tick's connection serves one thread at a time, also on the way out
            planning.set()
            writes.join()
            planner.conn = conn
        writes.result()


class _Planner:
    def __init__(
        self, conn: Connection, compiled: CompiledPlaybook, sink: Sink, global_cap: FrequencyCap | None
    ):
        self.conn, self.compiled, self.sink = conn, compiled, sink
        self.dialect = conn.dialect.name
        self.pb: Playbook = compiled.loaded.playbook
        self.now = compiled.now
        self.global_cap = global_cap
        self.fallback_zone = ZoneInfo(self.pb.timezone)
        # customer-facing messages planned this tick, by idempotency key (some may already be flushed)
        self.planned: dict[str, dict[str, datetime]] = defaultdict(dict)
        self._outbox_cache: tuple[list[str], list[Any]] | None = None
        self._quiet: dict[str | None, tuple[str | None, datetime | None]] = {}
        # customers given a task this tick: it holds their automated messages like an open one, whether
        # or not the sink has written it yet
        self.tasks_planned: set[str] = set()

    # entering a stage starts its program for the customer's touch model
    def enter(self, batch: list[Transition], history: list[Any] | None = None) -> None:
        entering = [t for t in batch if t.stage_changed and t.stage is not None and t.touch is not None]
        if not entering:
            return
        blocked = self.reentry_blocked(entering, history)
        due = [
            _Due(t.customer_id, t.stage, t.touch, t.segment, self.now, 0, None, t.contact)  # type: ignore[arg-type]
            for t in entering
            if (t.customer_id, t.stage) not in blocked and self.pb.program(t.stage, t.touch)  # type: ignore[arg-type]
        ]
        self.run(due)

    def reentry_blocked(
        self, entering: list[Transition], history: list[Any] | None = None
    ) -> set[tuple[str, str]]:
        """(customer, stage) pairs whose earlier run of the stage's program forbids starting again.

        ``history``: the enrollments of (at least) the entering customers, when already read.
        """
        policy = self.pb.reentry
        if policy.mode == "always":
            return set()
        ids = {t.customer_id for t in entering if t.known}
        if not ids:
            return set()
        rows = history if history is not None else self.enrollments(sorted(ids))
        last_start: dict[tuple[str, str], datetime] = {}
        for row in rows:
            key = (row.customer_id, row.stage)
            if row.customer_id in ids and (key not in last_start or row.started_at > last_start[key]):
                last_start[key] = row.started_at
        return {
            key
            for key, started in last_start.items()
            if policy.mode == "never" or (policy.cooldown and self.now - _aware(started) < policy.cooldown)
        }

    def enrollments(self, ids: list[str]) -> list[Any]:
        """Every enrollment of these customers in this playbook (looked up by customer, one query)."""
        if not ids:
            return []
        e = ENROLLMENT.c
        query = select(
            e.id, e.customer_id, e.stage, e.touch, e.segment, _stored(e.started_at), e.step_index, e.status
        ).where(e.playbook == self.pb.name, among(e.customer_id, ids, self.dialect))
        return list(self.conn.execute(query))

    def leave_and_enter(self, batch: list[Transition]) -> set[str]:
        """Customers who left a stage exit its program, then entrants start theirs; returns who left.

        One read of the batch's enrollments serves both: the programs to exit and re-entry.
        """
        left = {t.customer_id for t in batch if t.stage_changed and t.previous_stage is not None}
        entering = {t.customer_id for t in batch if t.stage_changed and t.stage is not None and t.known}
        history = self.enrollments(sorted(left | entering))
        self.exit_enrollments(left, history)
        self.enter(batch, history)
        return left

    def exit_enrollments(self, exited: set[str], history: list[Any]) -> None:
        """Customers who left a stage leave its program; pending steps are cancelled.

        ``history``: the enrollments of (at least) these customers. Active ones are picked here, not
        in SQL, so the database looks rows up by customer.
        """
        for row in history:
            if row.customer_id not in exited or row.status != "active" or _aware(row.started_at) >= self.now:
                continue
            self.sink.enrollment(
                EnrollmentChange(
                    row.customer_id,
                    row.stage,
                    row.touch,
                    row.segment,
                    _aware(row.started_at),
                    row.step_index,
                    None,
                    "exited",
                    row.id,
                    f"left stage {row.stage}",
                )
            )

    def advance_due(self, exited: set[str], customer_ids: Sequence[str] | None) -> None:
        """Enrollments whose wait is over run their next steps (read a page at a time, then written)."""
        last_id = 0
        while True:
            query = (
                select(ENROLLMENT)
                .where(
                    ENROLLMENT.c.playbook == self.pb.name,
                    ENROLLMENT.c.status == "active",
                    ENROLLMENT.c.next_step_at <= self.now,
                    ENROLLMENT.c.id > last_id,
                )
                .order_by(ENROLLMENT.c.id)
                .limit(BATCH)
            )
            if customer_ids is not None:
                query = query.where(among(ENROLLMENT.c.customer_id, customer_ids, self.dialect))
            rows = self.conn.execute(query).all()
            if not rows:
                return
            last_id = rows[-1].id
            self.run(
                [
                    _Due(
                        row.customer_id,
                        row.stage,
                        row.touch,
                        row.segment,
                        _aware(row.started_at),
                        row.step_index,
                        row.id,
                    )
                    for row in rows
                    if row.customer_id not in exited
                ]
            )

    def run(self, due: list[_Due]) -> None:
        """Walk each program from its position to the next wait, planning every message step on the way."""
        if not due:
            return
        waits = [_next_wait(self.pb.program(d.stage, d.touch), d.step_index) for d in due]
        reached = {  # the steps this run can reach, whose guards the facts evaluate
            (d.stage, d.touch, i)
            for d, wait in zip(due, waits, strict=True)
            for i in range(d.step_index, wait)
        }
        contacts = [d.contact for d in due if d.contact is not None]
        known = contacts if len(contacts) == len(due) else None
        facts = self.facts([d.customer_id for d in due], reached, contacts=known)
        for d, wait in zip(due, waits, strict=True):
            steps = self.pb.program(d.stage, d.touch)
            customer = facts.customers.get(d.customer_id)
            if customer is None:
                continue
            for index in range(d.step_index, wait):
                # entry time first: the keys a tick writes for the customers who entered together sit side
                # by side in the unique index, instead of one index page per customer
                key = f"{self.pb.name}:{d.started_at.isoformat()}:{d.customer_id}:{d.stage}:{d.touch}:{index}"
                guard = facts.guards.get((d.customer_id, d.stage, d.touch, index), True)
                guard_text = self.compiled.guards.get((d.stage, d.touch, index))
                self.action(
                    customer,
                    facts,
                    steps[index],
                    f"{d.stage}/{d.touch}#{index + 1}",
                    key,
                    d.segment,
                    d.touch,
                    d.stage,
                    None if guard else f"step guard: {guard_text.text if guard_text else ''}",
                )
            index = wait + 1 if wait < len(steps) else wait  # past the wait, where the next run starts
            next_at: datetime | None = None  # set when the wait leaves steps for later
            if index < len(steps):
                step = steps[wait]
                assert isinstance(step, WaitStep)
                next_at = self.now + step.wait
            status = "active" if next_at is not None else "completed"
            self.sink.enrollment(
                EnrollmentChange(
                    d.customer_id,
                    d.stage,
                    d.touch,
                    d.segment,
                    d.started_at,
                    index,
                    next_at,
                    status,
                    d.enrollment_id,
                )
            )

    def recurring_rows(
        self,
        customer_ids: Sequence[str] | None,
        only: Any = None,
        marked: bool = False,
        extra: list[Any] | None = None,
    ) -> list[list[Any]]:
        """Per recurring rule, the customers it matches now (id, time zone, segment, stage), by id.

        ``only``: a SELECT of the customers to look at (None: everyone). ``marked``: the customers the
        tick evaluated carry their matches in its table (``changes_table``); then only the customers
        in ``extra`` (a SELECT of ids to look at, and one of the ids already evaluated) are looked up.
        """
        marks = changes_table(len(self.pb.recurring)) if marked else None
        out = []
        for i, rule in enumerate(self.pb.recurring):
            condition = self.compiled.recurring[rule.name]
            found = select(
                CUSTOMER.c.id,
                CUSTOMER.c.timezone,
                self.compiled.segment.label("segment"),
                self.compiled.stage.label("stage"),
            ).where(condition)
            if customer_ids is not None:
                found = found.where(among(CUSTOMER.c.id, customer_ids, self.dialect))
            if only is not None:
                found = found.where(CUSTOMER.c.id.in_(only))
            query: Any = found.order_by(CUSTOMER.c.id)
            if marks is not None:
                m = marks.c
                matched = select(
                    m.customer_id.label("id"), m.contact_timezone.label("timezone"), m.segment, m.stage
                ).where(m[f"recurring_{i}"])
                if extra is None:
                    query = matched.order_by(m.customer_id)
                else:
                    looked_up = found.where(CUSTOMER.c.id.in_(extra[0]), CUSTOMER.c.id.not_in(extra[1]))
                    both = union_all(matched, looked_up).subquery("matched")
                    query = select(both).order_by(both.c.id)
            out.append(list(self.conn.execute(query)))
        return out

    def recurring(self, found: list[list[Any]]) -> None:
        """Recurring rules that match now fire once per period (day, week, month or year, local time).

        ``found``: the customers each rule matches (``recurring_rows``).
        """
        for rule, rows in zip(self.pb.recurring, found, strict=True):
            for start in range(0, len(rows), BATCH):
                chunk = rows[start : start + BATCH]
                ids = [r.id for r in chunk]
                facts = self.facts(ids, set(), recurring=rule.name)
                periods = {
                    r.id: _period(self.now.astimezone(self._zone(r.timezone)), rule.once_per) for r in chunk
                }
                keys = {r.id: f"{self.pb.name}:recurring:{rule.name}:{periods[r.id]}:{r.id}" for r in chunk}
                fired = {
                    k
                    for (k,) in self.conn.execute(
                        select(OUTBOX.c.idempotency_key).where(
                            among(
                                OUTBOX.c.idempotency_key,
                                [f"{k}:{i}" for k in keys.values() for i in range(len(rule.steps))],
                                self.dialect,
                            )
                        )
                    )
                }
                for row in chunk:
                    customer = facts.customers.get(row.id)
                    if customer is None:
                        continue
                    touch = self.pb.touch_of(row.segment) if row.segment else None
                    for index, step in enumerate(rule.steps):
                        key = f"{keys[row.id]}:{index}"
                        if key in fired:
                            continue
                        guard = facts.guards.get((row.id, f"recurring:{rule.name}", "", index), True)
                        guard_text = self.compiled.guards.get((f"recurring:{rule.name}", "", index))
                        self.action(
                            customer,
                            facts,
                            step,
                            f"recurring/{rule.name}#{index + 1}",
                            key,
                            row.segment,
                            touch,
                            row.stage,
                            None if guard else f"step guard: {guard_text.text if guard_text else ''}",
                        )

    # -- checks --------------------------------------------------------------------------------
    def facts(
        self,
        ids: list[str],
        steps: set[tuple[str, str, int]],
        recurring: str | None = None,
        contacts: list[Contact] | None = None,
    ) -> _Facts:
        """Everything the checks need about a batch of customers, in a few queries.

        ``steps``: the program steps (stage, touch, index) that may run now; only their guards are
        evaluated (with those of the ``recurring`` rule), not those of steps behind a wait.
        ``contacts``: the customers' contact columns, when already read; the customers are then
        looked up only if a guard must be evaluated.
        """
        guard_keys = [
            key
            for key in self.compiled.guards
            if key in steps or (recurring and key[0] == f"recurring:{recurring}")
        ]
        customers: dict[str, Any] = {}
        guards: dict[tuple[str, str, str, int], bool] = {}
        if contacts is not None and not guard_keys:
            customers = {contact.id: contact for contact in contacts}
        else:
            columns: list[ColumnElement[Any]] = [CUSTOMER.c[name] for name in CONTACT_COLUMNS]
            columns += [self.compiled.guards[k].condition.label(f"g{i}") for i, k in enumerate(guard_keys)]
            rows = self.conn.execute(select(*columns).where(among(CUSTOMER.c.id, ids, self.dialect)))
            for row in rows:
                customers[row.id] = row
                for i, key in enumerate(guard_keys):
                    guards[(row.id, *key)] = bool(row[len(CONTACT_COLUMNS) + i])
        suppressed: dict[tuple[str, str], str] = {}
        for customer_id, channel, reason in self.conn.execute(
            select(SUPPRESSION.c.customer_id, SUPPRESSION.c.channel, SUPPRESSION.c.reason).where(
                among(SUPPRESSION.c.customer_id, ids, self.dialect)
            )
        ):
            suppressed[(customer_id, channel)] = reason
        sent = self.sent_times(ids)
        return _Facts(customers, guards, suppressed, sent, self.open_tasks(ids))

    def open_tasks(self, ids: list[str]) -> set[str]:
        """Customers with a high-touch task open or on its way (automated marketing waits for it)."""
        if not self.pb.hold_during_tasks:
            return set()
        open_rows = select(TASK.c.customer_id).where(
            among(TASK.c.customer_id, ids, self.dialect), TASK.c.status == "open"
        )
        held = {row[0] for row in self.conn.execute(open_rows)} | (self.tasks_planned & set(ids))
        # filtered here, not in SQL, so the database looks rows up by customer (the one selective column)
        for customer_id, channel, status, *_ in self._outbox_rows(ids):
            if channel == "task" and status in ("pending", "claimed", "retry"):
                held.add(customer_id)
        return held

    def _outbox_rows(self, ids: list[str]) -> list[Any]:
        """The batch's outbox rows (customer, channel, status, playbook, key, due), read once per batch."""
        cached = self._outbox_cache
        if cached is not None and cached[0] == ids:
            return cached[1]
        query = select(
            OUTBOX.c.customer_id,
            OUTBOX.c.channel,
            OUTBOX.c.status,
            OUTBOX.c.playbook,
            OUTBOX.c.idempotency_key,
            _stored(OUTBOX.c.due_at),
        ).where(among(OUTBOX.c.customer_id, ids, self.dialect))
        rows = list(self.conn.execute(query))
        self._outbox_cache = (ids, rows)
        return rows

    def sent_times(self, ids: list[str]) -> dict[str, dict[str, dict[str, datetime]]]:
        """Per customer, times of counted customer-facing messages in the longest cap window, by playbook."""
        caps = [c for c in (self.pb.frequency_cap, self.global_cap) if c is not None]
        if not caps:
            return {}
        since = self.now - max(c.period for c in caps)
        out: dict[str, dict[str, dict[str, datetime]]] = defaultdict(lambda: defaultdict(dict))
        for customer_id, channel, status, playbook, key, due_at in self._outbox_rows(ids):
            due = _aware(due_at)
            if channel in CUSTOMER_CHANNELS and status in COUNTED_STATES and due > since:
                out[customer_id][playbook][key] = due
        return out

    def _zone(self, name: str | None) -> ZoneInfo:
        try:
            return ZoneInfo(name) if name else self.fallback_zone
        except Exception:
            return self.fallback_zone

    def action(
        self,
        customer: Any,
        facts: _Facts,
        step: AnyStep,
        step_name: str,
        key: str,
        segment: str | None,
        touch: str | None,
        stage: str | None,
        guard_reason: str | None,
    ) -> None:
        assert not isinstance(step, WaitStep)
        channel, template = step_channel(step), step_template(step)
        reason, until = guard_reason, None
        assignee = due = url = None
        if channel == "task":
            assert isinstance(step, TaskStep)
            assignee = customer.owner_email if step.assign == "owner" else step.assign
            due = self.now + step.due
            if reason is None and not assignee:
                reason = "no account owner: owner_email is empty"
        elif channel == "webhook":
            url = step.url  # type: ignore[union-attr]
        if reason is None and channel == "email" and not customer.email:
            reason = "no email address"
        if reason is None and channel == "sms" and not customer.phone:
            reason = "no phone number"
        if reason is None and (customer.id, channel) in facts.suppressed:
            reason = f"consent: {channel} suppressed ({facts.suppressed[(customer.id, channel)]})"
        if reason is None and channel in CUSTOMER_CHANNELS and customer.id in facts.open_tasks:
            reason, until = "held: a high-touch task is open for this customer", self.now + TASK_HOLD_RECHECK
        if reason is None and channel in CUSTOMER_CHANNELS:
            reason, until = self.quiet_hours(customer)
            if reason is None:
                reason, until = self.frequency(customer.id, facts)
        status = "planned" if reason is None else "suppressed"
        if status == "planned" and channel in CUSTOMER_CHANNELS:
            self.planned[customer.id][key] = self.now
        elif status == "planned" and channel == "task":
            self.tasks_planned.add(customer.id)
        self.sink.action(
            PlannedAction(
                playbook=self.pb.name,
                customer_id=customer.id,
                segment=segment,
                touch=touch,
                stage=stage,
                step=step_name,
                channel=channel,
                template=template,
                due_at=until or self.now,
                idempotency_key=key,
                priority=step.priority or self.pb.priority,
                status=status,
                reason=reason,
                until=until,
                assignee=assignee,
                due=due,
                url=url,
            )
        )

    def quiet_hours(self, customer: Any) -> tuple[str | None, datetime | None]:
        window: QuietHours | None = self.pb.quiet_hours
        if window is None:
            return None, None
        found = self._quiet.get(customer.timezone)  # the same for every customer in a zone at ``now``
        if found is None:
            zone = self._zone(customer.timezone)
            until = window.until(self.now, zone)
            reason = None if until is None else f"quiet hours until {window.end:%H:%M} {zone.key}"
            found = self._quiet[customer.timezone] = (reason, until)
        return found

    def frequency(self, customer_id: str, facts: _Facts) -> tuple[str | None, datetime | None]:
        history = facts.sent.get(customer_id, {})
        this_tick = self.planned.get(customer_id, {})
        everywhere = {key: t for sent in history.values() for key, t in sent.items()}
        for cap, times in (
            (self.pb.frequency_cap, list({**history.get(self.pb.name, {}), **this_tick}.values())),
            (self.global_cap, list({**everywhere, **this_tick}.values())),
        ):
            if cap is None:
                continue
            recent = sorted(t for t in times if t > self.now - cap.period)
            if len(recent) >= cap.count:
                until = recent[len(recent) - cap.count] + cap.period
                scope = "frequency cap" if cap is self.pb.frequency_cap else "global frequency cap"
                return f"{scope} {len(recent)}/{cap.count} per {_days(cap.period)}", until
        return None, None


@dataclass
class _Facts:
    customers: dict[str, Any]
    guards: dict[tuple[str, str, str, int], bool]
    suppressed: dict[tuple[str, str], str]
    sent: dict[str, dict[str, dict[str, datetime]]]  # customer -> playbook -> idempotency key -> due
    open_tasks: set[str] = field(default_factory=set)


def _next_wait(steps: Sequence[AnyStep], start: int) -> int:
    """Index of the first wait at or after ``start`` (``len(steps)`` when none): a run plans the steps
    from ``start`` up to it."""
    index = start
    while index < len(steps) and not isinstance(steps[index], WaitStep):
        index += 1
    return index


def _stored(column: Any) -> Any:
    """A timestamp column read as stored (naive UTC), without converting each value on the way in: the
    planner reads thousands per batch and makes the few it uses aware with ``_aware``."""
    return type_coerce(column, DateTime()).label(column.name)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _days(period: timedelta) -> str:
    from automation.rules.ast import format_duration

    return format_duration(period)


def _period(local: datetime, once_per: str) -> str:
    if once_per == "day":
        return local.strftime("%Y-%m-%d")
    if once_per == "week":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if once_per == "month":
        return local.strftime("%Y-%m")
    return local.strftime("%Y")


def iter_chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
