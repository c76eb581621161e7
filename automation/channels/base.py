"""What every channel implements: send one rendered message, report the provider's id or raise.

A channel raises ``TransientDeliveryError`` (connection errors, timeouts, 408, 425, 429, 5xx; with
``retry_after`` in seconds when the provider said so) or ``PermanentDeliveryError`` (other 4xx, an
address the provider refuses). Anything else is a bug and is treated as transient by the dispatcher.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from automation.messages.store import RenderedMessage


@dataclass(frozen=True)
class Delivery:
    """One message ready to go: the outbox row's identity, the recipient and the rendered content."""

    message_id: int
    idempotency_key: str
    channel: str  # email | sms | webhook | task
    customer_id: str
    rendered: RenderedMessage
    to: str | None = None  # email address, E.164 phone, or task assignee
    url: str | None = None  # webhook target, with ${ENV} already resolved
    unsubscribe_url: str | None = None  # email: for List-Unsubscribe (marketing mail)
    due: datetime | None = None  # task: when the person should have done it
    metadata: dict[str, Any] = field(default_factory=dict)  # playbook, stage, step, template, ...


@dataclass(frozen=True)
class DeliveryResult:
    provider_id: str | None = None


class Channel(Protocol):
    """A way to deliver messages. Implementations are async and reuse their connections."""

    name: str

    async def send(self, delivery: Delivery) -> DeliveryResult: ...

    async def aclose(self) -> None: ...


def transient_status(status: int) -> bool:
    """HTTP statuses worth retrying."""
    return status in (408, 425, 429) or status >= 500


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC

    reference = now or datetime.now(UTC)
    return max((when - reference).total_seconds(), 0.0)
