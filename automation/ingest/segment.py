"""Segment Spec calls (``identify``, ``track``, ...) as the rows the importer writes.

A call is checked here for its shape (a JSON object, ``userId``, the types of ``traits``,
``properties`` and ``context``) and then turned into a customer or event row that
:mod:`automation.ingest.rows` validates exactly like a row of an imported file: the same checks, the
same "null or empty means not given".

``identify``: ``userId`` is the customer id; the traits named in :data:`TRAIT_COLUMNS` set their
customer column, every other trait with a value goes into ``attributes``, merged into the stored
attributes key by key (see :func:`merge_attributes`). ``context.timezone`` and ``context.locale`` are
used when the traits do not give them. ``track``: ``event`` is the event name, ``properties`` its
properties, ``timestamp`` its time (the time the call was received when missing), ``messageId`` the
key that makes a repeated call store one event. ``page``, ``screen``, ``group`` and ``alias`` are
accepted and ignored. A call with only ``anonymousId`` is refused: customers are known by ``userId``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from automation.db.tables import EVENT
from automation.ingest.rows import RowError, customer_row, event_row, json_type, key_text

#: Segment trait -> customer column. Both the Segment spelling (camelCase) and the column name work.
TRAIT_COLUMNS: dict[str, str] = {
    "email": "email",
    "phone": "phone",
    "firstName": "first_name",
    "first_name": "first_name",
    "lastName": "last_name",
    "last_name": "last_name",
    "timezone": "timezone",
    "locale": "locale",
    "plan": "plan",
    "birthday": "birthday",
    "clv": "clv",
    "orders_count": "orders_count",
    "ordersCount": "orders_count",
    "nps": "nps",
    "owner_email": "owner_email",
    "ownerEmail": "owner_email",
    "createdAt": "signed_up_at",
    "signed_up_at": "signed_up_at",
    "last_order_at": "last_order_at",
    "lastOrderAt": "last_order_at",
    "last_seen_at": "last_seen_at",
    "lastSeenAt": "last_seen_at",
}
#: Context fields used for a column when the traits do not give it.
CONTEXT_COLUMNS: dict[str, str] = {"timezone": "timezone", "locale": "locale"}
#: Call types that are accepted and not stored.
IGNORED_TYPES = frozenset({"page", "screen", "group", "alias"})
CALL_TYPES = frozenset({"identify", "track"}) | IGNORED_TYPES

_MESSAGE_ID_MAX: int = getattr(EVENT.c.message_id.type, "length", None) or 255
_EVENT_NAMES = {"customer_id": "userId", "name": "event", "occurred_at": "timestamp"}


class CallError(ValueError):
    """A call that cannot be stored; the message names the field and says why."""


@dataclass(frozen=True)
class Call:
    """One checked call: what it writes (a customer row, an event row) or that it is ignored."""

    type: str
    customer: dict[str, Any] | None = None  # validated; ``attributes`` holds only the given traits
    event: dict[str, Any] | None = None  # validated, with ``message_id``


def parse_call(body: Any, received: datetime, call_type: str | None = None) -> Call:
    """Check one call and turn it into its row; ``call_type`` is the endpoint's (else the body's ``type``).

    Raises CallError with a ``field: reason`` message.
    """
    if not isinstance(body, dict):
        raise CallError(f"call: expected a JSON object, got {json_type(body)}")
    kind = call_type or body.get("type")
    if not isinstance(kind, str) or kind not in CALL_TYPES:
        known = ", ".join(sorted(CALL_TYPES))
        raise CallError(f"type: expected one of {known}, got {_shown(kind)}")
    if kind in IGNORED_TYPES:
        return Call(kind)
    user_id = _user_id(body)
    context = _mapping(body, "context")
    if kind == "identify":
        return Call(kind, customer=_identify(user_id, _mapping(body, "traits"), context))
    return Call(kind, event=_track(user_id, body, received))  # the event row checks the id


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _mapping(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CallError(f"{name}: expected a JSON object, got {json_type(value)}")
    return value


def _user_id(body: Mapping[str, Any]) -> Any:
    """The call's ``userId`` as given; the customer or event row it goes into validates it."""
    value = body.get("userId")
    if value is None or value == "":
        if body.get("anonymousId") not in (None, ""):
            raise CallError(
                "userId: missing; a call with only anonymousId is not stored (customers are known by userId)"
            )
        raise CallError("userId: missing (required)")
    return value


def _renamed(message: str, names: Mapping[str, str]) -> str:
    """A RowError message with the stored column names replaced by the names the call used."""
    if not names:
        return message
    pattern = re.compile(r"(^|; )(" + "|".join(re.escape(name) for name in names) + r"):")
    return pattern.sub(lambda m: f"{m.group(1)}{names[m.group(2)]}:", message)


def _identify(user_id: Any, traits: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The customer row of an identify call: mapped traits to columns, the others to ``attributes``."""
    raw: dict[str, Any] = {"id": user_id}
    used: dict[str, str] = {"id": "userId"}  # column -> the field that set it
    attributes: dict[str, Any] = {}
    for trait, value in traits.items():
        column = TRAIT_COLUMNS.get(trait)
        if column is None:
            if value is not None and not (isinstance(value, str) and not value.strip()):
                attributes[trait] = value
            continue
        if value is None:
            continue
        if column in used:
            first = used[column].removeprefix("traits.")
            raise CallError(f"traits: {first} and {trait} both given; give one")
        raw[column], used[column] = value, f"traits.{trait}"
    for field, column in CONTEXT_COLUMNS.items():
        if column not in used and context.get(field) is not None:
            raw[column], used[column] = context[field], f"context.{field}"
    if attributes:
        raw["attributes"], used["attributes"] = attributes, "traits"
    try:
        return customer_row(raw, None, from_text=False)
    except RowError as exc:
        raise CallError(_renamed(str(exc), used)) from None


def _track(user_id: Any, body: Mapping[str, Any], received: datetime) -> dict[str, Any]:
    """The event row of a track call, with its ``message_id``."""
    name = body.get("event")
    if name is None:
        raise CallError("event: missing (required)")
    timestamp = body.get("timestamp")
    raw = {
        "customer_id": user_id,
        "name": name,
        "occurred_at": received.isoformat() if timestamp is None else timestamp,
        "properties": body.get("properties"),
    }
    try:
        row = event_row(raw, from_text=False)
    except RowError as exc:
        raise CallError(_renamed(str(exc), _EVENT_NAMES)) from None
    return row | {"message_id": _message_id(body.get("messageId"))}


def _message_id(value: Any) -> str | None:
    """``messageId``: a text of at most 255 characters without control characters, or None."""
    try:
        return key_text("messageId", value, _MESSAGE_ID_MAX)
    except RowError as exc:
        raise CallError(str(exc)) from None


def combine_customers(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per customer id (the writer's upsert takes each id once): later calls win column by
    column, their attributes merged into the earlier ones."""
    combined: dict[str, dict[str, Any]] = {}
    for row in rows:
        earlier = combined.pop(row["id"], None)
        if earlier is not None:
            attributes = earlier.get("attributes")
            if attributes is not None and "attributes" in row:
                row = row | {"attributes": attributes | row["attributes"]}
            row = earlier | row
        combined[row["id"]] = row
    return list(combined.values())


def merge_attributes(
    rows: Iterable[dict[str, Any]], stored: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Rows whose ``attributes`` are the stored attributes with the given keys replaced (identify
    merges; a trait not sent keeps its stored value)."""
    merged = []
    for row in rows:
        if "attributes" in row:
            row = row | {"attributes": dict(stored.get(row["id"], {})) | row["attributes"]}
        merged.append(row)
    return merged
