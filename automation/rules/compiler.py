"""Type-check rule trees and compile them to SQLAlchemy expressions over the ``customer`` table.

The compiler is pure: ``now`` and the names a rule may use come in a ``Scope``. Values become bound
parameters. Semantics follow SQL's three-valued logic: a comparison with a missing value is unknown,
``not`` of unknown stays unknown, and a rule that is unknown does not match.

Functions:
  days_since(field) / days_until(field)   whole days (floored) between the field and ``now``;
                                          compared with a number, compiled to an index-friendly range
  events(name, within=30d)                count of the customer's events named ``name`` with
                                          now - within <= occurred_at <= now (``within`` optional)
  anniversary(field)                      the field's month and day is today's in the customer's own
                                          time zone (29 Feb counts on 28 Feb in other years), in a
                                          later year than the field

One module, although long: the type checker and the SQL builder walk the same tree node by node, and
each node kind's checks and SQL belong next to each other (the SQL functions themselves live in
``automation.rules.sqlfuncs``).
"""

from __future__ import annotations

import calendar
import difflib
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from sqlalchemy import BigInteger, Table, and_, case, exists, false, func, literal, not_, or_, select, true
from sqlalchemy.sql.elements import ColumnElement

from automation.db.tables import CUSTOMER, EVENT
from automation.rules import ast
from automation.rules.ast import RuleError, parse_duration
from automation.rules.sqlfuncs import json_any, json_bool, json_number, json_text, month_day

#: Customer fields a rule may use, with their rule types.
FIELD_TYPES: dict[str, str] = {
    "id": "string",
    "email": "string",
    "phone": "string",
    "first_name": "string",
    "last_name": "string",
    "timezone": "string",
    "locale": "string",
    "owner_email": "string",
    "plan": "string",
    "clv": "number",
    "orders_count": "number",
    "nps": "number",
    "signed_up_at": "timestamp",
    "last_order_at": "timestamp",
    "last_seen_at": "timestamp",
    "birthday": "date",
}
FUNCTIONS = ("days_since", "days_until", "events", "anniversary")
CONTEXT_NAMES = ("segment", "touch", "stage")
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


@dataclass(frozen=True)
class Binding:
    """A name such as ``stage`` bound to an SQL expression, with the values it can take."""

    expr: ColumnElement[Any]
    values: tuple[str, ...]


@dataclass(frozen=True)
class Scope:
    now: datetime
    fallback_timezone: str = "UTC"
    names: Mapping[str, Binding] = field(default_factory=dict)
    table: Table = CUSTOMER
    events: Table = EVENT
    #: When a list is given, ``events(...) > 0`` becomes a LEFT JOIN to the set of customers with such
    #: events instead of a correlated EXISTS: the planner then scans the events once (PostgreSQL
    #: costs EXISTS inside CASE as one lookup per customer). The caller joins what is collected here.
    hoist: list[Any] | None = None
    #: ``events(...) > 0`` as ``customer.id IN (SELECT customer_id FROM event WHERE ...)``: SQLite
    #: collects the set once into an ephemeral index, instead of one probe per customer (full scans).
    events_in: bool = False
    #: When a list is given, every part of a rule whose truth depends on ``now`` is recorded in it
    #: (``DaysBoundary``, ``EventWindow``, ``Anniversary``), so a tick can find the customers whose
    #: rules may have changed between two moments without evaluating everyone.
    clock: list[Any] | None = None


@dataclass(frozen=True, eq=False)
class DaysBoundary:
    """A comparison that flips when ``column`` crosses ``now + offset`` (a date column: today + offset)."""

    column: ColumnElement[Any]
    kind: str  # timestamp | date
    offset: timedelta


@dataclass(frozen=True, eq=False)
class EventWindow:
    """``events(name, within=...)``: changes when an event enters or leaves the window."""

    name: str
    within: timedelta | None


@dataclass(frozen=True, eq=False)
class Anniversary:
    """``anniversary(column)``: changes when the customer's local date does."""

    column: ColumnElement[Any]
    kind: str


@dataclass(frozen=True)
class _Typed:
    kind: str  # number string bool timestamp date json days events
    expr: ColumnElement[Any] | None = None
    node: ast.Node | None = None
    json_path: str = ""
    call: ast.Call | None = None  # for days/events: the call, compiled lazily against a literal
    column: ColumnElement[Any] | None = None
    column_kind: str = ""


def compile_rule(node: ast.Node, scope: Scope) -> ColumnElement[bool]:
    """The SQL condition for a rule; raises ``RuleError`` (with the offset) for a bad rule."""
    return _Compiler(scope).condition(node)


class _Compiler:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.now = scope.now if scope.now.tzinfo else scope.now.replace(tzinfo=UTC)

    # -- conditions -----------------------------------------------------------------------
    def condition(self, node: ast.Node) -> ColumnElement[bool]:
        if isinstance(node, ast.And):
            return and_(*(self.condition(item) for item in node.items))
        if isinstance(node, ast.Or):
            return or_(*(self.condition(item) for item in node.items))
        if isinstance(node, ast.Not):
            return not_(self.condition(node.operand))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.IsNull):
            return self.is_null(node)
        if isinstance(node, ast.In):
            return self.in_list(node)
        if isinstance(node, ast.Literal) and node.kind == "bool":
            return true() if node.value else false()
        value = self.value(node)
        if value.kind == "bool" and value.expr is not None:
            return value.expr
        if value.kind == "json":
            return json_bool(self.scope.table.c.attributes, value.json_path) == True  # noqa: E712
        raise RuleError(
            f"{_describe(node)} is {_article(value.kind)}, not true or false; "
            "compare it with something, e.g. `orders_count > 0`",
            _pos(node),
        )

    def compare(self, node: ast.Compare) -> ColumnElement[bool]:
        op, left_node, right_node = node.op, node.left, node.right
        if isinstance(left_node, ast.Literal) and not isinstance(right_node, ast.Literal):
            op, left_node, right_node = _FLIP[op], right_node, left_node
        for side in (left_node, right_node):
            if isinstance(side, ast.Literal) and side.kind == "null":
                hint = "is null" if op == "==" else "is not null"
                raise RuleError(f"cannot compare with null; write `{hint}`", side.pos)
            if isinstance(side, ast.Literal) and side.kind == "duration":
                raise RuleError(
                    'a duration can only be used as within=..., e.g. events("x", within=30d)', side.pos
                )
        left = self.value(left_node)
        if isinstance(right_node, ast.Literal):
            return self.compare_literal(left, op, right_node, node)
        right = self.value(right_node)
        if left.kind in ("days", "json") or right.kind in ("days", "json"):
            raise RuleError(
                f"compare {_describe(left_node)} with a literal value, not with {_describe(right_node)}",
                right_node.pos if hasattr(right_node, "pos") else 0,
            )
        lk = "number" if left.kind == "events" else left.kind
        rk = "number" if right.kind == "events" else right.kind
        if lk != rk:
            raise RuleError(
                f"cannot compare {_describe(left_node)} ({lk}) with {_describe(right_node)} ({rk})",
                node.op_pos,
            )
        if lk == "bool" and op not in ("==", "!="):
            raise RuleError(f"true/false values only support == and !=, not {op}", node.op_pos)
        return _apply(op, self.sql(left), self.sql(right))

    def compare_literal(
        self, left: _Typed, op: str, lit: ast.Literal, node: ast.Compare
    ) -> ColumnElement[bool]:
        kind = left.kind
        if kind == "json":
            accessor = {"number": json_number, "string": json_text, "bool": json_bool}[lit.kind]
            expr: ColumnElement[Any] = accessor(self.scope.table.c.attributes, left.json_path)
            if lit.kind == "bool" and op not in ("==", "!="):
                raise RuleError(f"true/false values only support == and !=, not {node.op}", node.op_pos)
            return _apply(op, expr, _param(lit.value))
        if kind == "days":
            return self.days_compare(left, op, lit)
        if kind == "events":
            if lit.kind != "number":
                raise RuleError(
                    f"events(...) is a count; compare it with a number, not {_article(lit.kind)}", lit.pos
                )
            return self.events_compare(left, op, lit.value)  # type: ignore[arg-type]
        if kind in ("timestamp", "date"):
            if lit.kind != "string":
                raise RuleError(
                    f"{_subject(left)} is a {kind}; compare it with a date like "
                    '"2026-01-31", or use days_since(...)',
                    lit.pos,
                )
            return _apply(op, self.sql(left), _parse_instant(lit, kind))
        if kind != lit.kind:
            raise RuleError(
                f"cannot compare {_subject(left)} ({kind}) with {_literal_text(lit)} ({lit.kind})",
                lit.pos,
            )
        if kind == "bool" and op not in ("==", "!="):
            raise RuleError(f"true/false values only support == and !=, not {node.op}", node.op_pos)
        if kind == "string" and left.node is not None and isinstance(left.node, ast.Field):
            self.check_value(left.node, lit)
        return _apply(op, self.sql(left), _param(lit.value))

    def is_null(self, node: ast.IsNull) -> ColumnElement[bool]:
        value = self.value(node.operand)
        if value.kind == "json":
            expr: ColumnElement[Any] = json_any(self.scope.table.c.attributes, value.json_path)
        elif value.kind == "days":
            assert value.column is not None
            expr = value.column
        elif value.kind == "events":
            raise RuleError("events(...) is a count and never null; compare it with 0", _pos(node.operand))
        else:
            expr = self.sql(value)
        return expr.is_not(None) if node.negated else expr.is_(None)

    def in_list(self, node: ast.In) -> ColumnElement[bool]:
        value = self.value(node.operand)
        literals: list[ast.Literal] = []
        for item in node.items:
            if not isinstance(item, ast.Literal) or item.kind in ("null", "duration"):
                raise RuleError("a list after `in` holds numbers, strings or booleans", _pos(item))
            literals.append(item)
        kinds = {lit.kind for lit in literals}
        if len(kinds) > 1:
            raise RuleError("all values in the list must be of one type", node.pos)
        if value.kind in ("days", "events"):
            parts = [
                self.compare_literal(
                    value, "==", lit, ast.Compare("==", node.operand, lit, node.pos, node.pos)
                )
                for lit in literals
            ]
            cond: ColumnElement[bool] = or_(*parts) if parts else false()
            return not_(cond) if node.negated else cond
        if literals:
            lit_kind = literals[0].kind
            if value.kind == "json":
                accessor = {"number": json_number, "string": json_text, "bool": json_bool}[lit_kind]
                expr: ColumnElement[Any] = accessor(self.scope.table.c.attributes, value.json_path)
            else:
                if value.kind != lit_kind:
                    raise RuleError(
                        f"{_describe(node.operand)} is {_article(value.kind)}; the list holds {lit_kind}s",
                        literals[0].pos,
                    )
                expr = self.sql(value)
                if isinstance(node.operand, ast.Field):
                    for lit in literals:
                        self.check_value(node.operand, lit)
        else:
            expr = (
                self.sql(value)
                if value.kind not in ("json",)
                else json_any(self.scope.table.c.attributes, value.json_path)
            )
        raw = [lit.value for lit in literals]
        if any(isinstance(v, float) for v in raw) and all(isinstance(v, int | float) for v in raw):
            raw = [float(v) for v in raw]  # type: ignore[arg-type]  # one numeric type for the whole list
        big = any(isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**31 for v in raw)
        values = [literal(v, BigInteger()) for v in raw] if big else raw
        return expr.not_in(values) if node.negated else expr.in_(values)

    def check_value(self, field_node: ast.Field, lit: ast.Literal) -> None:
        """``stage == "retnetion"`` is a typo, not a rule that never matches."""
        binding = self.scope.names.get(field_node.dotted)
        if binding is None or not binding.values or lit.value in binding.values:
            return
        guess = difflib.get_close_matches(str(lit.value), binding.values, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else f"; known: {', '.join(binding.values)}"
        raise RuleError(f"unknown {field_node.dotted} {lit.value!r}{hint}", lit.pos)

    # -- values -----------------------------------------------------------------------------
    def value(self, node: ast.Node) -> _Typed:
        if isinstance(node, ast.Field):
            return self.field(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Literal):
            raise RuleError(
                f"{_literal_text(node)} on its own is not a rule; compare a field with it", node.pos
            )
        return _Typed("bool", self.condition(node), node)

    def field(self, node: ast.Field) -> _Typed:
        head = node.path[0]
        if head == "attributes":
            if len(node.path) == 1:
                raise RuleError("name the attribute: attributes.<name>, e.g. attributes.industry", node.pos)
            return _Typed("json", node=node, json_path=".".join(node.path[1:]))
        if len(node.path) > 1:
            if head not in FIELD_TYPES and head not in self.scope.names and head not in CONTEXT_NAMES:
                hint = _suggest(head, ["attributes", *FIELD_TYPES])
                raise RuleError(f"unknown field {head!r}{hint}", node.pos)
            raise RuleError(f"{head!r} has no fields; only attributes.<name> takes a dot", node.pos)
        if head in FIELD_TYPES:
            return _Typed(FIELD_TYPES[head], self.scope.table.c[head], node)
        if head in self.scope.names:
            return _Typed("string", self.scope.names[head].expr, node)
        if head in CONTEXT_NAMES:
            where = (
                "step guards, recurring rules and stage rules"
                if head != "stage"
                else "step guards and recurring rules"
            )
            raise RuleError(f"`{head}` cannot be used here; it is available in {where}", node.pos)
        if head in FUNCTIONS:
            raise RuleError(f"{head} is a function; call it: {head}(...)", node.pos)
        raise RuleError(
            f"unknown field {head!r}{_suggest(head, [*FIELD_TYPES, *self.scope.names, 'attributes'])}",
            node.pos,
        )

    def call(self, node: ast.Call) -> _Typed:
        if node.name not in FUNCTIONS:
            raise RuleError(f"unknown function {node.name!r}{_suggest(node.name, FUNCTIONS)}", node.pos)
        if node.name == "events":
            self.events_args(node)
            return _Typed("events", node=node, call=node)
        if node.kwargs or len(node.args) != 1:
            raise RuleError(f"{node.name}() takes one field, e.g. {node.name}(signed_up_at)", node.pos)
        arg = node.args[0]
        if not isinstance(arg, ast.Field):
            raise RuleError(f"{node.name}() takes a date or timestamp field", _pos(arg))
        target = self.field(arg)
        if target.kind not in ("timestamp", "date"):
            raise RuleError(
                f"{node.name}() takes a date or timestamp field; {arg.dotted} is {_article(target.kind)}",
                arg.pos,
            )
        assert target.expr is not None
        if node.name == "anniversary":
            return _Typed("bool", self.anniversary(target.expr, target.kind), node)
        return _Typed("days", node=node, call=node, column=target.expr, column_kind=target.kind)

    def events_args(self, node: ast.Call) -> tuple[str, timedelta | None]:
        if len(node.args) != 1 or not isinstance(node.args[0], ast.Literal) or node.args[0].kind != "string":
            raise RuleError(
                'events() takes the event name as a string, e.g. events("activated", within="3d")', node.pos
            )
        within: timedelta | None = None
        for key, value in node.kwargs:
            if key != "within":
                raise RuleError(f"events() has no argument {key!r}; it takes within=<duration>", _pos(value))
            if isinstance(value, ast.Literal) and value.kind == "duration":
                within = value.value  # type: ignore[assignment]
            elif isinstance(value, ast.Literal) and value.kind == "string":
                within = parse_duration(str(value.value))
                if within is None:
                    raise RuleError(
                        f'{value.value!r} is not a duration; use e.g. "30d", "12h", "90m"', value.pos
                    )
            else:
                raise RuleError('within= takes a duration, e.g. within="30d"', _pos(value))
        return str(node.args[0].value), within

    def sql(self, value: _Typed) -> ColumnElement[Any]:
        if value.kind == "events":
            assert value.call is not None
            query = select(func.count()).where(self.events_where(value.call)).correlate(self.scope.table)
            return query.scalar_subquery()
        if value.kind == "days" or value.expr is None:
            raise RuleError(
                "compare days_since/days_until with a number, e.g. days_since(signed_up_at) <= 30",
                _pos(value.node) if value.node else 0,
            )
        return value.expr

    def record(self, atom: Any) -> None:
        if self.scope.clock is not None:
            self.scope.clock.append(atom)

    # -- events ---------------------------------------------------------------------------
    def events_where(self, call: ast.Call) -> ColumnElement[bool]:
        name, within = self.events_args(call)
        self.record(EventWindow(name, within))
        ev, now = self.scope.events, self.now
        parts = [ev.c.customer_id == self.scope.table.c.id, ev.c.name == name, ev.c.occurred_at <= now]
        if within is not None:
            parts.append(ev.c.occurred_at >= now - within)
        return and_(*parts)

    def events_compare(self, value: _Typed, op: str, number: float) -> ColumnElement[bool]:
        assert value.call is not None
        if op == "!=":
            return not_(self.events_compare(value, "==", number))
        # counts are whole and never null: rewrite against the smallest count that satisfies the rule
        lo, hi = _integer_bounds(op, number)
        if lo is None and hi is None:
            return false() if op == "==" else true()
        lo = max(lo or 0, 0)
        if hi is not None and hi < lo:
            return false()
        if lo == 0 and hi is None:
            return true()
        if (lo, hi) in ((1, None), (0, 0)):
            if self.scope.hoist is not None:
                present: ColumnElement[bool] = self.hoisted_events(value.call).c.customer_id.is_not(None)
                return present if lo == 1 else not_(present)
            if self.scope.events_in:
                listed = self.scope.table.c.id.in_(self.events_customers(value.call))
                return listed if lo == 1 else not_(listed)
            any_event = exists().where(self.events_where(value.call)).correlate(self.scope.table)
            return any_event if lo == 1 else not_(any_event)
        count = self.sql(value)
        return and_(count >= _param(lo), count <= _param(hi)) if hi is not None else count >= _param(lo)

    def events_customers(self, call: ast.Call) -> Any:
        """SELECT of the customer ids with matching events (uncorrelated)."""
        name, within = self.events_args(call)
        self.record(EventWindow(name, within))
        ev, now = self.scope.events, self.now
        parts = [ev.c.name == name, ev.c.occurred_at <= now]
        if within is not None:
            parts.append(ev.c.occurred_at >= now - within)
        return select(ev.c.customer_id).where(*parts)

    def hoisted_events(self, call: ast.Call) -> Any:
        """The distinct customers with matching events, as a subquery to LEFT JOIN on customer.id."""
        assert self.scope.hoist is not None
        sub = self.events_customers(call).distinct().subquery(f"has_events_{len(self.scope.hoist)}")
        self.scope.hoist.append(sub)
        return sub

    # -- days ------------------------------------------------------------------------------
    def days_compare(self, value: _Typed, op: str, lit: ast.Literal) -> ColumnElement[bool]:
        assert value.call is not None and value.column is not None
        if lit.kind != "number":
            raise RuleError(f"{value.call.name}() is a number of days; compare it with a number", lit.pos)
        col, number, since = value.column, float(lit.value), value.call.name == "days_since"  # type: ignore[arg-type]
        if op == "!=":
            return not_(self.days_compare(value, "==", lit))
        lo, hi = _integer_bounds(op, number)
        if lo is None and hi is None:  # == with a fraction: never, but unknown when the field is missing
            return col != col
        parts = []
        if lo is not None:
            parts.append(self.days_bound(col, value.column_kind, since, lo, upper=False))
        if hi is not None:
            parts.append(self.days_bound(col, value.column_kind, since, hi, upper=True))
        return and_(*parts)

    def days_bound(
        self, col: ColumnElement[Any], kind: str, since: bool, days: int, upper: bool
    ) -> ColumnElement[bool]:
        """floor(days) <= ``days`` (upper) or >= ``days`` as a range on the column itself."""
        try:
            if kind == "date":
                offset = timedelta(days=-days if since else days)
            elif since:
                offset = timedelta(days=-(days + 1) if upper else -days)
            else:
                offset = timedelta(days=days + 1 if upper else days)
            self.record(DaysBoundary(col, kind, offset))
            if kind == "date":
                today = self.now.astimezone(UTC).date()
                if since:  # (today - d).days
                    return (
                        col >= today - timedelta(days=days) if upper else col <= today - timedelta(days=days)
                    )
                return col <= today + timedelta(days=days) if upper else col >= today + timedelta(days=days)
            if since:  # floor((now - f) / 1d)
                return (
                    col > self.now - timedelta(days=days + 1)
                    if upper
                    else col <= self.now - timedelta(days=days)
                )
            return (
                col < self.now + timedelta(days=days + 1) if upper else col >= self.now + timedelta(days=days)
            )
        except OverflowError:
            # beyond any representable date: "at most a huge number of days" holds for every present
            # value and "at least" for none (the other way round for a huge negative number)
            holds = upper if days > 0 else not upper
            return col == col if holds else col != col

    # -- anniversary ------------------------------------------------------------------------
    def anniversary(self, col: ColumnElement[Any], kind: str) -> ColumnElement[bool]:
        self.record(Anniversary(col, kind))
        groups = _local_dates(self.now.astimezone(UTC).replace(second=0, microsecond=0))
        fallback = self.now.astimezone(zone_or_utc(self.scope.fallback_timezone)).date()

        def days_of(local: date) -> list[str]:
            days = [local.strftime("%m-%d")]
            if local.month == 2 and local.day == 28 and not calendar.isleap(local.year):
                days.append("02-29")
            return days

        def on(local: date) -> ColumnElement[bool]:
            start: date | datetime = local if kind == "date" else datetime.combine(local, time(), UTC)
            return and_(month_day(col).in_(days_of(local)), col < start)

        whens = [(self.scope.table.c.timezone.in_(zones), on(local)) for local, zones in groups]
        # every branch needs one of today's few month-days: test that first, as dates the column's
        # index can look up, so the time-zone lookups run only for the customers it may be
        candidates = sorted(
            {
                (int(day[:2]), int(day[3:]))
                for local in [fallback, *(local for local, _ in groups)]
                for day in days_of(local)
            }
        )
        today = on_month_days(col, kind, candidates, self.now.year)
        return and_(today, case(*whens, else_=on(fallback)) == True)  # noqa: E712


#: The earliest year whose dates ``on_month_days`` lists (earlier values are tested by month-day).
FIRST_YEAR = {"date": 1900, "timestamp": 1970}


def on_month_days(
    col: ColumnElement[Any], kind: str, days: Sequence[tuple[int, int]], until_year: int
) -> ColumnElement[bool]:
    """``col`` falls on one of ``days`` (month, day) in some year up to ``until_year``.

    Written as dates (timestamps: day ranges, in UTC) so an index on the column answers it, with a
    month-day test only for values before the first listed year.
    """
    first = FIRST_YEAR[kind]
    start: date | datetime = date(first, 1, 1) if kind == "date" else datetime(first, 1, 1, tzinfo=UTC)
    labels = [f"{m:02d}-{d:02d}" for m, d in days]
    earlier = and_(col < start, month_day(col).in_(labels))
    on_days = [_date(year, m, d) for year in range(first, until_year + 1) for m, d in days]
    dates = [d for d in on_days if d is not None]
    if kind == "date":
        return or_(col.in_(dates), earlier)
    midnights = [datetime(d.year, d.month, d.day, tzinfo=UTC) for d in dates]
    return or_(*(and_(col >= m, col < m + timedelta(days=1)) for m in midnights), earlier)


def _date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:  # 29 February in a common year
        return None


@lru_cache(maxsize=8)
def _local_dates(now: datetime) -> tuple[tuple[date, tuple[str, ...]], ...]:
    """IANA zones grouped by their local date at ``now`` (two or three groups at any instant)."""
    groups: dict[date, list[str]] = {}
    for zone in known_zones():
        groups.setdefault(now.astimezone(zone).date(), []).append(zone.key)
    return tuple((local, tuple(zones)) for local, zones in sorted(groups.items()))


@lru_cache(maxsize=1)
def known_zones() -> tuple[ZoneInfo, ...]:
    """Every IANA zone this machine can load, by name (a zone that cannot be loaded counts as unknown)."""
    loaded = []
    for name in sorted(available_timezones()):
        try:
            loaded.append(ZoneInfo(name))
        except Exception:
            continue
    return tuple(loaded)


def zone_or_utc(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except Exception:
        return ZoneInfo("UTC")


def _integer_bounds(op: str, number: float) -> tuple[int | None, int | None]:
    """Bounds lo <= n <= hi on a whole number n equivalent to ``n op number`` (None, None: never)."""
    if op == "<=":
        return None, math.floor(number)
    if op == "<":
        return None, math.ceil(number) - 1
    if op == ">=":
        return math.ceil(number), None
    if op == ">":
        return math.floor(number) + 1, None
    if op in ("==", "!="):
        if number != math.floor(number):
            return None, None
        return int(number), int(number)
    raise ValueError(op)


_OPERATORS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _param(value: Any) -> Any:
    """A literal for a comparison: whole numbers beyond 32 bits are bound as BIGINT (PostgreSQL would
    otherwise cast them to INTEGER and fail)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**31:
        return literal(value, BigInteger())
    return value


def _apply(op: str, left: ColumnElement[Any], right: Any) -> ColumnElement[bool]:
    result: ColumnElement[bool] = _OPERATORS[op](left, right)
    return result


def _parse_instant(lit: ast.Literal, kind: str) -> date | datetime:
    text = str(lit.value)
    try:
        if kind == "date":
            return date.fromisoformat(text)
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise RuleError(
            f"{text!r} is not an ISO 8601 {'date' if kind == 'date' else 'timestamp'}, "
            'e.g. "2026-01-31" or "2026-01-31T09:00:00Z"',
            lit.pos,
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _suggest(name: str, options: Sequence[str]) -> str:
    guess = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {guess[0]!r}?)" if guess else ""


def _article(kind: str) -> str:
    words = {
        "number": "a number",
        "string": "a string",
        "bool": "true or false",
        "timestamp": "a timestamp",
        "date": "a date",
        "json": "an attribute",
        "days": "a number of days",
        "events": "a count",
        "duration": "a duration",
        "null": "null",
    }
    return words.get(kind, kind)


def _literal_text(lit: ast.Literal) -> str:
    if lit.kind == "string":
        return repr(lit.value)
    if lit.kind == "bool":
        return "true" if lit.value else "false"
    if lit.kind == "null":
        return "null"
    return str(lit.value)


def _describe(node: ast.Node) -> str:
    if isinstance(node, ast.Field):
        return node.dotted
    if isinstance(node, ast.Call):
        return f"{node.name}(...)"
    if isinstance(node, ast.Literal):
        return _literal_text(node)
    return "this expression"


def _subject(value: _Typed) -> str:
    """How to name the non-literal side of a comparison in a message."""
    return _describe(value.node) if value.node is not None else "this value"


def _pos(node: ast.Node) -> int:
    return int(getattr(node, "pos", 0))
