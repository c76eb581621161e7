"""Whether each planned action goes now, later or not at all: the checks of one tick.

An action is held back by its step guard, a missing address (or account owner, for a task), the
customer's consent (``suppression``), an open high-touch task, quiet hours in the customer's time
zone, or a frequency cap (the playbook's and the global one); the first that applies is its reason.
Deferred actions carry when they may go. The facts the checks read are looked up a batch of
customers at a time, and what the tick itself planned counts as if it had been written already.

``Checks`` holds the tick's planning state (connection, sink, what it planned so far); the planner
(``automation.plan.planner.Planner``) is built on it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select
from sqlalchemy.sql.elements import ColumnElement

from automation.db.in_list import among
from automation.db.tables import CUSTOMER, OUTBOX, SUPPRESSION, TASK
from automation.plan import assign
from automation.plan.records import CONTACT_COLUMNS, Contact, PlannedAction, Sink
from automation.plan.timeutil import aware, stored
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

#: A message held by an open high-touch task is looked at again after this long.
TASK_HOLD_RECHECK = timedelta(hours=6)

#: Channels that reach the customer: quiet hours and frequency caps apply to these only.
CUSTOMER_CHANNELS = ("email", "sms")
#: Outbox states that count against a frequency cap (planned or delivered, not dead or cancelled).
COUNTED_STATES = ("pending", "claimed", "retry", "sent")


@dataclass
class Facts:
    """What the checks know about a batch of customers (``Checks.facts``)."""

    customers: dict[str, Any]
    guards: dict[tuple[str, str, str, int], bool]
    suppressed: dict[tuple[str, str], str]
    sent: dict[str, dict[str, dict[str, datetime]]]  # customer -> playbook -> idempotency key -> due
    open_tasks: set[str] = field(default_factory=set)


class Checks:
    """The checks of one tick of ``compiled`` at its ``now``, and the state they keep while it plans:
    the messages and tasks planned so far, a batch's outbox rows, quiet hours per time zone."""

    def __init__(
        self,
        conn: Connection,
        compiled: CompiledPlaybook,
        sink: Sink,
        global_cap: FrequencyCap | None,
        global_control: float = 0.0,
    ):
        self.conn, self.compiled, self.sink = conn, compiled, sink
        self.dialect = conn.dialect.name
        self.pb: Playbook = compiled.loaded.playbook
        self.now = compiled.now
        self.global_cap = global_cap
        self.global_control = global_control  # AUTOMATION_GLOBAL_CONTROL: share held out of every playbook
        self.fallback_zone = ZoneInfo(self.pb.timezone)
        # customer-facing messages planned this tick, by idempotency key (some may already be flushed)
        self.planned: dict[str, dict[str, datetime]] = defaultdict(dict)
        self._outbox_cache: tuple[list[str], list[Any]] | None = None
        self._quiet: dict[str | None, tuple[str | None, datetime | None]] = {}
        # customers given a task this tick: it holds their automated messages like an open one, whether
        # or not the sink has written it yet
        self.tasks_planned: set[str] = set()

    def facts(
        self,
        ids: list[str],
        steps: set[tuple[str, str, int]],
        recurring: str | None = None,
        contacts: list[Contact] | None = None,
    ) -> Facts:
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
        return Facts(customers, guards, suppressed, sent, self.open_tasks(ids))

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
            stored(OUTBOX.c.due_at),
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
            due = aware(due_at)
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
        facts: Facts,
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
        variants = getattr(step, "variants", None)
        if variants:
            template = assign.variant(self.pb.name, step_name, customer.id, variants)
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
        control = self.control_group(customer.id) if reason is None or until is not None else None
        if control is not None and (channel != "task" or self.pb.holdout_tasks):
            # recorded like any message, never sent: the group the playbook's effect is measured against
            status, reason, until = "held_out", control, None
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
                variant=template if variants else None,
            )
        )

    def cohort(self, customer_id: str) -> str:
        """``control`` (the global control group), ``holdout`` (this playbook's) or ``treatment``."""
        if assign.in_global_control(customer_id, self.global_control):
            return "control"
        if assign.in_holdout(self.pb.name, customer_id, self.pb.holdout):
            return "holdout"
        return "treatment"

    def control_group(self, customer_id: str) -> str | None:
        """Why the customer gets nothing from this playbook (a control group), or None."""
        if assign.in_global_control(customer_id, self.global_control):
            return f"holdout: global control group ({self.global_control * 100:g}%)"
        if assign.in_holdout(self.pb.name, customer_id, self.pb.holdout):
            return f"holdout: {self.pb.holdout * 100:g}% of {self.pb.name}'s customers get nothing"
        return None

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

    def frequency(self, customer_id: str, facts: Facts) -> tuple[str | None, datetime | None]:
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


def _days(period: timedelta) -> str:
    from automation.rules.ast import format_duration

    return format_duration(period)
