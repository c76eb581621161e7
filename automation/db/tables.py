"""The tables. Customer data (``customer``, ``event``) is imported; the rest is state the engine keeps.

State is designed for incremental ticks: ``customer_state`` holds each customer's last evaluated
segment and stage per playbook, so a tick compares what the rules say now with what is stored and
writes only the difference (transitions go to ``stage_history``, new program runs to ``enrollment``,
messages to ``outbox`` under a unique idempotency key).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, String, Table, UniqueConstraint
from sqlmodel import Field, SQLModel

from automation.db.types import JSONType, UTCDateTime


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


class Customer(SQLModel, table=True):
    __tablename__ = "customer"
    __table_args__ = (
        # providers' reports name the recipient: finding the customer by address (automation.feedback)
        Index("ix_customer_email", "email"),
        Index("ix_customer_phone", "phone"),
    )

    id: str = Field(primary_key=True, max_length=255)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=20)
    first_name: str | None = Field(default=None, max_length=255)
    last_name: str | None = Field(default=None, max_length=255)
    timezone: str = Field(default="UTC", max_length=64)
    locale: str | None = Field(default=None, max_length=35)
    owner_email: str | None = Field(default=None, max_length=320)
    plan: str | None = Field(default=None, max_length=100)
    clv: float | None = None
    orders_count: int = 0
    # indexed: a tick finds the customers whose days_since/days_until/anniversary rules turned
    signed_up_at: datetime | None = _ts(index=True)
    last_order_at: datetime | None = _ts(index=True)
    last_seen_at: datetime | None = _ts(index=True)
    birthday: date | None = Field(default=None, index=True)
    nps: int | None = None
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    updated_at: datetime | None = _ts()


class Event(SQLModel, table=True):
    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_customer_name_time", "customer_id", "name", "occurred_at"),
        # a tick finds the customers whose events entered or left a rule's window since the last tick
        Index("ix_event_name_time", "name", "occurred_at"),
        # the sender's id of an event (Segment's messageId): the same call stored twice is one event
        Index("uq_event_message_id", "message_id", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(
        sa_column=Column(String(255), ForeignKey("customer.id", ondelete="CASCADE"), nullable=False)
    )
    name: str = Field(max_length=255)
    occurred_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    properties: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    message_id: str | None = Field(default=None, max_length=255)


class CustomerChange(SQLModel, table=True):
    """Which customers were written since a tick: filled by database triggers on customer and event.

    ``seq`` only grows (AUTOINCREMENT on SQLite, a sequence on PostgreSQL), so a tick reads the
    changes after the position it stored in ``tick_cursor`` and re-evaluates only those customers.
    Rows every playbook has read are deleted by the tick.
    """

    __tablename__ = "customer_change"
    __table_args__ = {"sqlite_autoincrement": True}

    seq: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    customer_id: str = Field(max_length=255)


class TickCursor(SQLModel, table=True):
    """Where a playbook's last tick left off: its ``now``, the change log position, the rules it ran."""

    __tablename__ = "tick_cursor"

    playbook: str = Field(primary_key=True, max_length=255)
    at: datetime = Field(sa_type=UTCDateTime, nullable=False)  # the tick's now
    change_seq: int = Field(sa_type=BigInteger, nullable=False)  # log rows up to this one are read
    fingerprint: str = Field(max_length=64)  # of the rules; another value means evaluate everyone
    full_at: datetime = Field(sa_type=UTCDateTime, nullable=False)  # the last tick that evaluated everyone


class CustomerState(SQLModel, table=True):
    """Last evaluated segment and stage of a customer in a playbook (one row per pair)."""

    __tablename__ = "customer_state"
    # room on each page for the next tick's update of its rows: heap-only updates (migration 0005)
    __table_args__ = ({"postgresql_with": {"fillfactor": 80}},)

    playbook: str = Field(primary_key=True, max_length=255)
    customer_id: str = Field(primary_key=True, max_length=255)
    segment: str | None = Field(default=None, max_length=255)
    touch: str | None = Field(default=None, max_length=10)
    stage: str | None = Field(default=None, max_length=255)
    stage_entered_at: datetime | None = _ts()
    evaluated_at: datetime | None = _ts()


class StageHistory(SQLModel, table=True):
    """Every stage or segment transition, with its time: the history a marketer can query."""

    __tablename__ = "stage_history"
    # by period, as the report reads it; a tick's rows all go to the end of it (migration 0011)
    __table_args__ = (Index("ix_stage_history_time", "playbook", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    playbook: str = Field(max_length=255)
    customer_id: str = Field(max_length=255)
    from_stage: str | None = Field(default=None, max_length=255)
    to_stage: str | None = Field(default=None, max_length=255)
    segment: str | None = Field(default=None, max_length=255)
    touch: str | None = Field(default=None, max_length=10)
    at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    note: str | None = None


class Enrollment(SQLModel, table=True):
    """A customer's run through one program (a stage entry for a touch model)."""

    __tablename__ = "enrollment"
    __table_args__ = (
        UniqueConstraint("playbook", "customer_id", "stage", "started_at", name="uq_enrollment_entry"),
        Index("ix_enrollment_due", "status", "next_step_at"),
        # lookups by (playbook, customer) use uq_enrollment_entry's leading columns
    )

    id: int | None = Field(default=None, primary_key=True)
    playbook: str = Field(max_length=255)
    customer_id: str = Field(max_length=255)
    stage: str = Field(max_length=255)
    segment: str | None = Field(default=None, max_length=255)
    touch: str = Field(max_length=10)
    started_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    step_index: int = 0
    next_step_at: datetime | None = _ts()
    status: str = Field(default="active", max_length=20)  # active | completed | exited
    ended_at: datetime | None = _ts()
    end_reason: str | None = None
    # treatment | holdout (the playbook's) | control (the global control group), fixed at entry
    cohort: str = Field(default="treatment", max_length=20, sa_column_kwargs={"server_default": "treatment"})


class Outbox(SQLModel, table=True):
    """Every planned message, recorded before it is sent. The UNIQUE key makes enqueueing idempotent."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_claim", "status", "due_at"),
        Index("ix_outbox_customer", "customer_id", "created_at"),
        Index("ix_outbox_provider", "provider_id"),  # a provider's report names its own message id
    )

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(max_length=512, unique=True)
    playbook: str = Field(max_length=255)
    customer_id: str = Field(max_length=255)
    channel: str = Field(max_length=20)  # email | sms | webhook | task
    template: str = Field(max_length=255)
    stage: str | None = Field(default=None, max_length=255)
    segment: str | None = Field(default=None, max_length=255)
    touch: str | None = Field(default=None, max_length=10)
    step: str | None = Field(default=None, max_length=255)
    priority: int = 0
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    status: str = Field(default="pending", max_length=20)  # pending|claimed|retry|sent|dead|cancelled
    due_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    expires_at: datetime | None = _ts()
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=255)
    lease_until: datetime | None = _ts()
    last_error: str | None = None
    provider_id: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    sent_at: datetime | None = _ts()
    # what happened after sending (providers' webhooks, our click and open tracking): see ``feedback``
    provider_status: str | None = Field(default=None, max_length=30)  # the provider's last word
    delivered_at: datetime | None = _ts()
    opened_at: datetime | None = _ts()  # the first open that did not look machine-made
    opens: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    machine_opens: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    clicked_at: datetime | None = _ts()
    clicks: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    bounced_at: datetime | None = _ts()
    complained_at: datetime | None = _ts()


#: Statuses a dispatcher may pick up (a claimed message whose lease expired included).
PICKABLE = ("pending", "retry", "claimed")
_pickable = Outbox.__table__.c.status.in_(PICKABLE)  # type: ignore[attr-defined]
#: The dispatcher's pick: per status, due messages in the order they are sent (priority first). Only
#: messages still to send are in it, so sending or cancelling one removes an entry and adds none.
Index(
    "ix_outbox_pick",
    Outbox.__table__.c.status,  # type: ignore[attr-defined]
    Outbox.__table__.c.priority.desc(),  # type: ignore[attr-defined]
    Outbox.__table__.c.due_at,  # type: ignore[attr-defined]
    Outbox.__table__.c.id,  # type: ignore[attr-defined]
    sqlite_where=_pickable,
    postgresql_where=_pickable,
)


class Suppression(SQLModel, table=True):
    """Consent: a channel a customer must not receive (unsubscribed, bounced, complained, manual, invalid)."""

    __tablename__ = "suppression"
    __table_args__ = (UniqueConstraint("channel", "customer_id", name="uq_suppression_channel_customer"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=20)
    customer_id: str = Field(max_length=255, index=True)
    reason: str = Field(max_length=50)
    note: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class Feedback(SQLModel, table=True):
    """One fact reported after sending (delivered, bounced, opened, clicked, an SMS reply, ...), once:
    ``dedupe_key`` is UNIQUE, so a provider's retry of the same report records nothing new."""

    __tablename__ = "feedback"
    __table_args__ = (
        Index("ix_feedback_outbox", "outbox_id", "kind"),
        Index("ix_feedback_customer", "customer_id", "occurred_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    dedupe_key: str = Field(max_length=255, unique=True)
    outbox_id: int | None = None  # the message it is about, when it could be matched
    customer_id: str | None = Field(default=None, max_length=255)
    channel: str = Field(max_length=20)
    kind: str = Field(max_length=30)
    source: str = Field(max_length=30)  # twilio | sendgrid | postmark | generic | tracking
    occurred_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    received_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))


class Conversion(SQLModel, table=True):
    """A goal reached: a customer whose goal rule became true within the window after entering the
    program (``goal`` is ``playbook`` for the playbook's own goal, else the stage of a program's), with
    the customer's cohort and the program's last message sent before it (last-touch attribution)."""

    __tablename__ = "conversion"
    __table_args__ = (
        UniqueConstraint("playbook", "goal", "customer_id", "entered_at", name="uq_conversion_entry"),
        Index("ix_conversion_time", "playbook", "converted_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    playbook: str = Field(max_length=255)
    goal: str = Field(max_length=255)
    customer_id: str = Field(max_length=255)
    enrollment_id: int | None = None
    cohort: str = Field(default="treatment", max_length=20)
    entered_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    converted_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    outbox_id: int | None = None  # the attributed message, if one was sent before the conversion
    template: str | None = Field(default=None, max_length=255)  # its template (the variant)


class Task(SQLModel, table=True):
    """A high-touch action: a person does something for a customer by a due date."""

    __tablename__ = "task"
    __table_args__ = (Index("ix_task_open", "customer_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(max_length=512, unique=True)
    playbook: str = Field(max_length=255)
    customer_id: str = Field(max_length=255)
    assignee: str | None = Field(default=None, max_length=320)
    title: str
    body: str = ""
    due_at: datetime | None = _ts()
    status: str = Field(default="open", max_length=10)  # open | done
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    done_at: datetime | None = _ts()


class RunLog(SQLModel, table=True):
    """One line per tick or dispatch run: when, how long, what changed."""

    __tablename__ = "run_log"
    __table_args__ = (Index("ix_run_log_playbook", "playbook", "started_at"),)

    id: int | None = Field(default=None, primary_key=True)
    playbook: str | None = Field(default=None, max_length=255)
    kind: str = Field(max_length=20)  # tick | dispatch
    started_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    finished_at: datetime | None = _ts()
    stats: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    error: str | None = None


metadata = SQLModel.metadata

# The tables as SQLAlchemy Core objects, named once for every module that builds statements.
CUSTOMER: Table = metadata.tables["customer"]
EVENT: Table = metadata.tables["event"]
CHANGE: Table = metadata.tables["customer_change"]
CURSOR: Table = metadata.tables["tick_cursor"]
STATE: Table = metadata.tables["customer_state"]
HISTORY: Table = metadata.tables["stage_history"]
ENROLLMENT: Table = metadata.tables["enrollment"]
OUTBOX: Table = metadata.tables["outbox"]
SUPPRESSION: Table = metadata.tables["suppression"]
TASK: Table = metadata.tables["task"]
FEEDBACK: Table = metadata.tables["feedback"]
CONVERSION: Table = metadata.tables["conversion"]
RUN_LOG: Table = metadata.tables["run_log"]
