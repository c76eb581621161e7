"""A plain-Python reference implementation of the rule semantics, used to check the SQL compiler.

It is deliberately written independently of ``automation.rules.compiler``: it walks the syntax tree
and evaluates it on ordinary Python values (a customer ``dict`` and a list of event ``dict``s) with
SQL's three-valued logic. ``None`` stands for unknown; a rule matches a customer only when
``evaluate`` returns ``True``.

It assumes the rule type-checks (the compiler's job); it does not reproduce the compiler's errors.
"""

from __future__ import annotations

import calendar
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from automation.rules import ast

#: Customer columns by the type the rule language gives them (an independent copy, on purpose).
FIELD_KINDS: dict[str, str] = {
    **dict.fromkeys(
        ("id", "email", "phone", "first_name", "last_name", "timezone", "locale", "owner_email", "plan"),
        "string",
    ),
    **dict.fromkeys(("clv", "orders_count", "nps"), "number"),
    **dict.fromkeys(("signed_up_at", "last_order_at", "last_seen_at"), "timestamp"),
    "birthday": "date",
}

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_MIRROR = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_DAY = timedelta(days=1)
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


class _Missing:
    """An attribute key that is absent (distinct from JSON null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class _Value:
    """A value with its rule type: number string bool timestamp date json days events."""

    kind: str
    value: Any


# -- three-valued logic ----------------------------------------------------------------------------


def kleene_and(values: Iterable[bool | None]) -> bool | None:
    result: bool | None = True
    for value in values:
        if value is False:
            return False
        if value is None:
            result = None
    return result


def kleene_or(values: Iterable[bool | None]) -> bool | None:
    result: bool | None = False
    for value in values:
        if value is True:
            return True
        if value is None:
            result = None
    return result


def kleene_not(value: bool | None) -> bool | None:
    return None if value is None else not value


def _cmp(op: str, left: Any, right: Any) -> bool | None:
    if left is None or right is None:
        return None
    return bool(_OPS[op](left, right))


def _member(value: Any, options: Sequence[Any]) -> bool | None:
    """SQL ``value IN (options)``: false for an empty list, unknown for a missing value."""
    if not options:
        return False
    if value is None:
        return None
    return value in options


# -- helpers on plain values -----------------------------------------------------------------------


def json_lookup(attributes: Any, path: Sequence[str]) -> Any:
    """The JSON value at ``path``; ``MISSING`` when a key is absent or a step is not an object."""
    current = attributes
    for key in path:
        if not isinstance(current, dict) or key not in current:
            return MISSING
        current = current[key]
    return current


def json_as(value: Any, kind: str) -> Any:
    """The JSON value when it is of ``kind`` (number, string, bool), else None."""
    if kind == "number":
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if kind == "string":
        return value if isinstance(value, str) else None
    if kind == "bool":
        return value if isinstance(value, bool) else None
    raise ValueError(kind)


def parse_within(text: str) -> timedelta:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([wdhms])", text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_instant(text: str, kind: str) -> date | datetime:
    if kind == "date":
        return date.fromisoformat(text)
    return as_utc(datetime.fromisoformat(text))


def days_between(kind: str, field_value: date | datetime | None, now: datetime, since: bool) -> int | None:
    """Whole days, floored: now - f for days_since, f - now for days_until (UTC dates for a date)."""
    if field_value is None:
        return None
    if kind == "date":
        assert isinstance(field_value, date) and not isinstance(field_value, datetime)
        today = now.astimezone(UTC).date()
        return (today - field_value).days if since else (field_value - today).days
    assert isinstance(field_value, datetime)
    delta = now - as_utc(field_value) if since else as_utc(field_value) - now
    return math.floor(delta / _DAY)


def zone_or(name: str | None, default: ZoneInfo) -> ZoneInfo:
    try:
        return ZoneInfo(name or "")
    except Exception:  # unknown or malformed zone name
        return default


def local_date(now: datetime, timezone: str | None, fallback: str) -> date:
    """Today in the customer's zone; in ``fallback`` (itself falling back to UTC) when it is unknown."""
    return now.astimezone(zone_or(timezone, zone_or(fallback, ZoneInfo("UTC")))).date()


def is_anniversary(field_value: date | datetime | None, today: date) -> bool | None:
    if field_value is None:
        return None
    day = field_value.astimezone(UTC).date() if isinstance(field_value, datetime) else field_value
    same_day = (day.month, day.day) == (today.month, today.day)
    leap_day = (day.month, day.day) == (2, 29) and (today.month, today.day) == (2, 28)
    leap_day = leap_day and not calendar.isleap(today.year)
    return (same_day or leap_day) and day < today


# -- the evaluator ---------------------------------------------------------------------------------


class _Evaluator:
    def __init__(
        self, customer: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: datetime, fallback: str
    ) -> None:
        self.customer = customer
        self.events = events
        self.now = as_utc(now)
        self.fallback = fallback

    def truth(self, node: ast.Node) -> bool | None:
        if isinstance(node, ast.And):
            return kleene_and(self.truth(item) for item in node.items)
        if isinstance(node, ast.Or):
            return kleene_or(self.truth(item) for item in node.items)
        if isinstance(node, ast.Not):
            return kleene_not(self.truth(node.operand))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.IsNull):
            missing = self.is_missing(node.operand)
            return not missing if node.negated else missing
        if isinstance(node, ast.In):
            found = self.member(node)
            return kleene_not(found) if node.negated else found
        if isinstance(node, ast.Literal) and node.kind == "bool":
            return bool(node.value)
        value = self.value(node)
        if value.kind == "bool":
            result: bool | None = value.value
            return result
        if value.kind == "json":
            return json_as(value.value, "bool")  # type: ignore[no-any-return]
        raise TypeError(f"not a condition: {node}")

    def value(self, node: ast.Node) -> _Value:
        if isinstance(node, ast.Field):
            if node.path[0] == "attributes":
                return _Value("json", json_lookup(self.customer.get("attributes") or {}, node.path[1:]))
            name = node.path[0]
            return _Value(FIELD_KINDS[name], self.customer.get(name))
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Literal):
            return _Value(node.kind, node.value)
        return _Value("bool", self.truth(node))

    def call(self, node: ast.Call) -> _Value:
        if node.name == "events":
            name_node = node.args[0]
            assert isinstance(name_node, ast.Literal)
            within: timedelta | None = None
            for key, arg in node.kwargs:
                assert key == "within" and isinstance(arg, ast.Literal)
                within = arg.value if isinstance(arg.value, timedelta) else parse_within(str(arg.value))
            return _Value("events", self.count_events(str(name_node.value), within))
        (arg,) = node.args
        target = self.value(arg)
        if node.name == "anniversary":
            today = local_date(self.now, self.customer.get("timezone"), self.fallback)
            return _Value("bool", is_anniversary(target.value, today))
        since = node.name == "days_since"
        return _Value("days", days_between(target.kind, target.value, self.now, since))

    def count_events(self, name: str, within: timedelta | None) -> int:
        count = 0
        for event in self.events:
            if event.get("customer_id", self.customer.get("id")) != self.customer.get("id"):
                continue
            at = as_utc(event["occurred_at"])
            if event["name"] == name and at <= self.now and (within is None or at >= self.now - within):
                count += 1
        return count

    def typed(self, value: _Value, literal_kind: str) -> Any:
        """The plain value to compare with a literal of ``literal_kind`` (None when unknown)."""
        if value.kind == "json":
            return json_as(value.value, literal_kind)
        return value.value

    def compare(self, node: ast.Compare) -> bool | None:
        op, left, right = node.op, node.left, node.right
        if isinstance(left, ast.Literal) and not isinstance(right, ast.Literal):
            op, left, right = _MIRROR[op], right, left
        lhs = self.value(left)
        if isinstance(right, ast.Literal):
            if lhs.kind in ("timestamp", "date"):
                return _cmp(op, lhs.value, parse_instant(str(right.value), lhs.kind))
            return _cmp(op, self.typed(lhs, right.kind), right.value)
        rhs = self.value(right)
        return _cmp(op, lhs.value, rhs.value)

    def is_missing(self, node: ast.Node) -> bool:
        value = self.value(node)
        if value.kind == "json":
            return value.value is MISSING or value.value is None
        return value.value is None

    def member(self, node: ast.In) -> bool | None:
        literals = [item for item in node.items if isinstance(item, ast.Literal)]
        assert len(literals) == len(node.items)
        value = self.value(node.operand)
        if not literals:
            return False
        plain = self.typed(value, literals[0].kind)
        return _member(plain, [lit.value for lit in literals])


def evaluate(
    node: ast.Node,
    customer: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    now: datetime,
    fallback_tz: str = "UTC",
) -> bool | None:
    """The rule's truth for one customer: True, False or None (unknown, which does not match).

    ``customer`` maps column names to Python values (aware or naive-UTC datetimes, dates, the
    ``attributes`` dict); ``events`` are dicts with ``name``, ``occurred_at`` and optionally
    ``customer_id`` (events of other customers are ignored).
    """
    return _Evaluator(customer, events, now, fallback_tz).truth(node)


def matching_ids(
    node: ast.Node,
    customers: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    now: datetime,
    fallback_tz: str = "UTC",
) -> set[str]:
    """Ids of the customers for which the rule is True."""
    return {c["id"] for c in customers if evaluate(node, c, events, now, fallback_tz) is True}
