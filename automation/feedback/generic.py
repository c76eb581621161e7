"""The generic JSON format of ``POST /providers/generic/events``, for any provider without its own
endpoint: a small adapter (a provider's webhook turned into this shape) is all it takes.

::

    {"events": [{"type": "bounced", "id": "evt-123", "key": "<X-Automation-Key>",
                 "email": "ada@example.com", "occurred_at": "2026-11-22T12:30:00Z",
                 "reason": "550 5.1.1 no such user"}]}

Fields of an event (no others):

``type``         required: ``delivered``, ``opened``, ``clicked``, ``bounced`` (hard), ``soft_bounced``,
                 ``complained``, ``unsubscribed``, ``failed`` (the provider did not send it)
``id``           required: the event's id at its source (at most 255 characters); the same id again
                 is a duplicate and changes nothing
``key``          the message's ``X-Automation-Key`` header
``provider_id``  the provider's id of the message
``email``        the recipient; at least one of ``key``, ``provider_id`` and ``email`` is required
``occurred_at``  ISO 8601 (naive is UTC); default: when it was received
``url``          ``clicked``: the link
``reason``       ``bounced``, ``soft_bounced``, ``failed``: why, in the provider's words
``status``       the provider's own word for it, kept as the message's provider status
``machine``      ``opened``: true when the open looks machine-made (a privacy proxy's prefetch)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from automation.feedback.fields import REASON_MAX, URL_MAX, ReportError, flag, iso_time, text
from automation.feedback.record import Kind, Report
from automation.ingest.rows import json_type

TYPES = ("delivered", "opened", "clicked", "bounced", "soft_bounced", "complained", "unsubscribed", "failed")
FIELDS = ("type", "id", "key", "provider_id", "email", "occurred_at", "url", "reason", "status", "machine")
#: Events in one request.
EVENTS_MAX = 1000


def report(item: Any, received: datetime) -> Report:
    """One event as a report; ReportError naming the field when it does not fit the format."""
    if not isinstance(item, dict):
        raise ReportError(f"expected an event object, got {json_type(item)}")
    unknown = sorted(str(name) for name in item if name not in FIELDS)
    if unknown:
        raise ReportError(f"{unknown[0]}: unknown field (known: {', '.join(FIELDS)})")
    kind = text(item, "type", required=True, limit=30)
    if kind not in TYPES:
        raise ReportError(f"type: {kind!r} is not one of {', '.join(TYPES)}")
    unique = text(item, "id", required=True)
    key, provider_id, email = text(item, "key"), text(item, "provider_id"), text(item, "email")
    if not (key or provider_id or email):
        raise ReportError("key, provider_id, email: one of them is required to find the message")
    if email is not None and "@" not in email:
        raise ReportError("email: not an email address")
    status = text(item, "status", limit=30)
    return Report(
        source="generic",
        channel="email",
        kind=cast(Kind, kind),
        occurred_at=iso_time(item, "occurred_at", received),
        unique=cast(str, unique),
        idempotency_key=key,
        provider_id=provider_id,
        address=email,
        status=status,
        reason=text(item, "reason", limit=REASON_MAX),
        url=text(item, "url", limit=URL_MAX) if kind == "clicked" else None,
        machine=flag(item, "machine") if kind == "opened" else False,
    )
