"""Time helpers the planner and incremental ticks share.

Timestamps come back from SQLite naive (UTC) and from PostgreSQL aware; ``stored`` reads a column as
stored and ``aware`` makes the few values the planner uses comparable with ``now``. ``period`` names
the local day, week, month or year a recurring rule fires once in: the planner puts it in the
idempotency key, and an incremental tick compares it between two ticks to find whose period turned.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, type_coerce


def stored(column: Any) -> Any:
    """A timestamp column read as stored (naive UTC), without converting each value on the way in: the
    planner reads thousands per batch and makes the few it uses aware with ``aware``."""
    return type_coerce(column, DateTime()).label(column.name)


def aware(value: datetime) -> datetime:
    """``value`` in UTC when it carries no zone (SQLite returns timestamps naive, in UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def period(local: datetime, once_per: str) -> str:
    """The ``once_per`` period (day, week, month, year) that ``local`` falls in: ``2026-11-22``,
    ``2026-W47``, ``2026-11`` or ``2026``."""
    if once_per == "day":
        return local.strftime("%Y-%m-%d")
    if once_per == "week":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if once_per == "month":
        return local.strftime("%Y-%m")
    return local.strftime("%Y")
