"""What a plan is made of, shared by the planner, its sinks and the tick.

The planner streams ``Transition``, ``EnrollmentChange`` and ``PlannedAction`` records into a
``Sink``: the preview's keeps what it shows, the tick's (``automation.outbox.store``) writes them.
``Counts`` is what ``evaluate`` returns. ``changes_table`` is the shape of the tick's temporary table,
which the evaluation fills and from which the tick writes ``customer_state`` and the planner reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Boolean, Column, MetaData, String, Table

#: How many customers (transitions, due enrollments, recurring matches) the planner handles at a time.
BATCH = 1000


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
    cohort: str = "treatment"  # a new enrollment's: treatment | holdout | control (see Checks.cohort)
    cancel: tuple[int, ...] = ()  # an exit: ids of the stage's messages still to send, to cancel


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
    status: str  # planned | suppressed | held_out (a control group: recorded, never sent)
    reason: str | None = None
    until: datetime | None = None  # for actions deferred (quiet hours, frequency cap): when they may go
    assignee: str | None = None
    due: datetime | None = None  # tasks: when the person should have done it
    url: str | None = None  # webhooks: the target (may name ${ENV})
    variant: str | None = None  # the template chosen among the step's variants (then also ``template``)

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


# -- the tick's table ----------------------------------------------------------------------------
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
