"""Consent: per-channel suppressions (unsubscribed, bounced, complained, manual, invalid)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from automation.db.tables import CUSTOMER, SUPPRESSION
from automation.errors import InputError

CHANNELS = ("email", "sms", "webhook", "task")
REASONS = ("unsubscribed", "bounced", "complained", "manual", "invalid")


def add(
    conn: Connection, customer_id: str, channel: str, reason: str, now: datetime, note: str | None = None
) -> bool:
    """Suppress ``channel`` for a customer; True if it was new (a repeat keeps the first reason)."""
    if channel not in CHANNELS:
        raise InputError(f"unknown channel {channel!r}; use one of {', '.join(CHANNELS)}")
    if reason not in REASONS:
        raise InputError(f"unknown reason {reason!r}; use one of {', '.join(REASONS)}")
    if conn.execute(select(CUSTOMER.c.id).where(CUSTOMER.c.id == customer_id)).first() is None:
        raise InputError(f"no customer with id {customer_id!r}")
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    result = conn.execute(
        dialect.insert(SUPPRESSION)
        .values(channel=channel, customer_id=customer_id, reason=reason, note=note, created_at=now)
        .on_conflict_do_nothing(index_elements=["channel", "customer_id"])
    )
    return bool(result.rowcount)


def remove(conn: Connection, customer_id: str, channel: str) -> bool:
    """Lift a suppression (e.g. the customer subscribed again); True if one existed."""
    result = conn.execute(
        delete(SUPPRESSION).where(SUPPRESSION.c.customer_id == customer_id, SUPPRESSION.c.channel == channel)
    )
    return bool(result.rowcount)


def list_all(conn: Connection, customer_id: str | None = None, channel: str | None = None) -> list[Any]:
    query = select(SUPPRESSION).order_by(SUPPRESSION.c.created_at.desc(), SUPPRESSION.c.id.desc())
    if customer_id:
        query = query.where(SUPPRESSION.c.customer_id == customer_id)
    if channel:
        query = query.where(SUPPRESSION.c.channel == channel)
    return list(conn.execute(query))
