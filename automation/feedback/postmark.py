"""Postmark's webhooks: one JSON object per request, its ``RecordType`` saying what happened.

* ``Delivery`` -> ``delivered``; ``Open`` -> ``opened``; ``Click`` -> ``clicked`` (``OriginalLink``);
  ``SpamComplaint`` -> ``complained``
* ``Bounce`` by its ``Type``: ``HardBounce`` and ``BadEmailAddress`` -> ``bounced`` (the address is
  suppressed); ``SoftBounce``, ``Transient``, ``DnsError`` and ``Blocked`` -> ``soft_bounced`` (the
  third within 30 days suppresses the address); ``SpamComplaint`` -> ``complained``; ``Unsubscribe``
  -> ``unsubscribed``; ``SMTPApiError`` and ``TemplateRenderingFailed`` -> ``failed`` (Postmark did
  not send it); any other (``AutoResponder``, ``AddressChange``, ``SpamNotification``, ...) ->
  ``status``: kept as the message's provider status, nothing else changes
* ``SubscriptionChange`` with ``SuppressSending`` true and ``SuppressionReason``
  ``ManualSuppression`` (the recipient unsubscribed) -> ``unsubscribed``; any other (a reactivation,
  a suppression Postmark made after a bounce or complaint it reports on its own) -> ``status``: a
  reactivation does not lift our suppression (that is ``automation suppress``)
* an unknown ``RecordType`` -> ``status``

A report is matched by ``Metadata["automation-key"]`` (Postmark echoes the message's
``X-PM-Metadata-automation-key`` header), else by ``MessageID`` (Postmark's id of the message), else
by the recipient (``Email`` or ``Recipient``). Postmark's events carry no event id; a retry is
recognised by the record type with the bounce's ``ID``, or the message id, the recipient, the time
field (``DeliveredAt``, ``ReceivedAt``, ``ChangedAt``) and, for a click, the link.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from automation.feedback.fields import REASON_MAX, URL_MAX, ReportError, flag, iso_time, present, text
from automation.feedback.record import Kind, Report

_RECORDS: dict[str, Kind] = {"Delivery": "delivered", "Open": "opened", "Click": "clicked",
                             "SpamComplaint": "complained"}  # fmt: skip
_BOUNCES: dict[str, Kind] = {
    "HardBounce": "bounced",
    "BadEmailAddress": "bounced",
    "SoftBounce": "soft_bounced",
    "Transient": "soft_bounced",
    "DnsError": "soft_bounced",
    "Blocked": "soft_bounced",
    "SpamComplaint": "complained",
    "Unsubscribe": "unsubscribed",
    "SMTPApiError": "failed",
    "TemplateRenderingFailed": "failed",
}
#: The field that says when, per record type.
_TIME = {"Bounce": "BouncedAt", "SpamComplaint": "BouncedAt", "Delivery": "DeliveredAt", "Open": "ReceivedAt",
         "Click": "ReceivedAt", "SubscriptionChange": "ChangedAt"}  # fmt: skip
METADATA_KEY = "automation-key"


def report(body: Any, received: datetime) -> Report:
    """The report a webhook request carries; ``received``: the time when it has no time of its own.
    ReportError when it is not a Postmark record."""
    if not isinstance(body, dict):
        raise ReportError("expected a JSON object with a RecordType")
    record_type = text(body, "RecordType", required=True, limit=50)
    assert record_type is not None
    bounce_type = text(body, "Type", limit=50) if record_type in ("Bounce", "SpamComplaint") else None
    kind: Kind
    if record_type == "Bounce":
        kind = _BOUNCES.get(bounce_type or "", "status")
    elif record_type == "SubscriptionChange":
        manual = text(body, "SuppressionReason", limit=50) == "ManualSuppression"
        kind = "unsubscribed" if flag(body, "SuppressSending") and manual else "status"
    else:
        kind = _RECORDS.get(record_type, "status")
    time_field = _TIME.get(record_type, "ReceivedAt")
    occurred = iso_time(body, time_field, received)
    message_id = text(body, "MessageID")
    recipient = text(body, "Email") or text(body, "Recipient")
    link = text(body, "OriginalLink", limit=URL_MAX) if kind == "clicked" else None
    bounce_id = text(body, "ID", limit=50)
    if bounce_id is not None and record_type in ("Bounce", "SpamComplaint"):
        unique = f"{record_type}:{bounce_id}"
    else:
        moment = str(body.get(time_field) or "")
        parts = [record_type, message_id or "", recipient or "", moment, link or ""]
        if record_type == "SubscriptionChange":
            parts.append(str(flag(body, "SuppressSending")))
        unique = "\n".join(parts)
    reason = text(body, "Details", limit=REASON_MAX) or text(body, "Description", limit=REASON_MAX)
    return Report(
        source="postmark",
        channel="email",
        kind=kind,
        occurred_at=occurred,
        unique=unique,
        idempotency_key=_automation_key(body),
        provider_id=message_id,
        address=recipient,
        status=(bounce_type or record_type)[:30],
        reason=reason if kind in ("bounced", "soft_bounced", "failed", "status") else None,
        url=link,
        detail=present(
            record_type=record_type,
            type_code=text(body, "TypeCode", limit=30),
            bounce_id=bounce_id,
            message_stream=text(body, "MessageStream", limit=100),
            suppression_reason=text(body, "SuppressionReason", limit=50),
            first_open=flag(body, "FirstOpen") if record_type == "Open" else None,
        ),
    )


def _automation_key(body: dict[str, Any]) -> str | None:
    metadata = body.get("Metadata")
    if not isinstance(metadata, dict):
        return None
    return text(metadata, METADATA_KEY) or text(metadata, "automation_key")
