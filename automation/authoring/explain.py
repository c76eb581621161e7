"""``automation explain``: why one customer is where they are and what would be sent to them now.

For each playbook: every segment and stage rule (and the recurring rules and the step guards of the
customer's program) with its value for the customer, each sub-expression of the rule evaluated as its own
SQL column (true, false or unknown), and the field and function values it used; the program and step the
customer is on; the actions the engine would plan now (``plan.planner.plan`` for this one customer, the
daemon's path, so the reasons are the daemon's); what the outbox already holds for the customer; and the
customer's latest events as of the evaluation time. Reads the database, writes nothing. One module,
although long: the trace, the program position and the planned actions are one report about one
customer, assembled and rendered in one place.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal, not_, select
from sqlalchemy.sql.elements import ColumnElement

from automation.authoring.preview import PreviewSink
from automation.db.tables import CUSTOMER, ENROLLMENT, EVENT, OUTBOX, STATE, SUPPRESSION
from automation.errors import InputError
from automation.masking import mask_text
from automation.plan.planner import plan
from automation.plan.records import PlannedAction
from automation.playbook.models import FrequencyCap, Rule, TaskStep, WaitStep, step_channel, step_template
from automation.rules import ast
from automation.rules.ast import RuleError, format_duration, parse_duration
from automation.rules.compiled import CompiledPlaybook
from automation.rules.compiler import FIELD_TYPES, Binding, Scope, compile_rule


@dataclass
class Part:
    """One sub-expression of a rule: its text, its value, and how deep it sits in the rule."""

    expr: str
    value: bool | None  # None: unknown (a missing value)
    depth: int


@dataclass
class RuleExplanation:
    kind: str  # segment | stage | recurring | guard
    name: str
    rule: str | None  # None: a catch-all segment
    value: bool | None  # the rule's own value for the customer (None: unknown, which does not match)
    chosen: bool  # the first match among segments or stages (for guards and recurring: value is true)
    considered: bool = True  # False when an earlier rule already won
    parts: list[Part] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)  # fields and function values the rule used


@dataclass
class PlaybookExplanation:
    playbook: str
    path: str
    at: datetime
    segment: str | None
    touch: str | None
    stage: str | None
    stored: dict[str, Any] | None  # customer_state as of the last tick (None: never ticked)
    program: str
    enrollment: dict[str, Any] | None
    rules: list[RuleExplanation]
    actions: list[PlannedAction]

    def as_json(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "path": self.path,
            "at": self.at.isoformat(),
            "segment": self.segment,
            "touch": self.touch,
            "stage": self.stage,
            "stored": _jsonable(self.stored),
            "program": self.program,
            "enrollment": _jsonable(self.enrollment),
            "rules": [
                {
                    "kind": r.kind,
                    "name": r.name,
                    "rule": r.rule,
                    "value": r.value,
                    "chosen": r.chosen,
                    "considered": r.considered,
                    "parts": [p.__dict__ for p in r.parts],
                    "values": _jsonable(r.values),
                }
                for r in self.rules
            ],
            "actions": [a.as_dict() for a in self.actions],
        }


@dataclass
class RecentEvents:
    """A customer's latest events at or before the evaluation time, newest first, and how many there are."""

    events: list[dict[str, Any]]  # occurred_at, name, message_id, properties
    total: int  # events at or before the evaluation time (what the rules count)
    later: int  # events after it: not listed, not counted by the rules


@dataclass
class Explanation:
    customer_id: str
    at: datetime
    customer: dict[str, Any]
    playbooks: list[PlaybookExplanation]
    outbox: list[dict[str, Any]]
    events: RecentEvents | None = None  # None: not asked for (``events=0``)
    suppressions: list[dict[str, Any]] | None = None  # channel, reason, note (where it came from), created_at

    def as_json(self) -> dict[str, Any]:
        out = {
            "customer_id": self.customer_id,
            "at": self.at.isoformat(),
            "customer": _jsonable(self.customer),
            "playbooks": [p.as_json() for p in self.playbooks],
            "outbox": _jsonable(self.outbox),
            "suppressions": _jsonable(self.suppressions or []),
        }
        if self.events is not None:
            out["events"] = _jsonable(self.events.events)
            out["events_total"] = self.events.total
            out["events_later"] = self.events.later
        return out


def explain(
    conn: Connection,
    playbooks: list[CompiledPlaybook],
    customer_id: str,
    global_cap: FrequencyCap | None = None,
    events: int = 10,
    global_control: float = 0.0,
) -> Explanation:
    """The decision trace of one customer in each of ``playbooks`` (compiled for the same moment), with
    the customer's ``events`` latest events (0: none, and no count)."""
    if events < 0:
        raise InputError(f"events: expected 0 or more, got {events}")
    row = conn.execute(select(CUSTOMER).where(CUSTOMER.c.id == customer_id)).mappings().first()
    if row is None:
        raise InputError(f"no customer with id {customer_id!r}; check the id or import the customer first")
    customer = dict(row)
    at = playbooks[0].now if playbooks else datetime.now(UTC)
    out = [explain_playbook(conn, compiled, customer, global_cap, global_control) for compiled in playbooks]
    outbox = [
        dict(r)
        for r in conn.execute(
            select(
                OUTBOX.c.id,
                OUTBOX.c.playbook,
                OUTBOX.c.step,
                OUTBOX.c.channel,
                OUTBOX.c.template,
                OUTBOX.c.status,
                OUTBOX.c.due_at,
                OUTBOX.c.sent_at,
                OUTBOX.c.attempts,
                OUTBOX.c.last_error,
                *ENGAGEMENT_COLUMNS,
            )
            .where(OUTBOX.c.customer_id == customer_id)
            .order_by(OUTBOX.c.created_at, OUTBOX.c.id)
        ).mappings()
    ]
    recent = last_events(conn, customer_id, at, events) if events else None
    consent = [
        dict(r)
        for r in conn.execute(
            select(SUPPRESSION.c.channel, SUPPRESSION.c.reason, SUPPRESSION.c.note, SUPPRESSION.c.created_at)
            .where(SUPPRESSION.c.customer_id == customer_id)
            .order_by(SUPPRESSION.c.channel)
        ).mappings()
    ]
    return Explanation(customer_id, at, customer, out, outbox, recent, consent)


#: What the outbox row says happened after sending (providers' reports and tracking).
ENGAGEMENT_COLUMNS = (
    OUTBOX.c.provider_status,
    OUTBOX.c.delivered_at,
    OUTBOX.c.opens,
    OUTBOX.c.machine_opens,
    OUTBOX.c.clicks,
    OUTBOX.c.bounced_at,
    OUTBOX.c.complained_at,
)


def _engagement_text(row: dict[str, Any]) -> str:
    """``; delivered, opened 2 (+1 machine), clicked 1, bounced`` or empty."""
    parts = []
    if row.get("delivered_at") is not None:
        parts.append("delivered")
    if row.get("opens") or row.get("machine_opens"):
        machine = f" (+{row['machine_opens']} machine)" if row.get("machine_opens") else ""
        parts.append(f"opened {row.get('opens') or 0}{machine}")
    if row.get("clicks"):
        parts.append(f"clicked {row['clicks']}")
    if row.get("bounced_at") is not None:
        parts.append("bounced")
    if row.get("complained_at") is not None:
        parts.append("complained")
    return f"  [{', '.join(parts)}]" if parts else ""


def last_events(conn: Connection, customer_id: str, at: datetime, limit: int) -> RecentEvents:
    """The customer's ``limit`` latest events at or before ``at``, newest first (ties: the later
    stored first), and the counts of the events up to ``at`` and after it.

    Two statements, both reading the customer's rows of ``ix_event_customer_name_time``; the list sorts
    only this customer's events."""
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    rows = conn.execute(
        select(EVENT.c.occurred_at, EVENT.c.name, EVENT.c.message_id, EVENT.c.properties)
        .where(EVENT.c.customer_id == customer_id, EVENT.c.occurred_at <= at)
        .order_by(EVENT.c.occurred_at.desc(), EVENT.c.id.desc())
        .limit(limit)
    ).mappings()
    events = [dict(row) for row in rows]
    counted = conn.execute(
        select(
            func.count(case((EVENT.c.occurred_at <= at, literal(1)))).label("total"),
            func.count().label("stored"),
        ).where(EVENT.c.customer_id == customer_id)
    ).one()
    total = int(counted.total)
    return RecentEvents(events, total, int(counted.stored) - total)


def explain_playbook(
    conn: Connection,
    compiled: CompiledPlaybook,
    customer: dict[str, Any],
    global_cap: FrequencyCap | None = None,
    global_control: float = 0.0,
) -> PlaybookExplanation:
    pb = compiled.loaded.playbook
    cid = str(customer["id"])
    now = compiled.now
    base = Scope(now=now, fallback_timezone=pb.timezone)
    names = {
        "segment": Binding(compiled.segment, pb.segment_names),
        "touch": Binding(compiled.touch, ("high", "low", "none")),
    }
    staged = Scope(now=now, fallback_timezone=pb.timezone, names=names)
    full = Scope(
        now=now,
        fallback_timezone=pb.timezone,
        names={**names, "stage": Binding(compiled.stage, pb.stage_names)},
    )
    current = (
        conn.execute(
            select(
                compiled.segment.label("segment"),
                compiled.touch.label("touch"),
                compiled.stage.label("stage"),
            ).where(CUSTOMER.c.id == cid)
        )
        .mappings()
        .one()
    )
    segment, touch, stage = current["segment"], current["touch"], current["stage"]
    evaluator = _Evaluator(conn, cid, customer, now)

    rules: list[RuleExplanation] = []
    won = False
    for s in pb.segments:
        if s.when is None:
            item = RuleExplanation("segment", s.name, None, True, not won, considered=not won)
        else:
            item = evaluator.rule("segment", s.name, s.when, base)
            item.considered, item.chosen = not won, not won and item.value is True
        won = won or item.value is True
        rules.append(item)
    won = False
    for st in pb.stages:
        item = evaluator.rule("stage", st.name, st.when, staged)
        item.considered, item.chosen = not won, not won and item.value is True
        won = won or item.value is True
        rules.append(item)
    for rec in pb.recurring:
        item = evaluator.rule("recurring", rec.name, rec.when, full)
        item.chosen = item.value is True
        rules.append(item)
    if stage is not None and touch is not None:
        for index, step in enumerate(pb.program(stage, touch)):
            if isinstance(step, WaitStep):
                continue
            label = f"{stage}/{touch}#{index + 1}"
            for word, rule in (("when", step.when), ("unless", step.unless)):
                if rule is not None:
                    item = evaluator.rule("guard", f"{label} {word}", rule, full)
                    held = item.value is not True if word == "when" else item.value is not False
                    item.chosen = not held
                    rules.append(item)

    state = (
        conn.execute(select(STATE).where(STATE.c.playbook == pb.name, STATE.c.customer_id == cid))
        .mappings()
        .first()
    )
    stored = dict(state) if state is not None else None
    enrollment_row = (
        conn.execute(
            select(ENROLLMENT)
            .where(ENROLLMENT.c.playbook == pb.name, ENROLLMENT.c.customer_id == cid)
            .order_by(ENROLLMENT.c.started_at.desc(), ENROLLMENT.c.id.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    enrollment = dict(enrollment_row) if enrollment_row is not None else None
    program = _describe_program(compiled, stage, touch, stored, enrollment)

    sink = PreviewSink(limit=0)
    plan(conn, compiled, sink, customer_ids=[cid], global_cap=global_cap, global_control=global_control)
    return PlaybookExplanation(
        pb.name,
        str(compiled.loaded.path),
        now,
        segment,
        touch,
        stage,
        stored,
        program,
        enrollment,
        rules,
        sink.actions,
    )


def _describe_program(
    compiled: CompiledPlaybook,
    stage: str | None,
    touch: str | None,
    stored: dict[str, Any] | None,
    enrollment: dict[str, Any] | None,
) -> str:
    pb = compiled.loaded.playbook

    def program_name(st: str, tc: str) -> str:
        return f"{st} program {tc}" if pb.program(st, tc) else f"{st} (no program for touch {tc})"

    if stored is None:
        if stage is None or touch is None:
            return "not ticked yet; no stage, so no program"
        return f"not ticked yet; would enter {program_name(stage, touch)}"
    lines: list[str] = []
    if enrollment is not None:
        steps = pb.program(enrollment["stage"], enrollment["touch"])
        name = f"{enrollment['stage']} program {enrollment['touch']}"
        if enrollment["status"] == "active":
            index = int(enrollment["step_index"])
            nxt = steps[index] if index < len(steps) else None
            what = _step_text(nxt) if nxt is not None else "end"
            due = enrollment["next_step_at"]
            lines.append(
                f"{name}, step {index + 1} of {len(steps)} ({what}) due {_ts(due)}"
                if due is not None
                else f"{name}, step {index + 1} of {len(steps)} ({what})"
            )
        else:
            reason = f": {enrollment['end_reason']}" if enrollment.get("end_reason") else ""
            lines.append(f"{name} {enrollment['status']} {_ts(enrollment['ended_at'])}{reason}".rstrip())
    else:
        lines.append("no program run yet")
    if stored.get("stage") != stage:
        entering = program_name(stage, touch) if stage is not None and touch is not None else "no stage"
        lines.append(
            f"stage changes now: {stored.get('stage') or '(none)'} -> {stage or '(none)'}; "
            f"would enter {entering}"
        )
    return "; ".join(lines)


def _step_text(step: Any) -> str:
    if isinstance(step, WaitStep):
        return f"wait {format_duration(step.wait)}"
    text = f"{step_channel(step)}: {step_template(step)}"
    if isinstance(step, TaskStep) and step.assign:
        text += f" (assign {step.assign})"
    return text


class _Evaluator:
    """Evaluates rule sub-trees for one customer, each as its own SQL column."""

    def __init__(self, conn: Connection, customer_id: str, customer: dict[str, Any], now: datetime) -> None:
        self.conn, self.customer_id, self.customer = conn, customer_id, customer
        self.now = now if now.tzinfo else now.replace(tzinfo=UTC)

    def rule(self, kind: str, name: str, rule: Rule, scope: Scope) -> RuleExplanation:
        conditions: list[tuple[str, int, ColumnElement[Any]]] = []
        values: list[tuple[str, ColumnElement[Any] | None, Any]] = []
        self.walk(rule.node, scope, 0, conditions, values)
        columns: list[ColumnElement[Any]] = [
            _three_valued(cond).label(f"c{i}") for i, (_, _, cond) in enumerate(conditions)
        ]
        columns += [expr.label(f"v{i}") for i, (_, expr, _) in enumerate(values) if expr is not None]
        row: Any = {}
        if columns:
            row = (
                self.conn.execute(select(*columns).where(CUSTOMER.c.id == self.customer_id)).mappings().one()
            )
        parts = [Part(text, _bool(row[f"c{i}"]), depth) for i, (text, depth, _) in enumerate(conditions)]
        used: dict[str, Any] = {}
        for i, (text, expr, value) in enumerate(values):
            used[text] = row[f"v{i}"] if expr is not None else value
        value = parts[0].value if parts else None
        return RuleExplanation(kind, name, rule.text, value, value is True, parts=parts, values=used)

    def walk(
        self,
        node: ast.Node,
        scope: Scope,
        depth: int,
        conditions: list[tuple[str, int, ColumnElement[Any]]],
        values: list[tuple[str, ColumnElement[Any] | None, Any]],
    ) -> None:
        if _is_condition(node):
            with contextlib.suppress(RuleError):
                conditions.append((unparse(node), depth, compile_rule(node, scope)))
        children: list[ast.Node] = []
        if isinstance(node, ast.And | ast.Or):
            children = list(node.items)
        elif isinstance(node, ast.Not):
            children = [node.operand]
        elif isinstance(node, ast.Compare):
            children = [node.left, node.right]
        elif isinstance(node, ast.IsNull | ast.In):
            children = [node.operand]
        elif isinstance(node, ast.Call) and node.name == "anniversary":
            children = list(node.args)
        elif isinstance(node, ast.Call):
            self.value(node, scope, values)
            children = [a for a in node.args if isinstance(a, ast.Field)]
        elif isinstance(node, ast.Field):
            self.value(node, scope, values)
        for child in children:
            if _is_condition(child):
                self.walk(child, scope, depth + 1, conditions, values)
            else:
                self.walk(child, scope, depth, conditions, values)

    def value(
        self,
        node: ast.Field | ast.Call,
        scope: Scope,
        values: list[tuple[str, ColumnElement[Any] | None, Any]],
    ) -> None:
        text = unparse(node)
        if any(existing == text for existing, _, _ in values):
            return
        if isinstance(node, ast.Field):
            head = node.path[0]
            if head in scope.names:
                values.append((text, scope.names[head].expr, None))
            elif head == "attributes":
                attrs: Any = self.customer.get("attributes") or {}
                for key in node.path[1:]:
                    attrs = attrs.get(key) if isinstance(attrs, dict) else None
                values.append((text, None, attrs))
            elif head in FIELD_TYPES:
                values.append((text, None, self.customer.get(head)))
            return
        if node.name == "events":
            counted = self.events_count(node)
            if counted is not None:
                values.append((text, counted, None))
        elif node.name in ("days_since", "days_until") and node.args and isinstance(node.args[0], ast.Field):
            values.append((text, None, self.days(node.name, self.customer.get(node.args[0].path[0]))))

    def events_count(self, node: ast.Call) -> ColumnElement[Any] | None:
        if not node.args or not isinstance(node.args[0], ast.Literal):
            return None
        parts = [
            EVENT.c.customer_id == CUSTOMER.c.id,
            EVENT.c.name == str(node.args[0].value),
            EVENT.c.occurred_at <= self.now,
        ]
        for key, arg in node.kwargs:
            if key == "within" and isinstance(arg, ast.Literal):
                within = arg.value if arg.kind == "duration" else parse_duration(str(arg.value))
                if within is not None:
                    parts.append(EVENT.c.occurred_at >= self.now - within)  # type: ignore[operator]
        query = select(func.count()).where(and_(*parts)).correlate(CUSTOMER)
        result: ColumnElement[Any] = query.scalar_subquery()
        return result

    def days(self, name: str, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            instant = value if value.tzinfo else value.replace(tzinfo=UTC)
            seconds = (self.now - instant).total_seconds()
        elif isinstance(value, date):
            seconds = (self.now.astimezone(UTC).date() - value).days * 86400.0
        else:
            return None
        if name == "days_until":
            seconds = -seconds
        return math.floor(seconds / 86400)


def _is_condition(node: ast.Node) -> bool:
    if isinstance(node, ast.And | ast.Or | ast.Not | ast.Compare | ast.IsNull | ast.In):
        return True
    if isinstance(node, ast.Literal):
        return node.kind == "bool"
    if isinstance(node, ast.Call):
        return node.name == "anniversary"
    return isinstance(node, ast.Field) and node.path[0] == "attributes"


def _three_valued(cond: ColumnElement[bool]) -> ColumnElement[Any]:
    """1 when true, 0 when false, NULL when unknown (SQL's third value)."""
    return case((cond, literal(1)), (not_(cond), literal(0)), else_=None)


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


# -- rule text ---------------------------------------------------------------------------------------
def unparse(node: ast.Node) -> str:
    """A rule tree back to rule text (canonical spacing and quotes)."""
    if isinstance(node, ast.Literal):
        if node.kind == "string":
            return json.dumps(node.value, ensure_ascii=False)
        if node.kind == "bool":
            return "true" if node.value else "false"
        if node.kind == "null":
            return "null"
        if node.kind == "duration":
            return format_duration(node.value)  # type: ignore[arg-type]
        return str(node.value)
    if isinstance(node, ast.Field):
        return node.dotted
    if isinstance(node, ast.Call):
        args = [unparse(a) for a in node.args] + [f"{k}={unparse(v)}" for k, v in node.kwargs]
        return f"{node.name}({', '.join(args)})"
    if isinstance(node, ast.Compare):
        return f"{unparse(node.left)} {node.op} {unparse(node.right)}"
    if isinstance(node, ast.IsNull):
        return f"{unparse(node.operand)} is {'not ' if node.negated else ''}null"
    if isinstance(node, ast.In):
        items = ", ".join(unparse(i) for i in node.items)
        return f"{unparse(node.operand)} {'not in' if node.negated else 'in'} [{items}]"
    if isinstance(node, ast.Not):
        inner = unparse(node.operand)
        return f"not ({inner})" if isinstance(node.operand, ast.And | ast.Or) else f"not {inner}"
    if isinstance(node, ast.And):
        return " and ".join(f"({unparse(i)})" if isinstance(i, ast.Or) else unparse(i) for i in node.items)
    return " or ".join(unparse(i) for i in node.items)


# -- output ---------------------------------------------------------------------------------------
def _ts(value: Any) -> str:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return f"{aware.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    return "-" if value is None else str(value)


def _shown(value: Any) -> str:
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    return str(value)


#: What would break a line or move the cursor: control characters (Unicode Cc), U+2028 and U+2029.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Characters of an event's name, message id and properties in the text output.
NAME_WIDTH, MESSAGE_ID_WIDTH, PROPERTIES_WIDTH = 32, 36, 80


def _one_line(text: str, width: int) -> str:
    """``text`` for one line of terminal output: control characters escaped, addresses and phone
    numbers masked, cut to ``width`` characters (masked before it is cut, so no address is left half
    masked)."""
    text = mask_text(_UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))
    return text if len(text) <= width else text[: width - 1] + "…"


def _properties_line(properties: Any) -> str:
    if not properties:
        return ""
    # keys sorted: the same line on SQLite (as stored) and PostgreSQL (JSONB's own order)
    text = json.dumps(_jsonable(properties), ensure_ascii=False, sort_keys=True, default=str)
    return _one_line(text, PROPERTIES_WIDTH)


def _events_text(recent: RecentEvents, at: datetime) -> list[str]:
    later = f"; {recent.later} later, after {_ts(at)}, not shown" if recent.later else ""
    if not recent.total:
        return [f"last events: none{later}"]
    lines = [f"last events ({len(recent.events)} of {recent.total} events{later}):"]
    names = [_one_line(e["name"], NAME_WIDTH) for e in recent.events]
    ids = [_one_line(e["message_id"], MESSAGE_ID_WIDTH) if e["message_id"] else "-" for e in recent.events]
    name_width, id_width = max(map(len, names)), max(map(len, ids))
    for event, name, message_id in zip(recent.events, names, ids, strict=True):
        when = event["occurred_at"]
        when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
        line = f"  {when:%Y-%m-%d %H:%M:%S} UTC  {name:<{name_width}}  {message_id:<{id_width}}"
        lines.append(f"{line}  {_properties_line(event['properties'])}".rstrip())
    return lines


def _truth(value: bool | None) -> str:
    return "unknown" if value is None else ("true" if value else "false")


def render_text(result: Explanation) -> str:
    lines = [f"customer {result.customer_id} at {_ts(result.at)}"]
    for pb in result.playbooks:
        lines.append("")
        lines.append(f"playbook {pb.playbook} ({pb.path})")
        lines.append(
            f"  segment: {pb.segment or '(none)'} (touch {pb.touch or '-'})   stage: {pb.stage or '(none)'}"
        )
        if pb.stored is not None:
            lines.append(
                f"  stored at the last tick: segment {pb.stored.get('segment') or '(none)'}, "
                f"stage {pb.stored.get('stage') or '(none)'} (evaluated {_ts(pb.stored.get('evaluated_at'))})"
            )
        lines.append(f"  program: {pb.program}")
        titles = {
            "segment": "segments (first match wins)",
            "stage": "stages (first match wins)",
            "recurring": "recurring rules",
            "guard": "step guards of the program",
        }
        shown: set[str] = set()
        for rule in pb.rules:
            if rule.kind not in shown:
                shown.add(rule.kind)
                lines.append(f"  {titles[rule.kind]}:")
            mark = "->" if rule.chosen and rule.kind in ("segment", "stage") else "  "
            note = "" if rule.considered else "  (not reached: an earlier rule won)"
            if rule.kind == "guard":
                note = "  (step may go)" if rule.chosen else "  (holds the step back)"
            if rule.rule is None:
                lines.append(f"   {mark} {rule.name}: everyone left{note}")
                continue
            lines.append(f"   {mark} {rule.name}: {_truth(rule.value)}{note}")
            for part in rule.parts:
                lines.append(f"        {'  ' * part.depth}{_truth(part.value):<7}  {part.expr}")
            if rule.values:
                used = ", ".join(f"{k} = {_shown(v)}" for k, v in rule.values.items())
                lines.append(f"        values: {used}")
        lines.append("  now:")
        if not pb.actions:
            lines.append("    nothing to send (no stage change, no step due, no recurring rule firing)")
        for a in pb.actions:
            target = a.assignee or a.url or ""
            head = f"    {a.step:<28} {a.channel:<8} {a.template:<20}"
            if a.status == "planned":
                lines.append(f"{head} would be sent" + (f" to {target}" if target else ""))
            else:
                until = f" (deferred to {_ts(a.until)})" if a.until else " (not sent)"
                lines.append(f"{head} held: {a.reason}{until}")
    lines.append("")
    if not result.outbox:
        lines.append("outbox: nothing for this customer yet")
    else:
        lines.append("outbox:")
        for row in result.outbox:
            when = row["sent_at"] if row["sent_at"] is not None else row["due_at"]
            label = "sent" if row["sent_at"] is not None else "due"
            error = f"  {row['last_error']}" if row["last_error"] else ""
            lines.append(
                f"  #{row['id']:<5} {row['step'] or '':<28} {row['channel']:<8} {row['template']:<20} "
                f"{row['status']:<10} {label} {_ts(when)}{_engagement_text(row)}{error}"
            )
    if result.suppressions:
        lines.append("")
        lines.append("consent (suppressed channels):")
        for s in result.suppressions:
            source = f" ({mask_text(s['note'])})" if s.get("note") else ""
            lines.append(f"  {s['channel']:<8} {s['reason']:<13} since {_ts(s['created_at'])}{source}")
    if result.events is not None:
        lines.append("")
        lines.extend(_events_text(result.events, result.at))
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value
