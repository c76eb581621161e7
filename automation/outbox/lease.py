"""Claiming and marking outbox rows: the lease a worker holds on a message while it sends it.

A dispatcher ``claim``s due rows for a while (``lease_until``), sends them, and marks each one
(``mark_sent``, ``mark_failed``); on shutdown it gives back what it still holds (``release``). An
expired lease makes a row claimable again, so a worker that dies loses no message. ``next_due`` tells
the scheduler when the outbox next needs a worker.

Statuses of an outbox row:
  pending     waiting for ``due_at`` (deferred by quiet hours or a frequency cap: a later ``due_at``)
  claimed     a worker holds it until ``lease_until``; an expired lease makes it claimable again
  retry       a transient failure; claimable again at ``due_at``
  sent        delivered (``provider_id`` set)
  dead        a permanent failure, an expired message or too many attempts (``last_error`` says why)
  suppressed  not sendable: no address, no consent (``last_error`` says why)
  skipped     a step guard said no when the step came due
  cancelled   the customer left the stage before the message went out
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, text, union_all, update
from sqlalchemy.sql.elements import ColumnElement

from automation.db.tables import OUTBOX, PICKABLE

#: Statuses a claim takes a due row from (a tick cancels a leaving customer's messages in these too).
CLAIMABLE = ("pending", "retry")
#: Statuses a row never leaves.
#: (failed: the provider said so; held_out: a control group's message, recorded and never sent)
FINAL = ("sent", "dead", "suppressed", "skipped", "cancelled", "failed", "held_out")

#: The columns :func:`claim` returns: what sending a message needs.
CLAIMED_COLUMNS = (
    "id",
    "idempotency_key",
    "playbook",
    "customer_id",
    "channel",
    "template",
    "stage",
    "segment",
    "touch",
    "step",
    "priority",
    "payload",
    "due_at",
    "expires_at",
    "attempts",
)


def claim(
    conn: Connection,
    worker: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    channels: Sequence[str] | None = None,
) -> list[Any]:
    """Take up to ``limit`` due messages for ``worker`` until ``now + lease``; returns the claimed rows
    (the columns in ``CLAIMED_COLUMNS``, ``attempts`` already counting this attempt).

    PostgreSQL skips rows other workers hold (``FOR UPDATE SKIP LOCKED``); SQLite has one writer at a
    time. A claimed row whose lease has expired is claimable again (its worker died).
    """
    stmt = _claim_statement(conn.dialect.name, tuple(channels) if channels else (), limit)
    params = {"claim_now": now, "claim_worker": worker, "claim_until": now + lease}
    return list(conn.execute(stmt, params))


@functools.lru_cache(maxsize=64)
def _claim_statement(dialect: str, channels: tuple[str, ...], limit: int) -> Any:
    """The claim's ``UPDATE ... RETURNING``, built once per database, channel set and batch size (its
    time, worker and lease end are the parameters ``claim_now``, ``claim_worker``, ``claim_until``):
    SQLAlchemy then finds its compiled form without building and hashing the statement per batch."""
    # one ordered, limited pick per status, each read in order from ix_outbox_pick, then the best of
    # those: a claim costs what it takes, not a sort of the whole due backlog
    # (each repeats the index's condition word for word: SQLite uses a partial index only then)
    statuses = ", ".join(repr(s) for s in PICKABLE)  # constants of this module, no input
    pickable: ColumnElement[bool] = text(f"outbox.status IN ({statuses})")  # type: ignore[assignment]
    now = bindparam("claim_now", type_=OUTBOX.c.due_at.type)
    branches = [[pickable, OUTBOX.c.status == status, OUTBOX.c.due_at <= now] for status in CLAIMABLE]
    branches.append([pickable, OUTBOX.c.status == "claimed", OUTBOX.c.lease_until < now])  # worker died
    order = (OUTBOX.c.priority.desc(), OUTBOX.c.due_at, OUTBOX.c.id)
    picks = []
    for where in branches:
        branch = select(OUTBOX.c.id, OUTBOX.c.priority, OUTBOX.c.due_at).where(*where)
        if channels:
            branch = branch.where(OUTBOX.c.channel.in_(channels))
        branch = branch.order_by(*order).limit(limit)
        if dialect == "postgresql":
            branch = branch.with_for_update(skip_locked=True)
        sub = branch.subquery()
        picks.append(select(sub.c.id, sub.c.priority, sub.c.due_at))
    due = union_all(*picks).subquery("due")
    pick = select(due.c.id).order_by(due.c.priority.desc(), due.c.due_at, due.c.id).limit(limit)
    return (
        update(OUTBOX)
        .where(OUTBOX.c.id.in_(pick.scalar_subquery()))
        .values(
            status="claimed",
            lease_owner=bindparam("claim_worker", type_=OUTBOX.c.lease_owner.type),
            lease_until=bindparam("claim_until", type_=OUTBOX.c.lease_until.type),
            attempts=OUTBOX.c.attempts + 1,
        )
        .returning(*(OUTBOX.c[name] for name in CLAIMED_COLUMNS))
    )


def _marker(conn: Connection) -> str:
    """The driver's positional parameter marker (SQLite: ``?``; psycopg: ``%s``)."""
    return "%s" if conn.dialect.name == "postgresql" else "?"


def _stored(conn: Connection, column: str, value: datetime) -> Any:
    """``value`` as the column's type writes it (the driver-level form of a timestamp)."""
    process = OUTBOX.c[column].type.bind_processor(conn.dialect)
    return process(value) if process is not None else value


#: Rows per ``UPDATE`` of :func:`mark_sent` (two parameters each, well under SQLite's 32,766).
MARK_CHUNK = 1000


def mark_sent(conn: Connection, worker: str, results: Sequence[tuple[int, str | None]], now: datetime) -> int:
    """Mark claimed messages sent, with their provider ids; only rows this worker still holds change.
    Returns how many did.

    One ``UPDATE ... FROM (VALUES ...)`` per :data:`MARK_CHUNK` messages: the (id, provider id) pairs
    are joined to the outbox by id, so each statement marks exactly the messages given. (SQLite before
    3.33 has no ``UPDATE ... FROM``: there, one driver-level ``executemany``.)"""
    if not results:
        return 0
    sent_at = _stored(conn, "sent_at", now)
    if conn.dialect.name != "postgresql" and sqlite3.sqlite_version_info < (3, 33):
        sql = (
            "UPDATE outbox SET status = 'sent', provider_id = ?, sent_at = ?, lease_owner = NULL, "
            "lease_until = NULL, last_error = NULL WHERE id = ? AND status = 'claimed' AND lease_owner = ?"
        )
        rows = [(provider, sent_at, message_id, worker) for message_id, provider in results]
        return conn.exec_driver_sql(sql, rows).rowcount
    if conn.dialect.name == "postgresql":
        row, pairs, columns = "(%s::bigint, %s::text)", "AS v (id, provider)", ("v.id", "v.provider")
    else:  # SQLite names the columns of VALUES column1, column2, ...
        row, pairs, columns = "(?, ?)", "AS v", ("v.column1", "v.column2")
    q = _marker(conn)
    marked = 0
    for begin in range(0, len(results), MARK_CHUNK):
        chunk = results[begin : begin + MARK_CHUNK]
        sql = (
            f"UPDATE outbox SET status = 'sent', provider_id = {columns[1]}, sent_at = {q}, "
            f"lease_owner = NULL, lease_until = NULL, last_error = NULL "
            f"FROM (VALUES {', '.join([row] * len(chunk))}) {pairs} "
            f"WHERE outbox.id = {columns[0]} AND outbox.status = 'claimed' AND outbox.lease_owner = {q}"
        )
        values: list[Any] = [sent_at]
        for message_id, provider in chunk:
            values += (message_id, provider)
        values.append(worker)
        marked += conn.exec_driver_sql(sql, tuple(values)).rowcount
    return marked


def mark_failed(
    conn: Connection, worker: str, message_id: int, status: str, error: str, due_at: datetime | None = None
) -> int:
    """Mark a claimed message ``retry`` (with the next attempt time), ``dead`` or ``suppressed``."""
    values: dict[str, Any] = {
        "status": status,
        "last_error": error[:2000],
        "lease_owner": None,
        "lease_until": None,
    }
    if due_at is not None:
        values["due_at"] = due_at
    return conn.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id == message_id, OUTBOX.c.status == "claimed", OUTBOX.c.lease_owner == worker)
        .values(**values)
    ).rowcount


def release(conn: Connection, worker: str) -> int:
    """Give back every message ``worker`` holds (on shutdown), so others can take them at once."""
    return conn.execute(
        update(OUTBOX)
        .where(OUTBOX.c.status == "claimed", OUTBOX.c.lease_owner == worker)
        .values(status="retry", lease_owner=None, lease_until=None, attempts=OUTBOX.c.attempts - 1)
    ).rowcount


def next_due(engine: Any) -> datetime | None:
    """When the outbox next needs a worker: the earliest due message or expiring lease (None: nothing)."""
    with engine.connect() as conn:
        due = conn.execute(select(func.min(OUTBOX.c.due_at)).where(OUTBOX.c.status.in_(CLAIMABLE))).scalar()
        lease = conn.execute(
            select(func.min(OUTBOX.c.lease_until)).where(OUTBOX.c.status == "claimed")
        ).scalar()
    times = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in (due, lease) if t is not None]
    return min(times) if times else None
