"""Recording a tick's plan: ``OutboxSink`` writes every planned message before anything is sent.

The sink receives a tick's plan and writes, inside the caller's transaction, the new customer state,
the stage history, enrollment changes and one outbox row per action. The UNIQUE ``idempotency_key``
makes a second enqueue of the same action a no-op, so repeated or overlapping ticks plan nothing
twice. Rows are held and written in batches (``FLUSH_EVERY``), one statement per kind of write, and
while the planner plans on another connection the rows planned so far are written along
(``write_while``). Claiming and marking the rows is :mod:`automation.outbox.lease`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Integer,
    String,
    Table,
    case,
    func,
    literal,
    null,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from automation.db.in_list import PgArray
from automation.db.tables import ENROLLMENT, HISTORY, OUTBOX, STATE
from automation.db.types import UTCDateTime
from automation.outbox.lease import CLAIMABLE
from automation.plan.records import CHANGES, EnrollmentChange, PlannedAction, Transition

#: Rows a sink holds before writing them: a steady tick's plan (thousands of rows) goes in one statement
#: per kind of write, at the end; a first tick's (hundreds of thousands) every 20,000 rows (about 20 MB).
#: What the planner needs of rows not yet written it keeps itself (messages and tasks planned this tick).
FLUSH_EVERY = 20_000
#: While the planner plans (``write_while``), the rows it planned are written once at least this many wait.
WRITE_ALONG_FROM = 2_000
#: PostgreSQL: refresh the planner's statistics of outbox and enrollment once a tick has written this
#: many rows, and again each time it has doubled them (see ``OutboxSink.flush``).
ANALYZE_FROM = 10_000
#: How long a marketing message (email, SMS) stays worth sending after it was due.
DEFAULT_TTL = timedelta(days=2)


def _insert(conn: Connection, table: Table) -> Any:
    """A dialect-specific INSERT that supports ON CONFLICT."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


@dataclass
class OutboxSink:
    """Writes a tick's plan into the database, in the caller's transaction, in batches."""

    conn: Connection
    playbook: str
    now: datetime
    quiet_hours: str | None = None  # kept with each message so the dispatcher can check it again
    fallback_timezone: str = "UTC"
    ttl: timedelta = DEFAULT_TTL
    hold_during_tasks: bool = True
    transitions: int = 0
    enrolled: int = 0
    exited: int = 0
    enqueued: int = 0
    held: int = 0
    _actions: list[dict[str, Any]] = field(default_factory=list)
    _new_enrollments: list[dict[str, Any]] = field(default_factory=list)
    _enrollment_updates: list[dict[str, Any]] = field(default_factory=list)
    _cancels: list[dict[str, Any]] = field(default_factory=list)
    _written: int = 0
    _analyzed_at: int = 0
    _payloads: dict[tuple[Any, ...], str] = field(default_factory=dict)
    # ``write_while`` may run on a thread while the planner fills the sink (``engine.Alongside``): with
    # ``_busy`` the connection serves one writer at a time, with ``_rows`` a flush takes the rows planned so
    # far while the planner adds more
    _busy: threading.Lock = field(default_factory=threading.Lock)
    _rows: threading.Lock = field(default_factory=threading.Lock)

    # -- Sink protocol --------------------------------------------------------------------------
    def transition(self, item: Transition) -> None:
        """Counted only: ``write_states`` records all transitions at once from the tick's change table."""
        self.transitions += 1

    def write_while(self, touch_of: dict[str, str], planning: threading.Event) -> None:
        """The work of a tick's connection while the planner plans through another (``engine.Alongside``):
        the state and history, then the rows planned so far, again and again until ``planning`` is set.
        What is planned after that is written by ``flush``."""
        self.write_states(touch_of)
        while not planning.is_set():
            if self.pending() >= WRITE_ALONG_FROM:
                self.flush()
            else:
                planning.wait(0.005)

    def pending(self) -> int:
        """Rows held, not yet written."""
        return (
            len(self._cancels)
            + len(self._enrollment_updates)
            + len(self._new_enrollments)
            + len(self._actions)
        )

    def write_states(self, touch_of: dict[str, str]) -> None:
        """Upsert ``customer_state`` and append ``stage_history`` for every change, inside the database."""
        with self._busy:
            self._write_states(touch_of)

    def _write_states(self, touch_of: dict[str, str]) -> None:
        c = CHANGES.c
        changed = or_(c.known.is_(None), c.stage.is_distinct_from(c.previous_stage))
        touch = case(touch_of, value=c.segment, else_=null()) if touch_of else null()
        entered = case((changed, literal(self.now, UTCDateTime())), else_=null())
        states = (
            select(
                literal(self.playbook, String()).label("playbook"),
                c.customer_id,
                c.segment,
                touch.label("touch"),
                c.stage,
                entered.label("stage_entered_at"),
                literal(self.now, UTCDateTime()).label("evaluated_at"),
            )
            .select_from(CHANGES)
            .where(c.changed)  # SQLite needs a WHERE before ON CONFLICT after a SELECT anyway
        )
        stmt = _insert(self.conn, STATE).from_select(
            ["playbook", "customer_id", "segment", "touch", "stage", "stage_entered_at", "evaluated_at"],
            states,
        )
        self.conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["playbook", "customer_id"],
                set_={
                    "segment": stmt.excluded.segment,
                    "touch": stmt.excluded.touch,
                    "stage": stmt.excluded.stage,
                    "stage_entered_at": func.coalesce(
                        stmt.excluded.stage_entered_at, STATE.c.stage_entered_at
                    ),
                    "evaluated_at": stmt.excluded.evaluated_at,
                },
            )
        )
        note = case(
            (changed, null()),
            else_=literal("segment ", String())
            + func.coalesce(c.previous_segment, "-")
            + literal(" -> ", String())
            + func.coalesce(c.segment, "-"),
        )
        history = select(
            literal(self.playbook, String()),
            c.customer_id,
            c.previous_stage,
            c.stage,
            c.segment,
            touch,
            literal(self.now, UTCDateTime()),
            note,
        ).where(c.changed)
        self.conn.execute(
            HISTORY.insert().from_select(
                ["playbook", "customer_id", "from_stage", "to_stage", "segment", "touch", "at", "note"],
                history,
            )
        )

    def enrollment(self, item: EnrollmentChange) -> None:
        values = {
            "step_index": item.step_index,
            "next_step_at": item.next_step_at,
            "status": item.status,
            "ended_at": self.now if item.status != "active" else None,
            "end_reason": item.reason,
        }
        if item.enrollment_id is None:
            self.enrolled += 1
            new = {
                "playbook": self.playbook,
                "customer_id": item.customer_id,
                "stage": item.stage,
                "segment": item.segment,
                "touch": item.touch,
                "started_at": item.started_at,
                "cohort": item.cohort,
                **values,
            }
            with self._rows:
                self._new_enrollments.append(new)
        else:
            updated = {"e_id": item.enrollment_id, **{f"e_{k}": v for k, v in values.items()}}
            with self._rows:
                if item.status == "exited":
                    self.exited += 1
                    self._cancels.extend({"c_id": i, "c_reason": item.reason} for i in item.cancel)
                self._enrollment_updates.append(updated)
        if len(self._new_enrollments) + len(self._enrollment_updates) >= FLUSH_EVERY:
            self.flush()

    def action(self, item: PlannedAction) -> None:
        status, error = "pending", None
        if item.status == "held_out":
            status, error = "held_out", item.reason
        elif item.status == "suppressed":
            reason = item.reason or ""
            if item.until is not None:  # quiet hours, frequency cap: deferred, not dropped
                status, error = "pending", reason
                self.held += 1
            elif reason.startswith("step guard"):
                status, error = "skipped", reason
            else:
                status, error = "suppressed", reason
        self.enqueued += 1
        customer_facing = item.channel in ("email", "sms")
        row = {
            "idempotency_key": item.idempotency_key,
            "playbook": item.playbook,
            "customer_id": item.customer_id,
            "channel": item.channel,
            "template": item.template,
            "stage": item.stage,
            "segment": item.segment,
            "touch": item.touch,
            "step": item.step,
            "priority": item.priority,
            "payload": self._payload(item.assignee, item.url, item.due, customer_facing, item.variant),
            "status": status,
            "due_at": item.due_at,
            "expires_at": item.due_at + self.ttl if customer_facing else None,
            "last_error": error,
            "created_at": self.now,
            "attempts": 0,
        }
        with self._rows:
            self._actions.append(row)
        if len(self._actions) >= FLUSH_EVERY:
            self.flush()

    def _payload(
        self, assignee: str | None, url: str | None, due: datetime | None, facing: bool, variant: str | None
    ) -> str:
        """The message's payload as JSON text, written once per distinct payload of the tick."""
        key = (assignee, url, due, facing, variant)
        text = self._payloads.get(key)
        if text is None:
            payload: dict[str, Any] = {"timezone": self.fallback_timezone}
            if assignee:
                payload["assignee"] = assignee
            if url:
                payload["url"] = url
            if due:
                payload["due"] = due.isoformat()
            if variant:
                payload["variant"] = variant  # the template chosen among the step's variants
            if self.quiet_hours and facing:
                payload["quiet_hours"] = self.quiet_hours
            if self.hold_during_tasks and facing:
                payload["hold_during_tasks"] = True
            text = self._payloads[key] = json.dumps(payload)
        return text

    # -- writing --------------------------------------------------------------------------------
    def flush(self) -> None:
        with self._busy:
            self._flush()

    def _flush(self) -> None:
        with self._rows:  # what was planned until now; the planner may go on adding meanwhile
            rows = _Rows(self._cancels, self._enrollment_updates, self._new_enrollments, self._actions)
            self._cancels, self._enrollment_updates, self._new_enrollments, self._actions = [], [], [], []
        self._written += len(rows.actions)
        if self.conn.dialect.name == "sqlite":
            self._flush_sqlite(rows)
        else:
            self._flush_postgresql(rows)
        if self.conn.dialect.name == "postgresql" and self._written >= max(
            2 * self._analyzed_at, ANALYZE_FROM
        ):
            # a first tick writes hundreds of thousands of rows in one transaction; until the planner
            # sees them it plans the per-batch lookups by customer as scans of the growing tables
            self.conn.exec_driver_sql("ANALYZE outbox, enrollment")
            self._analyzed_at = self._written

    def _flush_sqlite(self, rows: _Rows) -> None:
        """SQLite: driver-level executemany with parameters in the form the column types store them.

        Without SQLAlchemy's per-row parameter handling, which costs more than SQLite's own work for
        these narrow rows.
        """
        if rows.cancels:  # a customer who left a stage: its messages still to send are not sent
            claimable = " OR ".join("status = ?" for _ in CLAIMABLE)
            self.conn.exec_driver_sql(
                f"UPDATE outbox SET status = 'cancelled', last_error = ? WHERE id = ? AND ({claimable})",
                [(c["c_reason"], c["c_id"], *CLAIMABLE) for c in rows.cancels],
            )
        if rows.enrollment_updates:
            params = _driver_rows(
                self.conn,
                ENROLLMENT,
                rows.enrollment_updates,
                [
                    ("e_step_index", "step_index"),
                    ("e_next_step_at", "next_step_at"),
                    ("e_status", "status"),
                    ("e_ended_at", "ended_at"),
                    ("e_end_reason", "end_reason"),
                    ("e_id", "id"),
                ],
            )
            self.conn.exec_driver_sql(
                "UPDATE enrollment SET step_index = ?, next_step_at = ?, status = ?, ended_at = ?, "
                "end_reason = ? WHERE id = ?",
                params,
            )
        if rows.new_enrollments:
            self.conn.exec_driver_sql(
                *_insert_sql(
                    self.conn, ENROLLMENT, rows.new_enrollments, "playbook, customer_id, stage, started_at"
                )
            )
        if rows.actions:
            self.conn.exec_driver_sql(*_insert_sql(self.conn, OUTBOX, rows.actions, "idempotency_key"))

    def _flush_postgresql(self, rows: _Rows) -> None:
        """PostgreSQL: one statement per kind of write, its rows passed as arrays and unnested.

        A parameter list per row (executemany) costs a round of execution per row, and multi-row
        VALUES a parse of thousands of parameters; arrays are parsed once.
        """
        if rows.cancels:  # a customer who left a stage: its messages still to send are not sent
            # by id: the planner looked them up (through its own connection); one still to send then
            self.conn.exec_driver_sql(
                "UPDATE outbox SET status = 'cancelled', last_error = u.reason "
                "FROM unnest(%s::bigint[], %s::text[]) AS u(id, reason) "
                "WHERE outbox.id = u.id AND outbox.status = ANY(%s)",
                (
                    PgArray(c["c_id"] for c in rows.cancels),
                    PgArray(c["c_reason"] for c in rows.cancels),
                    PgArray(CLAIMABLE),
                ),
            )
        if rows.enrollment_updates:
            latest = {u["e_id"]: u for u in rows.enrollment_updates}  # the last update of each wins
            columns = ["step_index", "next_step_at", "status", "ended_at", "end_reason", "id"]
            arrays = _pg_arrays(
                ENROLLMENT, [{k[2:]: v for k, v in u.items()} for u in latest.values()], columns
            )
            self.conn.exec_driver_sql(
                "UPDATE enrollment SET step_index = u.step_index, next_step_at = u.next_step_at, "
                "status = u.status, ended_at = u.ended_at, end_reason = u.end_reason "
                f"FROM unnest({_pg_casts(ENROLLMENT, columns)}) AS u({', '.join(columns)}) "
                "WHERE enrollment.id = u.id",
                tuple(arrays),
            )
        if rows.new_enrollments:
            self.conn.exec_driver_sql(
                *_pg_insert(ENROLLMENT, rows.new_enrollments, "playbook, customer_id, stage, started_at")
            )
        if rows.actions:
            self.conn.exec_driver_sql(*_pg_insert(OUTBOX, rows.actions, "idempotency_key"))

    def stats(self) -> dict[str, int]:
        return {
            "transitions": self.transitions,
            "enrolled": self.enrolled,
            "exited": self.exited,
            "actions": self.enqueued,
            "deferred": self.held,
        }


@dataclass
class _Rows:
    """Rows a sink holds until it writes them."""

    cancels: list[dict[str, Any]]
    enrollment_updates: list[dict[str, Any]]
    new_enrollments: list[dict[str, Any]]
    actions: list[dict[str, Any]]


def _driver_rows(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]
) -> list[tuple[Any, ...]]:
    """Parameter tuples: each (key, column) value converted as the column's type binds it.

    Built a column at a time, so only the columns whose type converts (timestamps) call a function
    per value. JSON columns are given as their text (see ``OutboxSink._payload``).
    """
    values = []
    for key, column in columns:
        process = None if _is(table, column, JSON) else table.c[column].type.bind_processor(conn.dialect)
        found = [row[key] for row in rows]
        values.append(found if process is None else [v if v is None else process(v) for v in found])
    return list(zip(*values, strict=True))


def _insert_sql(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], conflict: str
) -> tuple[str, list[tuple[Any, ...]]]:
    """INSERT ... ON CONFLICT DO NOTHING of ``rows`` (dicts with the same keys), driver-level."""
    names = list(rows[0])
    sql = (
        f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) "
        f"ON CONFLICT ({conflict}) DO NOTHING"
    )
    return sql, _driver_rows(conn, table, rows, [(name, name) for name in names])


def _is(table: Table, column: str, kind: type) -> bool:
    """Whether ``column``'s type is of the generic ``kind`` (DateTime, Integer, JSON)."""
    affinity = table.c[column].type._type_affinity
    return affinity is not None and issubclass(affinity, kind)


def _pg_type(table: Table, column: str) -> str:
    """The PostgreSQL element type an array of ``column``'s values is sent as."""
    if _is(table, column, DateTime):
        return "timestamp"  # stored as naive UTC (UTCDateTime)
    if _is(table, column, Integer):
        return "bigint"
    return "text"  # strings, and JSON as its text (cast to jsonb when inserted)


def _pg_casts(table: Table, columns: Sequence[str]) -> str:
    return ", ".join(f"%s::{_pg_type(table, c)}[]" for c in columns)


def _pg_arrays(table: Table, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[PgArray]:
    """One array per column (JSON columns given as their text; the array literal writes timestamps as
    naive UTC)."""
    arrays = []
    for column in columns:
        arrays.append(PgArray([row[column] for row in rows]))
    return arrays


def _pg_insert(table: Table, rows: Sequence[dict[str, Any]], conflict: str) -> tuple[str, tuple[Any, ...]]:
    """INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING of ``rows`` (same keys)."""
    names = list(rows[0])
    selected = ", ".join(f"u.{n}::jsonb" if _is(table, n, JSON) else f"u.{n}" for n in names)
    sql = (
        f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {selected} "
        f"FROM unnest({_pg_casts(table, names)}) AS u({', '.join(names)}) "
        f"ON CONFLICT ({conflict}) DO NOTHING"
    )
    return sql, tuple(_pg_arrays(table, rows, names))
