"""SendGrid's Event Webhook: the Signed Event Webhook's check, and each event as a :class:`Report`.

SendGrid posts a JSON array of events. With the Signed Event Webhook enabled, each request carries
``X-Twilio-Email-Event-Webhook-Signature`` (base64 of an ECDSA P-256 / SHA-256 signature in DER) and
``X-Twilio-Email-Event-Webhook-Timestamp`` (Unix seconds); the signature covers the timestamp's text
followed by the raw body, byte for byte. The public key (Mail Settings > Signed Event Webhook) is
base64 DER, as SendGrid shows it, or PEM. A timestamp more than :data:`TOLERANCE` from our clock, in
either direction, is refused: a request recorded on the way cannot be replayed later.

What each event becomes (``kind`` of :class:`~automation.feedback.record.Report`):

=========================================  =========================================================
``delivered``                              ``delivered``
``open``                                   ``opened`` (``machine`` when ``sg_machine_open`` is true)
``click``                                  ``clicked`` (``url``)
``bounce`` with ``type`` ``bounce``        ``bounced`` (a hard bounce: the address is suppressed)
``bounce`` with ``type`` ``blocked``       ``soft_bounced`` (the receiver refused this time; the
                                           third within 30 days suppresses the address)
``dropped``                                ``failed`` (SendGrid did not send it; its ``reason``)
``spamreport``                             ``complained``
``unsubscribe``, ``group_unsubscribe``     ``unsubscribed``
``processed``, ``deferred``,               ``status`` (kept as the message's provider status: a
``group_resubscribe``, any other           deferral is retried by SendGrid for up to 72 hours and
                                           ends as delivered, bounce or blocked)
=========================================  =========================================================

An event is matched to its message by the ``automation_key`` unique argument (sent in ``X-SMTPAPI``
and echoed on every event), else by ``smtp-id`` (the Message-ID we sent, see
:func:`message_id_of`) or the ``sg_message_id`` before its first dot (the id SendGrid's API answers
with), else by the recipient's address. ``sg_event_id`` makes a retried event a duplicate.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from automation.feedback.fields import (
    REASON_MAX,
    URL_MAX,
    ReportError,
    fingerprint,
    flag,
    present,
    text,
    unix_time,
)
from automation.feedback.record import Kind, Report

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
#: How far the signed timestamp may be from our clock (either way) for a request to be accepted.
TOLERANCE = timedelta(minutes=10)

_KINDS: dict[str, Kind] = {
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "dropped": "failed",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """The verification key from its base64 DER text (as SendGrid shows it) or PEM; ValueError when it
    is neither, or not a P-256 key."""
    value = value.strip()
    try:
        if value.startswith("-----BEGIN"):
            key = load_pem_public_key(value.encode("ascii"))
        else:
            key = load_der_public_key(base64.b64decode("".join(value.split()), validate=True))
    except (ValueError, binascii.Error, UnicodeEncodeError, UnsupportedAlgorithm):
        raise ValueError("not a public key in base64 DER or PEM form") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an ECDSA P-256 public key")
    return key


def verify(
    key: ec.EllipticCurvePublicKey,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    now: datetime,
    tolerance: timedelta = TOLERANCE,
) -> str | None:
    """Why the request must be refused (a reason without secrets), or None when it is SendGrid's."""
    if not signature or not timestamp:
        return f"missing {SIGNATURE_HEADER if not signature else TIMESTAMP_HEADER}"
    stamp = timestamp.strip()
    if not stamp.isdigit() or len(stamp) > 12:
        return f"{TIMESTAMP_HEADER}: not a Unix time"
    if abs(now.timestamp() - int(stamp)) > tolerance.total_seconds():
        return f"{TIMESTAMP_HEADER}: more than {tolerance.total_seconds() / 60:g} minutes from our clock"
    try:
        der = base64.b64decode(signature.strip(), validate=True)
        key.verify(der, stamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        return "the signature does not match"
    return None


def message_id_of(event: dict[str, Any]) -> str | None:
    """The Message-ID header the event names (``smtp-id``): for mail sent over SMTP, the one we set."""
    value = event.get("smtp-id")
    return value.strip() if isinstance(value, str) and value.strip() else None


def report(event: Any) -> Report:
    """One event as a report; ReportError when it is not an event."""
    if not isinstance(event, dict):
        raise ReportError("expected an event object")
    name = text(event, "event", required=True)
    assert name is not None
    occurred = unix_time(event, "timestamp")
    bounce_type = (text(event, "type", limit=30) or "").lower()
    kind: Kind
    if name == "bounce":
        kind = "soft_bounced" if bounce_type == "blocked" else "bounced"
    else:
        kind = _KINDS.get(name, "status")
    status = bounce_type if name == "bounce" and bounce_type else name
    reason = text(event, "reason", limit=REASON_MAX) or text(event, "response", limit=REASON_MAX)
    sg_message_id = text(event, "sg_message_id", limit=None)
    return Report(
        source="sendgrid",
        channel="email",
        kind=kind,
        occurred_at=occurred,
        unique=text(event, "sg_event_id") or fingerprint(event),
        idempotency_key=_automation_key(event),
        provider_id=sg_message_id.split(".", 1)[0][:255] if sg_message_id else None,
        address=text(event, "email"),
        status=status[:30],
        reason=reason if kind in ("bounced", "soft_bounced", "failed", "status") else None,
        url=text(event, "url", limit=URL_MAX) if kind == "clicked" else None,
        machine=flag(event, "sg_machine_open") if kind == "opened" else False,
        detail=present(
            event=name,
            smtp_status=text(event, "status", limit=30),
            bounce_classification=text(event, "bounce_classification", limit=100),
            attempt=text(event, "attempt", limit=30),
            asm_group_id=text(event, "asm_group_id", limit=30),
            smtp_id=message_id_of(event),
            sg_message_id=sg_message_id[:255] if sg_message_id else None,
        ),
    )


def _automation_key(event: dict[str, Any]) -> str | None:
    """The ``automation_key`` unique argument: SendGrid echoes unique and custom arguments as fields
    of the event; older integrations nest them under ``unique_args`` or ``custom_args``."""
    found = text(event, "automation_key")
    if found:
        return found
    for nested in ("unique_args", "custom_args"):
        args = event.get(nested)
        if isinstance(args, dict) and (found := text(args, "automation_key")):
            return found
    return None
