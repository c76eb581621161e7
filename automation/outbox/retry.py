"""Requeueing dead letters, for ``automation retry-dead``.

A dead letter is an outbox row in status ``dead``: it failed permanently, ran out of attempts or expired.
Once the cause is fixed (a missing template variable, a provider outage), ``retry_dead`` puts the matching
rows back in the queue so that the next dispatch pass sends them; ``parse_since`` reads the ``--since``
filter.

Dead letters carry no time of death (the outbox has no such column), so ``since`` filters on the time a
message was last due; see ``automation.worker.status`` for what that time means for each way of dying.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, bindparam, case, func, literal, update

from automation.db.tables import OUTBOX
from automation.db.types import UTCDateTime
from automation.errors import InputError
from automation.outbox.sink import DEFAULT_TTL

#: Prefix put in front of ``last_error`` when a dead letter is requeued (cleared once it is sent).
REQUEUED_PREFIX = "requeued: "


def retry_dead(
    conn: Connection,
    now: datetime,
    since: datetime | None = None,
    channel: str | None = None,
    playbook: str | None = None,
    ttl: timedelta = DEFAULT_TTL,
) -> int:
    """Requeue dead letters; returns how many. The next dispatch pass sends them.

    Each matching ``dead`` row becomes ``pending`` with ``due_at = now`` and ``attempts = 0``, and loses
    its lease. ``last_error`` is kept, prefixed with ``"requeued: "`` (so the reason stays visible until
    the message is sent, which clears it, or fails again, which replaces it). A message with a
    time-to-live gets ``expires_at = now + ttl``, the span a tick gives it (``DEFAULT_TTL``; its
    ``due_at`` moves with retries and deferrals, so the span cannot be read back from the row), so an
    expired message is not expired again at once; messages without one keep none.

    Filters: ``since`` (last due at or after it), ``channel``, ``playbook``. One UPDATE; the caller owns
    the transaction.
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
    """``--since``: a duration back from ``now`` (``90s``, ``30m``, ``24h``, ``7d``, ``2w``) or ISO 8601.

    Naive times are UTC, as everywhere else; a bad value is an ``InputError`` naming the option.
    """
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
