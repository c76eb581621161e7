"""Drain the outbox: claim due messages with a lease, render, send through the channels, mark.

Record, then send, then mark. A worker that dies after sending but before marking leaves its lease
to expire; the message is then sent again with the same idempotency key (``Idempotency-Key`` header,
Standard Webhooks ``webhook-id``, deterministic ``Message-ID``) so receivers can drop the repeat.

Checks repeated at send time, because time has passed since planning: consent (suppressions),
the address, quiet hours in the customer's time zone (a message due inside them is deferred to the
end of the window), and the message's time-to-live (a stale marketing message is dead, not late).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import random
import re
import socket
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, Select, bindparam, select, update

from automation.channels.base import Channel, Delivery
from automation.db.in_list import among_param
from automation.db.tables import CUSTOMER, OUTBOX, SUPPRESSION, TASK
from automation.errors import PermanentDeliveryError, TransientDeliveryError
from automation.masking import mask_text
from automation.messages.render import render_for_action
from automation.messages.store import RenderError, TemplateStore
from automation.messages.tracking import track
from automation.outbox.lease import CLAIMED_COLUMNS, claim, mark_failed, mark_sent
from automation.outbox.ratelimit import Rate, TokenBucket
from automation.playbook.models import Tracking, parse_quiet_hours

log = logging.getLogger("automation.dispatch")

TASK_HOLD_RECHECK = timedelta(hours=6)
_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


@functools.cache
def _lookups(dialect: str) -> tuple[Select[Any], Select[Any], Select[Any]]:
    """What sending a batch needs to know about its customers: statements built once per database
    (the customer ids are one parameter, ``ids``)."""
    customers = select(CUSTOMER).where(among_param(CUSTOMER.c.id, "ids", dialect))
    suppressions = select(SUPPRESSION.c.customer_id, SUPPRESSION.c.channel, SUPPRESSION.c.reason).where(
        among_param(SUPPRESSION.c.customer_id, "ids", dialect)
    )
    open_tasks = select(TASK.c.customer_id).where(
        among_param(TASK.c.customer_id, "ids", dialect), TASK.c.status == "open"
    )
    return customers, suppressions, open_tasks


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class DispatchConfig:
    worker_id: str = field(default_factory=default_worker_id)
    lease: timedelta = timedelta(minutes=2)
    batch_size: int = 200
    lanes: int = 2  # batches in flight at once
    max_attempts: int = 8
    backoff_base: float = 30.0  # seconds before the first retry; doubles per attempt, with jitter
    backoff_max: float = 6 * 3600.0
    concurrency: Mapping[str, int] = field(default_factory=dict)  # per channel, default 20
    rates: Mapping[str, Rate] = field(default_factory=dict)  # per channel, default unlimited
    public_url: str = "http://127.0.0.1:8080"
    secret_key: str = "change-me"
    # where click and open tracking points (AUTOMATION_PUBLIC_URL when it is set); "": links as written
    tracking_url: str = ""

    def backoff(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds until the next try: the provider's Retry-After if given, else exponential with jitter."""
        if retry_after is not None:
            return max(retry_after, 0.0)
        ceiling = min(self.backoff_base * float(2 ** max(attempt - 1, 0)), self.backoff_max)
        return ceiling / 2 + rng.random() * ceiling / 2


@dataclass
class DispatchStats:
    claimed: int = 0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (channel, status)
    reasons: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (channel, status, error)

    def count(self, status: str) -> int:
        return sum(n for (_, s), n in self.outcomes.items() if s == status)

    def as_dict(self) -> dict[str, Any]:
        by_channel: dict[str, dict[str, int]] = {}
        for (channel, status), n in sorted(self.outcomes.items()):
            by_channel.setdefault(channel, {})[status] = n
        return {"claimed": self.claimed, "by_channel": by_channel}


class _Message(NamedTuple):
    """A claimed outbox row (``CLAIMED_COLUMNS``, in that order), as a plain tuple: the dispatcher reads
    its fields a few dozen times per message."""

    id: int
    idempotency_key: str
    playbook: str
    customer_id: str
    channel: str
    template: str
    stage: str | None
    segment: str | None
    touch: str | None
    step: str | None
    priority: int
    payload: dict[str, Any]
    due_at: datetime
    expires_at: datetime | None
    attempts: int


if _Message._fields != CLAIMED_COLUMNS:  # pragma: no cover - a guard for whoever changes one of them
    raise RuntimeError("_Message and outbox.CLAIMED_COLUMNS disagree")


@dataclass(slots=True)
class _Batch:
    """What the messages of one claimed batch share."""

    customers: dict[str, dict[str, Any]]  # id -> every customer column
    suppressed: dict[tuple[str, str], str]
    now: datetime
    urls: dict[str, str] = field(default_factory=dict)  # webhook URL as written -> resolved


class _Outcome(NamedTuple):
    message_id: int
    channel: str
    status: str  # sent | retry | dead | suppressed | pending (deferred)
    provider_id: str | None = None
    error: str | None = None
    due_at: datetime | None = None
    payload: dict[str, Any] | None = None  # sent with tracked links: the row's payload with "links"


class Dispatcher:
    """Sends what the outbox holds. One per process; several processes may share a PostgreSQL database."""

    def __init__(
        self,
        engine: Engine,
        channels: Mapping[str, Channel],
        templates: TemplateStore,
        config: DispatchConfig | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        environ: Mapping[str, str] | None = None,
        seed: int | None = None,
        tracking: Mapping[str, Tracking] | None = None,
    ) -> None:
        """``tracking``: each playbook's click and open tracking (a playbook not named: none)."""
        self.engine = engine
        self.channels = dict(channels)
        self.templates = templates
        self.config = config or DispatchConfig()
        self.clock = clock
        self.environ = os.environ if environ is None else environ
        self.rng = random.Random(seed)
        self._limits = {ch: asyncio.Semaphore(self.config.concurrency.get(ch, 20)) for ch in self.channels}
        self._buckets = {ch: TokenBucket(rate) for ch, rate in self.config.rates.items()}
        self.tracking = dict(tracking or {})

    async def drain(self, stop: asyncio.Event | None = None, max_batches: int | None = None) -> DispatchStats:
        """Send everything due now; return when nothing is due (or ``stop`` is set)."""
        stats = DispatchStats()
        batches = 0

        async def lane() -> None:
            # several lanes overlap one batch's claiming and marking with another's sending
            nonlocal batches
            while not (stop and stop.is_set()) and (max_batches is None or batches < max_batches):
                batches += 1
                if not await self.run_batch(stats):
                    return

        await asyncio.gather(*(lane() for _ in range(self.config.lanes)))
        return stats

    async def run_batch(self, stats: DispatchStats) -> int:
        """Claim one batch, send it concurrently, mark the results; returns how many were claimed."""
        now = self.clock()
        channels = list(self.channels)
        with self.engine.begin() as conn:
            claimed = claim(
                conn, self.config.worker_id, now, self.config.lease, self.config.batch_size, channels
            )
        if not claimed:
            return 0
        rows = [_Message._make(row) for row in claimed]
        stats.claimed += len(rows)
        customers, suppressed = self._facts(rows)
        batch = _Batch(customers, suppressed, now)
        # Per channel, as many workers as the channel may have sends in flight, each taking the next
        # message of the batch: a few tasks per batch instead of one per message.
        by_channel: dict[str, list[_Message]] = {}
        for row in rows:
            by_channel.setdefault(row.channel, []).append(row)
        outcomes: list[_Outcome] = []
        tasks = []
        for channel, queued in by_channel.items():
            pending = iter(queued)
            width = min(len(queued), self.config.concurrency.get(channel, 20))
            tasks += [
                asyncio.ensure_future(self._work(channel, pending, batch, outcomes)) for _ in range(width)
            ]
        try:
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            # a bounded shutdown: record what already finished (a message the provider accepted must not
            # be sent again); the unfinished rest stays claimed for the caller to release
            if outcomes:
                self._mark(outcomes, stats)
            raise
        self._mark(outcomes, stats)
        return len(rows)

    async def _work(
        self, channel: str, rows: Iterator[_Message], batch: _Batch, outcomes: list[_Outcome]
    ) -> None:
        """Process messages of one channel until the batch has none left. The worker holds one of the
        channel's concurrency slots meanwhile (workers of the other lane wait for a free one), so at most
        ``concurrency`` messages of a channel are in flight."""
        limit = self._limits.get(channel)  # none when the channel is not configured: nothing is sent
        async with limit if limit is not None else contextlib.nullcontext():
            for row in rows:
                outcomes.append(await self._process(row, batch))

    def _facts(self, rows: list[_Message]) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
        ids = {"ids": sorted({row.customer_id for row in rows})}
        customers_of, suppressions_of, open_tasks_of = _lookups(self.engine.dialect.name)
        with self.engine.connect() as conn:
            result = conn.execute(customers_of, ids)
            columns = tuple(result.keys())
            key = columns.index("id")
            customers = {r[key]: dict(zip(columns, r, strict=False)) for r in result}
            suppressed = {(r.customer_id, r.channel): r.reason for r in conn.execute(suppressions_of, ids)}
            # open tasks matter only to messages held during them (email and SMS of playbooks that say so)
            holdable = sorted({row.customer_id for row in rows if row.payload.get("hold_during_tasks")})
            held = {r[0] for r in conn.execute(open_tasks_of, {"ids": holdable})} if holdable else set()
        for customer_id in held:  # an open high-touch task holds automated email and SMS
            suppressed[(customer_id, "open-task")] = "held"
        return customers, suppressed

    async def _process(self, row: _Message, batch: _Batch) -> _Outcome:
        channel, now = row.channel, batch.now
        outcome = self._check(row, batch.customers, batch.suppressed, now)
        if outcome is not None:
            return outcome
        customer = batch.customers[row.customer_id]
        try:
            delivery = self._delivery(row, customer, batch)
        except RenderError as exc:
            return _Outcome(row.id, channel, "dead", error=f"template: {exc}")
        except PermanentDeliveryError as exc:
            return _Outcome(row.id, channel, "dead", error=str(exc))
        if isinstance(delivery, _Outcome):
            return delivery
        delivery, payload = self._track(row, delivery)
        sender = self.channels[channel]
        try:  # inside one of the channel's concurrency slots (see _work)
            if channel in self._buckets:
                await self._buckets[channel].acquire()
            result = await sender.send(delivery)
        except PermanentDeliveryError as exc:
            return _Outcome(row.id, channel, "dead", error=mask_text(str(exc)))
        except TransientDeliveryError as exc:
            return self._retry(row, mask_text(str(exc)), exc.retry_after, now)
        except Exception as exc:  # a bug or an unexpected failure: retry, and say what it was
            log.exception("unexpected error sending message %s", row.id)
            return self._retry(row, mask_text(f"{type(exc).__name__}: {exc}"), None, now)
        return _Outcome(row.id, channel, "sent", provider_id=result.provider_id, payload=payload)

    def _track(self, row: _Message, delivery: Delivery) -> tuple[Delivery, dict[str, Any] | None]:
        """An email of a playbook with tracking: its links rewritten and the open pixel added; and the
        payload to store with the message's links (None: nothing to store)."""
        tracking = self.tracking.get(row.playbook)
        if row.channel != "email" or tracking is None or not self.config.tracking_url:
            return delivery, None
        tracked = track(
            delivery.rendered,
            base_url=self.config.tracking_url,
            secret=self.config.secret_key,
            outbox_id=row.id,
            clicks=tracking.clicks,
            opens=tracking.opens,
            unsubscribe_url=delivery.unsubscribe_url or "",
        )
        if tracked.rendered is delivery.rendered:
            return delivery, None
        payload = {**(row.payload or {}), "links": list(tracked.links)} if tracked.links else None
        return dataclasses.replace(delivery, rendered=tracked.rendered), payload

    def _check(
        self,
        row: _Message,
        customers: dict[str, dict[str, Any]],
        suppressed: dict[tuple[str, str], str],
        now: datetime,
    ) -> _Outcome | None:
        channel = row.channel
        if channel not in self.channels:
            return _Outcome(row.id, channel, "retry", error=f"no {channel} channel configured", due_at=now)
        if row.expires_at is not None and now > _aware(row.expires_at):
            return _Outcome(
                row.id,
                channel,
                "dead",
                error=f"expired: not sent by {_aware(row.expires_at):%Y-%m-%d %H:%M} UTC",
            )
        customer = customers.get(row.customer_id)
        if customer is None:
            return _Outcome(row.id, channel, "dead", error="the customer no longer exists")
        if (row.customer_id, channel) in suppressed:
            return _Outcome(
                row.id,
                channel,
                "suppressed",
                error=f"consent: {channel} suppressed ({suppressed[(row.customer_id, channel)]})",
            )
        if channel == "email" and not customer["email"]:
            return _Outcome(row.id, channel, "suppressed", error="no email address")
        if channel == "sms" and not customer["phone"]:
            return _Outcome(row.id, channel, "suppressed", error="no phone number")
        if row.payload.get("hold_during_tasks") and (row.customer_id, "open-task") in suppressed:
            return _Outcome(
                row.id,
                channel,
                "pending",
                error="held: a high-touch task is open for this customer",
                due_at=now + TASK_HOLD_RECHECK,
            )
        window = row.payload.get("quiet_hours") if channel in ("email", "sms") else None
        if window:
            until = _quiet_until(window, customer["timezone"], row.payload.get("timezone", "UTC"), now)
            if until is not None:
                return _Outcome(
                    row.id, channel, "pending", error=f"quiet hours until {until:%H:%M} UTC", due_at=until
                )
        return None

    def _delivery(self, row: _Message, customer: dict[str, Any], batch: _Batch) -> Delivery | _Outcome:
        payload = row.payload or {}
        channel, now = row.channel, batch.now
        url = to = None
        if channel == "webhook":
            written = str(payload.get("url", ""))
            url = batch.urls.get(written)
            if url is None:  # the environment is read once per batch
                url = batch.urls[written] = self._resolve(
                    written, getattr(self.channels[channel], "writes_files", False)
                )
        elif channel == "email":
            to = customer["email"]
        elif channel == "sms":
            to = customer["phone"]
        elif channel == "task":
            to = payload.get("assignee")
        # the link is signed only for email (List-Unsubscribe) and templates that print it
        rendered, link = render_for_action(
            self.templates,
            row,
            customer,
            playbook=row.playbook,
            now=now,
            public_url=self.config.public_url,
            secret_key=self.config.secret_key,
        )
        due = datetime.fromisoformat(payload["due"]) if payload.get("due") else None
        return Delivery(
            message_id=row.id,
            idempotency_key=row.idempotency_key,
            channel=row.channel,
            customer_id=row.customer_id,
            rendered=rendered,
            to=to,
            url=url,
            unsubscribe_url=link if row.channel == "email" else None,
            due=due,
            metadata={
                "playbook": row.playbook,
                "stage": row.stage,
                "step": row.step,
                "template": row.template,
            },
        )

    def _resolve(self, url: str, lenient: bool = False) -> str:
        """Fill ``${VAR}`` from the environment; unset is an error unless messages only go to files."""

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if not self.environ.get(name):
                if lenient:
                    return match.group(0)
                raise PermanentDeliveryError(
                    f"the environment variable {name} is not set (webhook URL {url})"
                )
            return self.environ[name]

        return _ENV_REF.sub(value, url)

    def _retry(self, row: _Message, error: str, retry_after: float | None, now: datetime) -> _Outcome:
        if row.attempts >= self.config.max_attempts:
            return _Outcome(
                row.id, row.channel, "dead", error=f"gave up after {row.attempts} attempts: {error}"
            )
        delay = self.config.backoff(row.attempts, retry_after, self.rng)
        return _Outcome(row.id, row.channel, "retry", error=error, due_at=now + timedelta(seconds=delay))

    def _mark(self, outcomes: list[_Outcome], stats: DispatchStats) -> None:
        worker, now = self.config.worker_id, self.clock()
        with self.engine.begin() as conn:
            mark_sent(
                conn, worker, [(o.message_id, o.provider_id) for o in outcomes if o.status == "sent"], now
            )
            links = [
                {"sent_id": o.message_id, "links_payload": o.payload}
                for o in outcomes
                if o.status == "sent" and o.payload is not None
            ]
            if links:  # the links of tracked emails, which the click redirect reads
                conn.execute(
                    update(OUTBOX)
                    .where(OUTBOX.c.id == bindparam("sent_id"), OUTBOX.c.status == "sent")
                    .values(payload=bindparam("links_payload", type_=OUTBOX.c.payload.type)),
                    links,
                )
            for o in outcomes:
                if o.status == "sent":
                    continue
                if o.status == "pending":  # deferred, not an attempt
                    conn.execute(
                        update(OUTBOX)
                        .where(OUTBOX.c.id == o.message_id, OUTBOX.c.lease_owner == worker)
                        .values(
                            status="pending",
                            due_at=o.due_at,
                            last_error=o.error,
                            lease_owner=None,
                            lease_until=None,
                            attempts=OUTBOX.c.attempts - 1,
                        )
                    )
                else:
                    mark_failed(conn, worker, o.message_id, o.status, o.error or "", o.due_at)
        for o in outcomes:
            stats.outcomes[(o.channel, o.status)] += 1
            if o.status in ("dead", "retry") and o.error:
                stats.reasons[(o.channel, o.status, o.error)] += 1
                log.debug("message %s (%s) %s: %s", o.message_id, o.channel, o.status, o.error)
        log.info("batch of %d: %s", len(outcomes), dict(Counter(o.status for o in outcomes)))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _quiet_until(window_text: str, zone_name: str | None, fallback: str, now: datetime) -> datetime | None:
    """End of the quiet window in UTC when ``now`` falls inside it for the customer, else None."""
    try:
        zone = ZoneInfo(zone_name or fallback)
    except Exception:
        zone = ZoneInfo(fallback)
    return parse_quiet_hours(window_text).until(now, zone)
