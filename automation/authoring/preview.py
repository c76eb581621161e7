"""``automation preview``: what the next tick of a playbook would do. Reads the database, writes nothing.

The preview runs ``plan.evaluate.evaluate`` and ``plan.planner.plan`` (the daemon's path) into a sink
that only counts and keeps the first actions, then renders the result as tables or JSON.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from automation.config import Settings
from automation.db.tables import CUSTOMER
from automation.errors import InputError
from automation.messages.render import render_for_action
from automation.messages.store import RenderError, TemplateStore
from automation.plan.evaluate import evaluate
from automation.plan.planner import plan
from automation.plan.records import Counts, EnrollmentChange, PlannedAction, Transition
from automation.rules.compiled import CompiledPlaybook


@dataclass
class PreviewSink:
    """Counts everything, keeps the first ``limit`` actions (0: all). Writes nothing anywhere."""

    limit: int = 20
    transitions: int = 0
    entering: Counter[str] = field(default_factory=Counter)
    enrollments: Counter[str] = field(default_factory=Counter)
    by_channel: Counter[tuple[str, str]] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    actions: list[PlannedAction] = field(default_factory=list)
    total_actions: int = 0

    def transition(self, item: Transition) -> None:
        self.transitions += 1
        if item.stage_changed and item.stage is not None:
            self.entering[item.stage] += 1

    def enrollment(self, item: EnrollmentChange) -> None:
        self.enrollments[item.status] += 1

    def action(self, item: PlannedAction) -> None:
        self.total_actions += 1
        self.by_channel[(item.channel, item.status)] += 1
        if item.reason:
            self.reasons[_reason_kind(item.reason)] += 1
        if not self.limit or len(self.actions) < self.limit:
            self.actions.append(item)


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary ("quiet hours until 08:00 Asia/Jakarta" -> "quiet hours")."""
    for kind in ("quiet hours", "global frequency cap", "frequency cap", "consent", "step guard", "holdout"):
        if reason.startswith(kind):
            return kind
    for kind in ("held",):
        if reason.startswith(kind):
            return kind
    return reason


@dataclass
class RuleTrace:
    kind: str  # segment | stage
    name: str
    rule: str | None
    matched: bool | None  # None: not evaluated because an earlier rule won
    chosen: bool


@dataclass
class Preview:
    playbook: str
    at: datetime
    counts: Counts
    sink: PreviewSink
    compiled: CompiledPlaybook
    customer: dict[str, Any] | None = None
    trace: list[RuleTrace] = field(default_factory=list)
    rendered: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        pb = self.compiled.loaded.playbook
        segments = self.counts.by_segment()
        stages = self.counts.by_stage()
        matrix: dict[str, dict[str, int]] = {}
        for (segment, stage), n in sorted(
            self.counts.matrix.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))
        ):
            matrix.setdefault(segment or "(none)", {})[stage or "(none)"] = n
        data: dict[str, Any] = {
            "playbook": self.playbook,
            "at": self.at.isoformat(),
            "customers": self.counts.total,
            "segments": {
                s.name: {"touch": s.touch, "customers": segments.get(s.name, 0)} for s in pb.segments
            },
            "stages": {s.name: stages.get(s.name, 0) for s in pb.stages},
            "matrix": matrix,
            "transitions": self.sink.transitions,
            "entering": dict(self.sink.entering),
            "summary": {
                "actions": self.sink.total_actions,
                "planned": sum(n for (_, status), n in self.sink.by_channel.items() if status == "planned"),
                "suppressed": sum(  # held back: suppressed, deferred or held out (a control group)
                    n for (_, status), n in self.sink.by_channel.items() if status != "planned"
                ),
                "by_channel": _by_channel(self.sink.by_channel),
                "reasons": dict(self.sink.reasons.most_common()),
            },
            "actions": [a.as_dict() for a in self.sink.actions],
        }
        if None in segments:
            data["segments"]["(none)"] = {"touch": None, "customers": segments[None]}
        data["stages"]["(none)"] = stages.get(None, 0)
        if self.customer is not None:
            data["customer"] = _jsonable(self.customer)
            data["trace"] = [t.__dict__ for t in self.trace]
            data["rendered"] = self.rendered
        return data


def _by_channel(counter: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (channel, status), n in sorted(counter.items()):
        counts = out.setdefault(channel, {"planned": 0, "suppressed": 0})
        counts["planned" if status == "planned" else "suppressed"] += n
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def run_preview(
    conn: Connection,
    compiled: CompiledPlaybook,
    templates: TemplateStore,
    settings: Settings,
    *,
    customer_id: str | None = None,
    limit: int = 20,
) -> Preview:
    """Evaluate and plan ``compiled`` at its ``now``, writing nothing; for one customer, trace and render."""
    ids = [customer_id] if customer_id is not None else None
    customer: dict[str, Any] | None = None
    if customer_id is not None:
        row = conn.execute(select(CUSTOMER).where(CUSTOMER.c.id == customer_id)).mappings().first()
        if row is None:
            raise InputError(
                f"no customer with id {customer_id!r}; check the id or import the customer first"
            )
        customer = dict(row)
    counts = evaluate(conn, compiled, ids)
    sink = PreviewSink(limit=limit if customer_id is None else 0)
    plan(conn, compiled, sink, ids)
    result = Preview(compiled.name, compiled.now, counts, sink, compiled, customer)
    if customer is not None:
        result.trace = trace(conn, compiled, customer_id or "")
        result.rendered = [render_action(a, customer, compiled, templates, settings) for a in sink.actions]
    return result


def trace(conn: Connection, compiled: CompiledPlaybook, customer_id: str) -> list[RuleTrace]:
    """Each segment and stage rule, in order, with its value for one customer and which one won."""
    from automation.rules.compiler import Binding, Scope, compile_rule

    pb = compiled.loaded.playbook
    base = Scope(now=compiled.now, fallback_timezone=pb.timezone)
    names = {"segment": Binding(compiled.segment, pb.segment_names), "touch": Binding(compiled.touch, ())}
    staged = Scope(now=compiled.now, fallback_timezone=pb.timezone, names=names)
    columns = [compile_rule(s.when.node, base).label(f"s{i}") for i, s in enumerate(pb.segments) if s.when]
    columns += [compile_rule(s.when.node, staged).label(f"t{i}") for i, s in enumerate(pb.stages)]
    row = conn.execute(select(*columns).where(CUSTOMER.c.id == customer_id)).mappings().one()
    out: list[RuleTrace] = []
    won = False
    for i, segment in enumerate(pb.segments):
        matched = True if segment.when is None else bool(row[f"s{i}"])
        out.append(
            RuleTrace(
                "segment",
                segment.name,
                segment.when.text if segment.when else None,
                None if won else matched,
                not won and matched,
            )
        )
        won = won or matched
    won = False
    for i, stage in enumerate(pb.stages):
        matched = bool(row[f"t{i}"])
        out.append(
            RuleTrace("stage", stage.name, stage.when.text, None if won else matched, not won and matched)
        )
        won = won or matched
    return out


def render_action(
    action: PlannedAction,
    customer: dict[str, Any],
    compiled: CompiledPlaybook,
    templates: TemplateStore,
    settings: Settings,
) -> dict[str, Any]:
    """The message an action would send, rendered as the dispatcher renders it; a template that cannot
    be rendered gives ``error`` instead of ``message``."""
    out: dict[str, Any] = {"step": action.step, "channel": action.channel, "template": action.template}
    try:
        message = render_for_action(
            templates,
            action,
            customer,
            playbook=compiled.name,
            now=compiled.now,
            public_url=settings.public_url,
            secret_key=settings.secret_key,
            always_sign=True,
        )
        out["message"] = message.rendered.as_payload()
    except RenderError as exc:
        out["error"] = str(exc)
    return out
