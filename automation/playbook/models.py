"""Playbooks: YAML files parsed into frozen, validated models, with file:line:column on every error.

Loading happens in three passes, each reporting every problem it finds:
1. YAML syntax (``automation.playbook.source``);
2. shape and values (pydantic models below, ``extra="forbid"``), with rule syntax parsed on the way;
3. meaning: names that refer to each other, and rules type-checked against the customer fields
   (``automation.authoring.validate`` adds the templates).

One module, although long: the models are the playbook format, and a field, its validator and its
error message read best side by side; ``automation.playbook.schema`` derives the JSON Schema from them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from automation.errors import PlaybookError, Problem
from automation.playbook.source import PosStr, Source, load
from automation.rules import ast as rule_ast
from automation.rules.ast import RuleError, format_duration, parse_duration
from automation.rules.parser import parse

TOUCH_MODELS = ("high", "low", "none")
CHANNELS = ("email", "sms", "webhook", "task")
STEP_KINDS = (*CHANNELS, "wait")
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_\-]*$"


# -- value types -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """A rule expression with its parsed tree and where it was written."""

    text: str
    node: rule_ast.Node
    line: int = 0
    column: int = 0

    def position(self, offset: int) -> tuple[int, int]:
        """File line and column of character ``offset`` of the rule (exact for one-line rules)."""
        before = self.text[:offset]
        extra_lines = before.count("\n")
        if extra_lines == 0:
            return self.line, self.column + offset
        return self.line + extra_lines, len(before) - before.rfind("\n")

    def __str__(self) -> str:
        return self.text


def _to_rule(value: Any) -> Rule:
    if isinstance(value, Rule):
        return value
    if isinstance(value, bool):
        return Rule("true" if value else "false", rule_ast.Literal(value, "bool", 0))
    if not isinstance(value, str):
        raise PydanticCustomError("rule", "expected a rule such as `orders_count >= 2`")
    try:
        node = parse(value)
    except RuleError as exc:
        raise PydanticCustomError(
            "rule_syntax", "{message}", {"message": exc.message, "offset": exc.pos}
        ) from None
    line, column = (value.line, value.column) if isinstance(value, PosStr) else (0, 0)
    return Rule(str(value), node, line, column)


RuleText = Annotated[
    Rule,
    BeforeValidator(_to_rule),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "description": "a rule expression, e.g. clv >= 1000"}),
]


def _to_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    parsed = parse_duration(str(value)) if isinstance(value, str) else None
    if parsed is None:
        raise PydanticCustomError(
            "duration", "expected a duration like 3d, 12h, 90m or 2w, got '{value}'", {"value": value}
        )
    return parsed


Duration = Annotated[
    timedelta,
    BeforeValidator(_to_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?[wdhms]$", "examples": ["3d", "12h"]}),
]

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class Schedule(Frozen):
    """``every 15 minutes`` or ``cron "*/15 * * * *"``."""

    every: timedelta | None = None
    cron: str | None = None

    def __str__(self) -> str:
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f'cron "{self.cron}"'


_EVERY = re.compile(r"^every\s+(\d+)\s*(second|minute|hour|day|week)s?$", re.I)
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def _to_schedule(value: Any) -> Schedule:
    if isinstance(value, Schedule):
        return value
    text = str(value).strip()
    match = _EVERY.match(text)
    if match:
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        if seconds <= 0:
            raise PydanticCustomError("schedule", "the interval must be positive")
        return Schedule(every=timedelta(seconds=seconds))
    duration = parse_duration(text.removeprefix("every").strip()) if text.startswith("every") else None
    if duration is not None and duration.total_seconds() > 0:
        return Schedule(every=duration)
    if text.startswith("cron"):
        expr = text.removeprefix("cron").strip().strip("\"'")
        if len(expr.split()) != 5:
            raise PydanticCustomError("schedule", 'a cron schedule has 5 fields, e.g. cron "*/15 * * * *"')
        _check_cron(expr)
        return Schedule(cron=expr)
    raise PydanticCustomError(
        "schedule", 'expected "every 15 minutes" (second/minute/hour/day/week) or cron "*/15 * * * *"'
    )


def _check_cron(expr: str) -> None:
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expr)
    except ValueError as exc:
        raise PydanticCustomError(
            "schedule", "invalid cron expression {expr!r}: {error}", {"expr": expr, "error": str(exc)}
        ) from None


ScheduleText = Annotated[
    Schedule,
    BeforeValidator(_to_schedule),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["every 15 minutes", 'cron "*/15 * * * *"']}),
]


REACT_MODES = ("immediately", "on schedule")


def _to_react(value: Any) -> str:
    """``react:`` is one of ``REACT_MODES``; anything else is an error naming the choices."""
    if isinstance(value, str) and value.strip() in REACT_MODES:
        return value.strip()
    raise PydanticCustomError(
        "react", "expected `immediately` or `on schedule`, got '{value}'", {"value": value}
    )


React = Annotated[Literal["immediately", "on schedule"], BeforeValidator(_to_react)]


class QuietHours(Frozen):
    start: time
    end: time

    def contains(self, local: time) -> bool:
        """Whether a local wall-clock time falls in the window (which may wrap midnight)."""
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def until(self, now: datetime, zone: ZoneInfo) -> datetime | None:
        """When the window ends (UTC, DST-safe wall time) if ``now`` is inside it in ``zone``, else None."""
        local = now.astimezone(zone)
        if not self.contains(local.time()):
            return None
        end_date = local.date() if local.time() < self.end else local.date() + timedelta(days=1)
        return datetime.combine(end_date, self.end, tzinfo=zone).astimezone(UTC)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_quiet_hours(value: Any) -> QuietHours:
    """``"21:00-08:00"`` -> QuietHours (raises pydantic's error type for a bad value)."""
    return _to_quiet_hours(value)


def _to_quiet_hours(value: Any) -> QuietHours:
    if isinstance(value, QuietHours):
        return value
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", str(value))
    if not match:
        raise PydanticCustomError("quiet_hours", 'expected a window like "21:00-08:00"')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise PydanticCustomError("quiet_hours", "hours go from 00 to 23 and minutes from 00 to 59")
    if (h1, m1) == (h2, m2):
        raise PydanticCustomError("quiet_hours", "the window starts and ends at the same time")
    return QuietHours(start=time(h1, m1), end=time(h2, m2))


QuietHoursText = Annotated[
    QuietHours,
    BeforeValidator(_to_quiet_hours),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": r"^\d{1,2}:\d{2}-\d{1,2}:\d{2}$", "examples": ["21:00-08:00"]}
    ),
]


class FrequencyCap(Frozen):
    count: int
    period: timedelta

    def __str__(self) -> str:
        return f"{self.count} per {format_duration(self.period)}"


def parse_frequency_cap(value: Any) -> FrequencyCap:
    """``"3 per 7d"`` -> FrequencyCap (raises pydantic's error type for a bad value)."""
    return _to_cap(value)


def _to_cap(value: Any) -> FrequencyCap:
    if isinstance(value, FrequencyCap):
        return value
    match = re.fullmatch(r"\s*(\d+)\s+per\s+(\S+)\s*", str(value))
    period = parse_duration(match.group(2)) if match else None
    if not match or period is None or period.total_seconds() <= 0:
        raise PydanticCustomError("frequency_cap", 'expected "<count> per <duration>", e.g. "3 per 7d"')
    return FrequencyCap(count=int(match.group(1)), period=period)


FrequencyCapText = Annotated[
    FrequencyCap,
    BeforeValidator(_to_cap),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+ per [0-9]+[wdhms]$", "examples": ["3 per 7d"]}),
]


class Reentry(Frozen):
    """Whether a customer who comes back to a stage starts its program again."""

    mode: Literal["never", "always", "after"]
    cooldown: timedelta | None = None

    def __str__(self) -> str:
        return f"after {format_duration(self.cooldown)}" if self.cooldown else self.mode


def _to_reentry(value: Any) -> Reentry:
    if isinstance(value, Reentry):
        return value
    text = str(value).strip()
    if text in ("never", "always"):
        return Reentry(mode=text)
    if text.startswith("after"):
        cooldown = parse_duration(text.removeprefix("after").strip())
        if cooldown is not None:
            return Reentry(mode="after", cooldown=cooldown)
    raise PydanticCustomError("reentry", 'expected never, always, or "after <duration>" such as "after 30d"')


ReentryText = Annotated[
    Reentry,
    BeforeValidator(_to_reentry),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["never", "always", "after 30d"]}),
]


def parse_share(value: Any, most: float) -> float:
    """A share written ``10%`` (or a number of percent, ``10``) as a fraction 0.1, at most ``most``;
    PydanticCustomError otherwise."""
    if isinstance(value, bool):
        raise PydanticCustomError("share", "expected a percentage such as 10%")
    text = str(value).strip().removesuffix("%").strip()
    try:
        share = float(text) / 100
    except ValueError:
        raise PydanticCustomError("share", "expected a percentage such as 10%") from None
    if not 0 <= share <= most or share != share:
        raise PydanticCustomError("share", f"expected 0% to {most * 100:g}%")
    return share


def _to_holdout(value: Any) -> float:
    return parse_share(value, 0.5)


HoldoutText = Annotated[
    float,
    BeforeValidator(_to_holdout),
    PlainSerializer(lambda share: f"{share * 100:g}%", return_type=str),
    WithJsonSchema({"type": "string", "examples": ["10%", "5%"], "description": "0% to 50%"}),
]


# -- steps -----------------------------------------------------------------------------------
class _GuardedStep(Frozen):
    when: RuleText | None = None
    unless: RuleText | None = None
    priority: int = 0


Variants = dict[Name, Annotated[int, Field(gt=0, le=1_000_000)]]


class EmailStep(_GuardedStep):
    email: Name
    variants: Variants | None = Field(
        default=None,
        description="templates to choose from, with weights; each customer gets one, always the same",
        min_length=1,
    )


class SmsStep(_GuardedStep):
    sms: Name
    variants: Variants | None = Field(
        default=None,
        description="templates to choose from, with weights; each customer gets one, always the same",
        min_length=1,
    )


class WebhookStep(_GuardedStep):
    webhook: Name
    url: str = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not (
            value.startswith(("http://", "https://")) or re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*\}.*", value)
        ):
            raise PydanticCustomError("url", "expected an http(s) URL or ${ENV_VAR} holding one")
        return value


class TaskStep(_GuardedStep):
    task: Name
    assign: str = "owner"
    due: Duration = timedelta(days=3)

    @field_validator("assign")
    @classmethod
    def _assign(cls, value: str) -> str:
        if value != "owner" and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise PydanticCustomError(
                "assign", "assign takes `owner` (the account owner) or an email address"
            )
        return value


class WaitStep(Frozen):
    wait: Duration


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kinds = [k for k in STEP_KINDS if k in value]
        return kinds[0] if len(kinds) == 1 else None
    for kind in STEP_KINDS:
        if isinstance(value, BaseModel) and hasattr(value, kind):
            return kind
    return None


Step = Annotated[
    Annotated[EmailStep, Tag("email")]
    | Annotated[SmsStep, Tag("sms")]
    | Annotated[WebhookStep, Tag("webhook")]
    | Annotated[TaskStep, Tag("task")]
    | Annotated[WaitStep, Tag("wait")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step has exactly one of: email, sms, webhook, task, wait",
    ),
]
MessageStep = EmailStep | SmsStep | WebhookStep | TaskStep


_CHANNEL_OF: dict[type, str] = {EmailStep: "email", SmsStep: "sms", WebhookStep: "webhook", TaskStep: "task"}


def step_channel(step: MessageStep) -> str:
    return _CHANNEL_OF[type(step)]


def step_template(step: MessageStep) -> str:
    return str(getattr(step, step_channel(step)))


def step_templates(step: MessageStep) -> list[str]:
    """Every template a step may send: its own, or its variants'."""
    variants = getattr(step, "variants", None)
    return list(variants) if variants else [step_template(step)]


# -- the playbook ----------------------------------------------------------------------------
class Segment(Frozen):
    name: Name
    when: RuleText | None = None
    touch: Literal["high", "low", "none"]


class Stage(Frozen):
    name: Name
    when: RuleText


class Recurring(Frozen):
    name: Name
    when: RuleText
    once_per: Literal["day", "week", "month", "year"] = "year"
    steps: list[Step] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _no_waits(cls, steps: list[Any]) -> list[Any]:
        for index, step in enumerate(steps):
            if isinstance(step, WaitStep):
                raise PydanticCustomError(
                    "recurring_wait",
                    "recurring steps are sent together; `wait` is not allowed",
                    {"index": index},  # the step to point at
                )
        return steps


Program = dict[Literal["high", "low", "none"], list[Step]]


class Tracking(Frozen):
    """Our own click and open tracking of this playbook's emails (needs ``AUTOMATION_PUBLIC_URL``)."""

    clicks: bool = Field(default=True, description="rewrite the links of emails to count clicks")
    # off by default: image proxies and privacy protection fetch the pixel without anyone reading
    opens: bool = Field(default=False, description="add a 1x1 image to count opens (unreliable)")


class Goal(Frozen):
    """What counts as success after entering a program: ``when`` true at a tick within ``within`` of entry."""

    when: RuleText
    within: Duration

    @field_validator("within")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise PydanticCustomError("duration", "within must be a positive duration such as 7d")
        return value


#: The goal name of the playbook's own goal in ``conversion`` (a stage's goal is named after its stage).
PLAYBOOK_GOAL = "playbook"


#: How a list of named things is called in messages.
_KIND_NAMES = {"segments": "segment", "stages": "stage", "recurring": "recurring rule"}


class Playbook(Frozen):
    name: Name
    description: str = ""
    schedule: ScheduleText = Schedule(every=timedelta(minutes=15))
    react: React = Field(
        default="immediately",
        description="immediately: a tick also runs within seconds of a customer write; "
        "on schedule: only on the schedule",
    )
    timezone: str = Field(default="UTC", description="time zone for customers whose own zone is unknown")
    quiet_hours: QuietHoursText | None = None
    frequency_cap: FrequencyCapText | None = None
    priority: int = 0
    hold_during_tasks: bool = Field(
        default=True,
        description="hold automated email and SMS while a high-touch task is open for the customer",
    )
    reentry: ReentryText = Reentry(mode="after", cooldown=timedelta(days=30))
    holdout: HoldoutText = Field(
        default=0.0,
        description="share of customers (0% to 50%) who get nothing from this playbook: the control group",
    )
    holdout_tasks: bool = Field(
        default=True,
        description="hold the tasks of high-touch steps back from the control group too",
    )
    tracking: Tracking = Tracking()
    segments: list[Segment] = Field(min_length=1)
    stages: list[Stage] = Field(min_length=1)
    programs: dict[Name, Program] = Field(default_factory=dict)
    recurring: list[Recurring] = Field(default_factory=list)
    goal: Goal | None = Field(
        default=None,
        description="the playbook's goal: a customer converts when `when` holds within `within` of entering",
    )
    goals: dict[Name, Goal] = Field(
        default_factory=dict, description="{stage: {when, within}}: the goal of each stage's program"
    )

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except Exception:
            raise PydanticCustomError(
                "timezone",
                "unknown time zone {value!r}; use an IANA name like Europe/Berlin",
                {"value": value},
            ) from None
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Playbook:
        repeats = []  # (list field, index of the repeat, index of the first), reported one by one
        for kind, names in (
            ("segments", [s.name for s in self.segments]),
            ("stages", [s.name for s in self.stages]),
            ("recurring", [r.name for r in self.recurring]),
        ):
            first: dict[str, int] = {}
            for index, name in enumerate(names):
                if name in first:
                    repeats.append((kind, index, first[name]))
                else:
                    first[name] = index
        if repeats:
            field, _index, _first = repeats[0]
            names = sorted({str(getattr(self, f)[i].name) for f, i, _ in repeats if f == field})
            raise PydanticCustomError(
                "duplicate",
                "{kind} names must be unique: {names}",
                {"kind": _KIND_NAMES[field], "names": ", ".join(names), "repeats": repeats},
            )
        return self

    @property
    def segment_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def touch_of(self, segment: str) -> str:
        return next(s.touch for s in self.segments if s.name == segment)

    def program(
        self, stage: str, touch: str
    ) -> list[EmailStep | SmsStep | WebhookStep | TaskStep | WaitStep]:
        return list(self.programs.get(stage, {}).get(touch, []))  # type: ignore[call-overload]


@dataclass(frozen=True)
class LoadedPlaybook:
    """A validated playbook and the file it came from (for error positions)."""

    playbook: Playbook
    source: Source

    @property
    def path(self) -> Path:
        return self.source.path

    def rule_problem(self, rule: Rule, offset: int, message: str) -> Problem:
        line, column = rule.position(offset)
        return self.source.problem(line, column, message)


# -- loading -----------------------------------------------------------------------------------
def load_playbook(path: Path) -> LoadedPlaybook:
    """Parse and check the shape of one playbook file (no templates, no rule types: see ``validation``)."""
    source = load(path)
    if not isinstance(source.data, dict):
        raise PlaybookError(
            [source.problem(1, 1, "a playbook is a mapping with at least name, segments and stages")]
        )
    try:
        playbook = Playbook.model_validate(source.data)
    except ValidationError as exc:
        raise PlaybookError(_problems(source, exc)) from None
    loaded = LoadedPlaybook(playbook, source)
    problems = _references(loaded)
    if problems:
        raise PlaybookError(problems)
    return loaded


def _problems(source: Source, error: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[int, int, str]] = set()
    for item in error.errors():
        loc = _without_tags(item["loc"])
        kind = item["type"]
        ctx = item.get("ctx") or {}
        if kind == "extra_forbidden":
            line, column = source.key_position(loc)
            key = str(loc[-1])
            known = _known_fields(source, loc)
            guess = difflib.get_close_matches(key, known, n=1)
            hint = (
                f" (did you mean {guess[0]!r}?)"
                if guess
                else (f"; known fields: {', '.join(known)}" if known else "")
            )
            message = f"unknown field {key!r}{hint}"
        elif kind == "missing":
            line, column, _ = source.locate(loc[:-1])
            message = f"missing required field {loc[-1]!r}" + _where(loc[:-1])
        elif kind == "duplicate":
            for field, index, earlier in ctx.get("repeats", ()):
                name_loc = [field, index, "name"]
                line, column, _ = source.locate(name_loc)
                first_line = source.locate([field, earlier, "name"])[0]
                message = (
                    f"{_KIND_NAMES[field]} names must be unique: {_value_at(source, name_loc)} "
                    f"(first defined at line {first_line})"
                )
                if (line, column, message) not in seen:
                    seen.add((line, column, message))
                    problems.append(source.problem(line, column, message))
            continue
        elif kind == "recurring_wait":
            line, column, _ = source.locate([*loc, int(ctx.get("index", 0))])
            message = _message(item["msg"], loc)
        elif kind == "rule_syntax":
            line, column, _ = source.locate(loc)
            value = _value_at(source, loc)
            if isinstance(value, PosStr):
                rule = Rule(str(value), rule_ast.Literal(None, "null", 0), value.line, value.column)
                line, column = rule.position(int(ctx.get("offset", 0)))
            message = f"invalid rule: {ctx.get('message', item['msg'])}"
        else:
            line, column, _ = source.locate(loc)
            message = _message(item["msg"], loc)
        marker = (line, column, message)
        if marker not in seen:
            seen.add(marker)
            problems.append(source.problem(line, column, message))
    return problems


def _without_tags(loc: Sequence[int | str]) -> list[int | str]:
    """Drop the step-kind tag pydantic puts right after a step's list index."""
    out: list[int | str] = []
    for i, part in enumerate(loc):
        if i > 0 and isinstance(loc[i - 1], int) and part in STEP_KINDS and i + 1 < len(loc):
            continue
        out.append(part)
    return out


def _known_fields(source: Source, loc: Sequence[int | str]) -> list[str]:
    """The fields allowed where an unknown one was found (for "did you mean")."""
    model = _model_at(loc[:-1], source)
    return sorted(model.model_fields) if model else []


def _model_at(loc: Sequence[int | str], source: Source) -> type[BaseModel] | None:
    path = [p for p in loc if not isinstance(p, int)]
    if not path:
        return Playbook
    head = path[0]
    if head == "segments":
        return Segment
    if head == "stages":
        return Stage
    if head == "tracking":
        return Tracking
    if head == "goal" or (head == "goals" and len(path) > 1):
        return Goal
    if head == "recurring":
        if len(path) == 1:
            return Recurring
        value = _value_at(source, loc)
        return _STEP_MODELS.get(_step_kind(value) or "")
    if head == "programs":
        value = _value_at(source, loc)
        return _STEP_MODELS.get(_step_kind(value) or "")
    return None


_STEP_MODELS: dict[str, type[BaseModel]] = {
    "email": EmailStep,
    "sms": SmsStep,
    "webhook": WebhookStep,
    "task": TaskStep,
    "wait": WaitStep,
}


def _value_at(source: Source, loc: Sequence[int | str]) -> Any:
    node = source.data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
    return node


def _where(loc: Sequence[int | str]) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p + 1}]" for p in loc]
    return f" in {'.'.join(parts).replace('.[', '[')}" if parts else ""


def _message(msg: str, loc: Sequence[int | str]) -> str:
    msg = msg.removeprefix("Value error, ")
    field = str(loc[-1]) if loc and not isinstance(loc[-1], int) else None
    if msg.startswith("String should match pattern"):
        msg = "names start with a letter and use letters, digits, _ and -"
    if msg.startswith("Input should be 'high', 'low' or 'none'"):
        msg = "touch must be one of: high, low, none"
    return f"{field}: {msg}" if field else msg


def _references(loaded: LoadedPlaybook) -> list[Problem]:
    """Names that must refer to each other: programs to stages, catch-all segments last."""
    pb, source, problems = loaded.playbook, loaded.source, []
    for stage in pb.programs:
        if stage not in pb.stage_names:
            line, column = source.key_position(["programs", stage])
            guess = difflib.get_close_matches(stage, pb.stage_names, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else f"; stages are: {', '.join(pb.stage_names)}"
            problems.append(source.problem(line, column, f"program for unknown stage {stage!r}{hint}"))
    for stage in pb.goals:
        line, column = source.key_position(["goals", stage])
        if stage == PLAYBOOK_GOAL:
            problems.append(
                source.problem(
                    line,
                    column,
                    f"a stage named {PLAYBOOK_GOAL!r} cannot have a goal: conversions record the "
                    f"playbook's own goal (`goal:`) under that name",
                )
            )
        elif stage not in pb.stage_names:
            guess = difflib.get_close_matches(stage, pb.stage_names, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else f"; stages are: {', '.join(pb.stage_names)}"
            problems.append(source.problem(line, column, f"goal for unknown stage {stage!r}{hint}"))
    for index, segment in enumerate(pb.segments[:-1]):
        if segment.when is None:
            line, column, _ = source.locate(["segments", index, "name"])
            following = pb.segments[index + 1]
            at = source.locate(["segments", index + 1, "name"])[0]
            problems.append(
                source.problem(
                    line,
                    column,
                    f"catch-all segment {segment.name!r} is not last: it has no `when` and takes everyone "
                    f"left, so segment {following.name!r} (line {at}) can never match; move it last",
                )
            )
            break
    return problems


def discover(paths: Sequence[Path]) -> list[Path]:
    """Playbook files named by ``paths`` (folders are searched for *.yaml / *.yml, tests excluded)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix in (".yaml", ".yml") and not p.name.endswith((".test.yaml", ".test.yml"))
                )
            )
        else:
            found.append(path)
    return found
