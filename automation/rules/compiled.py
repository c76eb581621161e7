"""A playbook's rules compiled to SQL for one moment ``now``; every rule error reported with file:line:col."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, literal, null
from sqlalchemy.sql.elements import ColumnElement

from automation.db.tables import CUSTOMER
from automation.errors import PlaybookError, Problem
from automation.playbook.models import (
    PLAYBOOK_GOAL,
    TOUCH_MODELS,
    EmailStep,
    LoadedPlaybook,
    Rule,
    SmsStep,
    TaskStep,
    WaitStep,
    WebhookStep,
)
from automation.rules.ast import RuleError
from automation.rules.compiler import Binding, Scope, compile_rule

AnyStep = EmailStep | SmsStep | WebhookStep | TaskStep | WaitStep


@dataclass(frozen=True)
class Guard:
    """A step's `when`/`unless` as one SQL condition that is true when the step may be sent."""

    condition: ColumnElement[bool]
    text: str  # what to show when it holds a message back


@dataclass(frozen=True)
class CompiledGoal:
    """A goal as one SQL condition on the customer, and whose entries it counts."""

    name: str  # ``playbook`` for the playbook's own goal, else the stage's name
    stage: str | None  # None: any enrollment of the playbook
    condition: ColumnElement[bool]
    within: timedelta
    text: str


@dataclass(frozen=True)
class CompiledPlaybook:
    loaded: LoadedPlaybook
    now: datetime
    segment: ColumnElement[Any]  # the segment name, NULL when no segment matches
    touch: ColumnElement[Any]
    stage: ColumnElement[Any]  # the stage name, NULL when no stage matches
    guards: dict[tuple[str, str, int], Guard]  # (stage or "recurring:<name>", touch or "", step index)
    recurring: dict[str, ColumnElement[bool]]
    #: The same segment and stage for scanning every customer on PostgreSQL: event tests become LEFT
    #: JOINs to the subqueries in ``scan_joins`` (see ``Scope.hoist``); use ``scan_from()`` as FROM.
    scan_segment: ColumnElement[Any] | None = None
    scan_stage: ColumnElement[Any] | None = None
    scan_joins: tuple[Any, ...] = ()
    #: The same again for scanning every customer on SQLite: event tests become ``customer.id IN
    #: (SELECT ...)``, whose set SQLite collects once into an ephemeral index (see ``Scope.events_in``).
    listed_segment: ColumnElement[Any] | None = None
    listed_stage: ColumnElement[Any] | None = None
    #: Every part of the segment, stage and recurring rules whose truth depends on ``now``
    #: (see ``automation.plan.incremental``), and a fingerprint of those rules.
    clock: tuple[Any, ...] = ()
    fingerprint: str = ""
    recurring_clock: tuple[Any, ...] = ()  # the same for the recurring rules' own conditions
    goals: tuple[CompiledGoal, ...] = ()
    goal_clock: tuple[Any, ...] = ()  # the same for the goal rules (``automation.plan.goals``)

    def scan_from(self) -> Any:
        """``customer`` LEFT JOIN each hoisted event subquery."""
        source: Any = CUSTOMER
        for sub in self.scan_joins:
            source = source.outerjoin(sub, sub.c.customer_id == CUSTOMER.c.id)
        return source

    @property
    def name(self) -> str:
        return self.loaded.playbook.name


def compile_playbook(loaded: LoadedPlaybook, now: datetime) -> CompiledPlaybook:
    """Compile every rule of ``loaded``; raise ``PlaybookError`` listing every rule that does not check."""
    pb = loaded.playbook
    problems: list[Problem] = []

    def compile_one(rule: Rule, scope: Scope) -> ColumnElement[bool]:
        try:
            return compile_rule(rule.node, scope)
        except RuleError as exc:
            problems.append(loaded.rule_problem(rule, exc.pos, exc.message))
            return literal(False)

    touch_map = {s.name: s.touch for s in pb.segments}

    clock: list[Any] = []

    def segment_and_stage(
        hoist: list[Any] | None, events_in: bool = False
    ) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
        record = clock if hoist is None and not events_in else None
        base = Scope(now=now, fallback_timezone=pb.timezone, hoist=hoist, events_in=events_in, clock=record)
        whens = [(compile_one(s.when, base), s.name) for s in pb.segments if s.when is not None]
        catch_all = next((s.name for s in pb.segments if s.when is None), None)
        default = literal(catch_all) if catch_all else null()
        segment: ColumnElement[Any] = case(*whens, else_=default) if whens else default
        touch: ColumnElement[Any] = case(touch_map, value=segment, else_=null())
        names = {"segment": Binding(segment, pb.segment_names), "touch": Binding(touch, TOUCH_MODELS)}
        staged = replace(base, names=names)
        stage_whens = [(compile_one(s.when, staged), s.name) for s in pb.stages]
        return segment, case(*stage_whens, else_=null())

    segment, stage = segment_and_stage(None)
    touch: ColumnElement[Any] = case(touch_map, value=segment, else_=null())
    with_segment_names = {
        "segment": Binding(segment, pb.segment_names),
        "touch": Binding(touch, TOUCH_MODELS),
    }
    full = Scope(
        now=now,
        fallback_timezone=pb.timezone,
        names={**with_segment_names, "stage": Binding(stage, pb.stage_names)},
    )

    guards: dict[tuple[str, str, int], Guard] = {}

    def add_guards(key: tuple[str, str], steps: list[AnyStep]) -> None:
        for index, step in enumerate(steps):
            if isinstance(step, WaitStep) or (step.when is None and step.unless is None):
                continue
            parts: list[ColumnElement[bool]] = []
            texts: list[str] = []
            if step.when is not None:
                parts.append(compile_one(step.when, full))
                texts.append(f"when {step.when.text}")
            if step.unless is not None:
                parts.append(~compile_one(step.unless, full))
                texts.append(f"unless {step.unless.text}")
            condition = parts[0] if len(parts) == 1 else parts[0] & parts[1]
            guards[(*key, index)] = Guard(condition, " and ".join(texts))

    for stage_name, by_touch in pb.programs.items():
        for touch_name, steps in by_touch.items():
            add_guards((stage_name, touch_name), list(steps))
    recurring: dict[str, ColumnElement[bool]] = {}
    recurring_clock: list[Any] = []
    recurring_scope = Scope(now=now, fallback_timezone=pb.timezone, names=full.names, clock=recurring_clock)
    for rule in pb.recurring:
        recurring[rule.name] = compile_one(rule.when, recurring_scope)
        add_guards((f"recurring:{rule.name}", ""), list(rule.steps))

    goals: list[CompiledGoal] = []
    goal_clock: list[Any] = []
    goal_scope = Scope(now=now, fallback_timezone=pb.timezone, names=full.names, clock=goal_clock)
    stage_goals: list[tuple[str, str | None, Any]] = [(name, name, goal) for name, goal in pb.goals.items()]
    for name, goal_stage, goal in [(PLAYBOOK_GOAL, None, pb.goal), *stage_goals]:
        if goal is not None:
            condition = compile_one(goal.when, goal_scope)
            goals.append(CompiledGoal(name, goal_stage, condition, goal.within, goal.when.text))

    if problems:
        raise PlaybookError(problems)
    joins: list[Any] = []
    scan_segment, scan_stage = segment_and_stage(joins)
    listed_segment, listed_stage = segment_and_stage(None, events_in=True)
    return CompiledPlaybook(
        loaded,
        now,
        segment,
        touch,
        stage,
        guards,
        recurring,
        scan_segment,
        scan_stage,
        tuple(joins),
        listed_segment,
        listed_stage,
        tuple(clock),
        rules_fingerprint(loaded),
        tuple(recurring_clock),
        tuple(goals),
        tuple(goal_clock),
    )


#: Part of every fingerprint: a change in how rules are evaluated invalidates stored state too.
RULES_VERSION = "1"


def rules_fingerprint(loaded: LoadedPlaybook) -> str:
    """A hash of what decides segment, stage and recurring rules; another value re-evaluates everyone."""
    pb = loaded.playbook
    parts: dict[str, Any] = {
        "version": RULES_VERSION,
        "timezone": pb.timezone,
        "segments": [[s.name, s.touch, s.when.text if s.when else None] for s in pb.segments],
        "stages": [[s.name, s.when.text] for s in pb.stages],
        "recurring": [[r.name, r.when.text, r.once_per] for r in pb.recurring],
    }
    if pb.goal is not None or pb.goals:
        # a new or changed goal looks at everyone once: customers who already meet it are candidates of
        # no incremental tick (the key is left out without goals, so other fingerprints stay the same)
        goals = {PLAYBOOK_GOAL: pb.goal, **pb.goals}
        parts["goals"] = {
            name: [goal.when.text, goal.within.total_seconds()] for name, goal in goals.items() if goal
        }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
