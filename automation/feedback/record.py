"""Record one fact reported after sending, once: on the message, as a customer event, as consent.

Every source (a provider's webhook, our own click and open tracking) turns what it received into a
:class:`Report` and calls :func:`record` in a transaction. ``record``

1. stores the report in ``feedback`` under its ``dedupe_key`` (UNIQUE): a provider's retry of the
   same report stops here and changes nothing (``duplicate``);
2. finds the message: by outbox id, by idempotency key, by the provider's message id, and last by the
   recipient's address (the newest sent message of that channel to the customer with that address);
   with no message and no customer it is ``unmatched`` (the caller answers 200 all the same, so the
   provider stops retrying);
3. updates the message's summary columns (first delivery, opens, clicks, bounce, complaint, the
   provider's status; a message the provider dropped becomes ``failed`` with its reason);
4. appends a customer event (``email_clicked``, ``email_opened``, ``email_bounced``, ...), whose
   properties name the playbook, stage, step, template and key of the message, so rules can use it
   (``events("email_clicked", within="7d") > 0``) and the change log wakes the incremental tick;
5. turns hard bounces, complaints and unsubscribes into suppressions of the channel at once, and
   :data:`SOFT_BOUNCES` soft bounces within :data:`SOFT_BOUNCE_WINDOW` into a ``bounced`` one; an SMS
   reply of STOP (and the other opt-out words) suppresses SMS, START lifts it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, and_, case, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from automation.db.tables import CUSTOMER, EVENT, FEEDBACK, OUTBOX, SUPPRESSION
from automation.masking import mask_text
from automation.outbox import suppressions

log = logging.getLogger("automation.feedback")

#: Soft bounces within the window that suppress email like a hard bounce.
SOFT_BOUNCES = 3
SOFT_BOUNCE_WINDOW = timedelta(days=30)

#: What a report is about. ``replied`` is an inbound SMS.
Kind = Literal[
    "delivered", "opened", "clicked", "bounced", "soft_bounced", "complained", "unsubscribed",
    "failed", "replied", "status",
]  # fmt: skip
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]

#: SMS words (Twilio's defaults) that opt out, opt back in, and ask for help.
SMS_STOP = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
SMS_START = frozenset({"START", "YES", "UNSTOP"})
SMS_HELP = frozenset({"HELP", "INFO"})

Outcome = Literal["recorded", "duplicate", "unmatched"]


@dataclass(frozen=True)
class Report:
    """One fact from a source, in our terms.

    ``unique`` identifies the fact at its source (a provider's event id, or the fields that make a
    report distinct); the stored ``dedupe_key`` is derived from it and the source.
    """

    source: str
    channel: str
    kind: Kind
    occurred_at: datetime
    unique: str
    outbox_id: int | None = None
    idempotency_key: str | None = None
    provider_id: str | None = None
    address: str | None = None  # the recipient (email address or phone number), to match by
    status: str | None = None  # the provider's own word (delivered, undelivered, HardBounce, ...)
    reason: str | None = None  # why it failed or bounced, as the provider says it
    url: str | None = None  # clicked: the link
    machine: bool = False  # opened: it looks machine-made (a privacy proxy's prefetch)
    body: str | None = None  # replied: the text
    # replied: the opt-out keyword the provider recognised (Twilio's OptOutType); wins over the body's word
    keyword: Literal["stop", "start", "help"] | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def dedupe_key(self) -> str:
        digest = hashlib.sha256(self.unique.encode("utf-8", "surrogatepass")).hexdigest()[:48]
        return f"{self.source}:{digest}"


def record(conn: Connection, report: Report, now: datetime) -> Outcome:
    """Apply ``report`` (see the module's docstring); the caller commits."""
    if report.kind not in KINDS:
        raise ValueError(f"unknown feedback kind {report.kind!r}")
    message, customer_id = _message(conn, report)
    row = {
        "dedupe_key": report.dedupe_key,
        "outbox_id": message["id"] if message is not None else None,
        "customer_id": customer_id,
        "channel": report.channel,
        "kind": report.kind,
        "source": report.source,
        "occurred_at": report.occurred_at,
        "received_at": now,
        "detail": _detail(report),
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    once = dialect.insert(FEEDBACK).values(row).on_conflict_do_nothing(index_elements=["dedupe_key"])
    if conn.execute(once.returning(FEEDBACK.c.id)).first() is None:
        return "duplicate"
    if customer_id is None:
        log.info(
            "%s %s %s for no message of ours%s; recorded, nothing changed",
            report.source,
            report.channel,
            report.kind,
            f" (to {mask_text(report.address)})" if report.address else "",
        )
        return "unmatched"
    if message is not None:
        _update_message(conn, message["id"], report)
    event = _event_name(report)
    if event is not None:
        conn.execute(
            insert(EVENT).values(
                customer_id=customer_id,
                name=event,
                occurred_at=report.occurred_at,
                properties=_event_properties(report, message),
                message_id=f"feedback:{report.dedupe_key}"[:255],
            )
        )
    _consent(conn, report, customer_id, now)
    return "recorded"


def _message(conn: Connection, report: Report) -> tuple[Any, str | None]:
    """The message the report is about (or None) and its customer (or the one with the address)."""
    columns = [OUTBOX.c.id, OUTBOX.c.customer_id, OUTBOX.c.playbook, OUTBOX.c.stage, OUTBOX.c.step,
               OUTBOX.c.template, OUTBOX.c.idempotency_key, OUTBOX.c.channel]  # fmt: skip
    for column, value in (
        (OUTBOX.c.id, report.outbox_id),
        (OUTBOX.c.idempotency_key, report.idempotency_key),
        (OUTBOX.c.provider_id, report.provider_id),
    ):
        if value is None or value == "":
            continue
        found = conn.execute(select(*columns).where(column == value)).mappings().first()
        if found is not None:
            return found, str(found["customer_id"])
    customer_id = _customer_by_address(conn, report)
    if customer_id is None:
        return None, None
    newest = (
        select(*columns)
        .where(
            OUTBOX.c.customer_id == customer_id,
            OUTBOX.c.channel == report.channel,
            OUTBOX.c.status == "sent",
        )
        .order_by(OUTBOX.c.sent_at.desc(), OUTBOX.c.id.desc())
        .limit(1)
    )
    return conn.execute(newest).mappings().first(), customer_id


def _customer_by_address(conn: Connection, report: Report) -> str | None:
    if not report.address:
        return None
    address = report.address.strip()
    column = CUSTOMER.c.phone if report.channel == "sms" else CUSTOMER.c.email
    query = select(CUSTOMER.c.id).order_by(CUSTOMER.c.id).limit(1)
    found = conn.execute(query.where(column == address)).scalar()  # the address as we sent it: indexed
    if found is None and report.channel != "sms":  # a provider that changed its case: rare, a scan
        found = conn.execute(query.where(func.lower(column) == address.lower())).scalar()
    return str(found) if found is not None else None


def _update_message(conn: Connection, outbox_id: int, report: Report) -> None:
    values: dict[str, Any] = {}
    at = report.occurred_at
    if report.status:
        values["provider_status"] = report.status[:30]
    match report.kind:
        case "delivered":
            values["delivered_at"] = func.coalesce(OUTBOX.c.delivered_at, at)
        case "opened" if report.machine:
            values["machine_opens"] = OUTBOX.c.machine_opens + 1
        case "opened":
            values["opens"] = OUTBOX.c.opens + 1
            values["opened_at"] = func.coalesce(OUTBOX.c.opened_at, at)
        case "clicked":
            values["clicks"] = OUTBOX.c.clicks + 1
            values["clicked_at"] = func.coalesce(OUTBOX.c.clicked_at, at)
        case "bounced" | "soft_bounced":
            values["bounced_at"] = func.coalesce(OUTBOX.c.bounced_at, at)
        case "complained":
            values["complained_at"] = func.coalesce(OUTBOX.c.complained_at, at)
        case "failed":
            values["status"] = case((OUTBOX.c.status == "sent", "failed"), else_=OUTBOX.c.status)
            values["last_error"] = f"{report.source}: {report.reason or report.status or 'failed'}"[:1000]
    if values:
        conn.execute(update(OUTBOX).where(OUTBOX.c.id == outbox_id).values(values))


def _event_name(report: Report) -> str | None:
    if report.kind == "status":
        return None
    if report.kind == "soft_bounced":
        return f"{report.channel}_bounced"
    if report.kind == "replied":
        return "sms_replied"
    return f"{report.channel}_{report.kind}"


def _event_properties(report: Report, message: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {"source": report.source}
    if message is not None:
        for name in ("playbook", "stage", "step", "template", "idempotency_key"):
            properties[name] = message[name]
    if report.kind in ("bounced", "soft_bounced"):
        properties["type"] = "hard" if report.kind == "bounced" else "soft"
    optional = {
        "url": report.url,
        "reason": report.reason,
        "status": report.status,
        "body": report.body,
        "machine": report.machine if report.kind == "opened" else None,
        "keyword": _keyword(report) if report.kind == "replied" else None,
    }
    properties.update({k: v for k, v in optional.items() if v is not None})
    return properties


def _detail(report: Report) -> dict[str, Any]:
    out = {k: v for k, v in report.detail.items() if isinstance(k, str)}
    for name in ("status", "reason", "url", "provider_id", "idempotency_key"):
        value = getattr(report, name)
        if value is not None:
            out.setdefault(name, value)
    return out


def _keyword(report: Report) -> str | None:
    if report.keyword is not None:
        return report.keyword
    word = (report.body or "").strip().upper()
    if word in SMS_STOP:
        return "stop"
    if word in SMS_START:
        return "start"
    if word in SMS_HELP:
        return "help"
    return None


def _consent(conn: Connection, report: Report, customer_id: str, now: datetime) -> None:
    note = f"{report.source}: {report.kind}" + (f" ({report.status})" if report.status else "")
    match report.kind:
        case "bounced":
            suppressions.add(conn, customer_id, report.channel, "bounced", now, note=note)
        case "complained":
            suppressions.add(conn, customer_id, report.channel, "complained", now, note=note)
        case "unsubscribed":
            suppressions.add(conn, customer_id, report.channel, "unsubscribed", now, note=note)
        case "soft_bounced" if _soft_bounces(conn, customer_id, report) >= SOFT_BOUNCES:
            note = f"{report.source}: {SOFT_BOUNCES} soft bounces within {SOFT_BOUNCE_WINDOW.days} days"
            suppressions.add(conn, customer_id, report.channel, "bounced", now, note=note)
        case "replied":
            keyword = _keyword(report)
            if keyword == "stop":
                note = f"{report.source}: replied {(report.body or '').strip().upper()}"
                suppressions.add(conn, customer_id, "sms", "unsubscribed", now, note=note)
            elif keyword == "start":
                _lift_opt_out(conn, customer_id)


def _soft_bounces(conn: Connection, customer_id: str, report: Report) -> int:
    since = report.occurred_at - SOFT_BOUNCE_WINDOW
    query = select(func.count()).where(
        FEEDBACK.c.customer_id == customer_id,
        FEEDBACK.c.channel == report.channel,
        FEEDBACK.c.kind == "soft_bounced",
        FEEDBACK.c.occurred_at >= since,
    )
    return int(conn.execute(query).scalar_one())


def _lift_opt_out(conn: Connection, customer_id: str) -> None:
    """START lifts an SMS suppression the customer made (unsubscribed), not a bounce or a manual one."""
    current = conn.execute(
        select(SUPPRESSION.c.reason).where(
            and_(SUPPRESSION.c.customer_id == customer_id, SUPPRESSION.c.channel == "sms")
        )
    ).scalar()
    if current == "unsubscribed":
        suppressions.remove(conn, customer_id, "sms")


__all__ = ["KINDS", "SOFT_BOUNCES", "SOFT_BOUNCE_WINDOW", "Outcome", "Report", "record"]
