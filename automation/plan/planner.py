"""Plan a tick of a playbook at a moment ``now``: the one path of preview, explain, tests and the worker.

``plan`` streams the customers whose segment or stage changed (``automation.plan.evaluate``), the
enrollments whose next step is due, and the recurring rules that match now
(``automation.plan.recurring``). Customers who left a stage exit its program, entrants start the
program of their stage and touch model (unless re-entry forbids it), and each program runs from its
position up to its next wait. Every message or task step becomes a ``PlannedAction`` with its
idempotency key and, when it is held back, its reason (``automation.plan.guards``).

Nothing is written here: a ``Sink`` receives the plan. The preview's sink keeps what it needs to show
and writes nothing; the tick's sink writes state, history, enrollments and the outbox in one
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, union

from automation.db.in_list import among
from automation.db.tables import ENROLLMENT, OUTBOX
from automation.outbox.lease import CLAIMABLE
from automation.plan.alongside import Alongside
from automation.plan.evaluate import transitions
from automation.plan.records import BATCH, Contact, EnrollmentChange, Sink, Transition
from automation.plan.recurring import RecurringRules
from automation.plan.timeutil import aware, stored
from automation.playbook.models import FrequencyCap, WaitStep
from automation.rules.compiled import AnyStep, CompiledPlaybook


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
    global_control: float = 0.0,
) -> None:
    """Plan the next tick of ``compiled`` at ``compiled.now`` into ``sink``.

    Nothing is written here. A tick first evaluates into its table (``materialize``) and passes
    ``materialized=True``; the same ``customer_ids`` and ``only`` must have been given to both.
    ``only`` (a SELECT of customer ids) limits the stage and recurring rules to those customers, and
    ``only_recurring`` (another, or None) adds customers for the recurring rules alone: an incremental
    tick's candidates (``automation.plan.incremental``). Due program steps run for everyone.

    ``global_control``: the share of customers in the global control group (``AUTOMATION_GLOBAL_CONTROL``).

    ``alongside``: work for ``conn`` that runs on a thread while the tick is planned, the planner's
    lookups going through ``alongside.reader`` meanwhile (see ``Alongside``).
    """
    planner = Planner(conn, compiled, sink, global_cap, global_control)
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


def _leave_and_enter(planner: Planner, sink: Sink, found: Iterable[Transition]) -> set[str]:
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


class Planner(RecurringRules):
    """The planning of one tick: leaving and entering stages, and walking the programs; the recurring
    rules and the checks come from its bases (``RecurringRules``, ``Checks``)."""

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
            if policy.mode == "never" or (policy.cooldown and self.now - aware(started) < policy.cooldown)
        }

    def enrollments(self, ids: list[str]) -> list[Any]:
        """Every enrollment of these customers in this playbook (looked up by customer, one query)."""
        if not ids:
            return []
        e = ENROLLMENT.c
        query = select(
            e.id, e.customer_id, e.stage, e.touch, e.segment, stored(e.started_at), e.step_index, e.status
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
        in SQL, so the database looks rows up by customer. Their messages still to send are looked up
        here too, through the planner's connection (a PostgreSQL tick's second one), so the tick's own
        connection cancels them by id.
        """
        leaving = [
            row
            for row in history
            if row.customer_id in exited and row.status == "active" and aware(row.started_at) < self.now
        ]
        unsent = self.unsent_messages({(row.customer_id, row.stage) for row in leaving})
        for row in leaving:
            self.sink.enrollment(
                EnrollmentChange(
                    row.customer_id,
                    row.stage,
                    row.touch,
                    row.segment,
                    aware(row.started_at),
                    row.step_index,
                    None,
                    "exited",
                    row.id,
                    f"left stage {row.stage}",
                    cancel=tuple(unsent.get((row.customer_id, row.stage), ())),
                )
            )

    def unsent_messages(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], list[int]]:
        """Ids of the messages still to send of each (customer, stage), from this playbook."""
        if not pairs:
            return {}
        o = OUTBOX.c
        # the rest is filtered here, not in SQL, so the database looks rows up by customer (the one
        # selective column; told of the statuses too, SQLite scans every message still to send)
        query = select(o.id, o.customer_id, o.stage, o.status, o.playbook).where(
            among(o.customer_id, sorted({customer for customer, _ in pairs}), self.dialect)
        )
        found: dict[tuple[str, str], list[int]] = {}
        for message_id, customer_id, stage, status, playbook in self.conn.execute(query):
            if status in CLAIMABLE and playbook == self.pb.name and (customer_id, stage) in pairs:
                found.setdefault((customer_id, stage), []).append(message_id)
        return found

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
                        aware(row.started_at),
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
                    cohort=self.cohort(d.customer_id) if d.enrollment_id is None else "treatment",
                )
            )


def _next_wait(steps: Sequence[AnyStep], start: int) -> int:
    """Index of the first wait at or after ``start`` (``len(steps)`` when none): a run plans the steps
    from ``start`` up to it."""
    index = start
    while index < len(steps) and not isinstance(steps[index], WaitStep):
        index += 1
    return index
