"""``automation test``: run a playbook against declared customers on a simulated clock and check the journey.

A test file (``*.test.yaml``, next to the playbooks) names a playbook, a start time, customers, events
and checkpoints. It runs in a throwaway SQLite database through the worker's own path (``Daemon.tick_all``
and ``Daemon.drain`` with an injected clock), with channels that only record what they are given, ticking
and draining every ``step`` (default 1h) and at every checkpoint. A checkpoint compares the customer's
stored segment and stage, and the messages sent since the customer's previous checkpoint.

    playbook: lifecycle.yaml            # relative to the test file
    start: 2026-03-02T10:00:00Z
    step: 1h                            # optional: tick at least this often (and whenever something is due)
    customers:
      - id: ada
        orders_count: 0
        signed_up_at: -1h               # relative to start: +/- <number><w|d|h|m|s>
    events:
      - {customer: ada, name: activated, at: +2d}
    changes:                            # optional: customer fields set at a time
      - {customer: ada, at: +5d, set: {orders_count: 1}}
    expect:
      - at: +0h
        customer: ada
        segment: self_serve
        stage: acquisition
        sent: [{channel: email, template: welcome}]     # exactly these (in any order)
        not_sent: [{channel: email, template: getting_started}]
      - at: +7d
        customer: ada
        cohort: treatment               # of the customer's last entry: treatment, holdout or control
        converted: [playbook, {goal: acquisition, template: getting_started}]   # goals reached so far

One module, although long: reading a test file, running its simulated clock and comparing checkpoints
share the test's own types, and the file format is documented here in one place.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update

from automation.channels.base import Delivery, DeliveryResult
from automation.config import Settings
from automation.db.connect import make_engine, upgrade
from automation.db.tables import CONVERSION, CUSTOMER, ENROLLMENT, EVENT, OUTBOX, STATE
from automation.errors import PlaybookError, Problem
from automation.outbox.dispatch import DispatchConfig
from automation.playbook.models import CHANNELS
from automation.playbook.source import Source, load
from automation.rules.ast import format_duration, parse_duration
from automation.worker.daemon import Daemon

TIME_FIELDS = ("signed_up_at", "last_order_at", "last_seen_at", "updated_at")
CUSTOMER_FIELDS = tuple(c.name for c in CUSTOMER.columns)
TOP_KEYS = ("playbook", "start", "step", "customers", "events", "changes", "expect")
CHECKPOINT_KEYS = ("at", "customer", "segment", "stage", "sent", "not_sent", "converted", "cohort")
COHORTS = ("treatment", "holdout", "control")
MAX_TICKS = 20_000


@dataclass(frozen=True)
class Message:
    channel: str
    template: str

    def __str__(self) -> str:
        return f"{self.channel} {self.template}"


@dataclass(frozen=True)
class Converted:
    """A goal reached; with ``check_template``, also the template of the message it is attributed to."""

    goal: str
    template: str | None = None
    check_template: bool = False

    def __str__(self) -> str:
        if not self.check_template:
            return self.goal
        return f"{self.goal} (after {self.template})" if self.template else f"{self.goal} (after nothing)"


@dataclass(frozen=True)
class Checkpoint:
    line: int
    at: datetime
    offset: str  # as written, e.g. "+3d"
    customer: str
    segment: str | None = None
    stage: str | None = None
    check_segment: bool = False
    check_stage: bool = False
    sent: tuple[Message, ...] | None = None
    not_sent: tuple[Message, ...] = ()
    converted: tuple[Converted, ...] | None = None
    cohort: str | None = None


@dataclass(frozen=True)
class Change:
    customer: str
    at: datetime
    values: dict[str, Any]


@dataclass
class PlaybookTest:
    path: Path
    playbook: Path
    start: datetime
    step: timedelta
    customers: list[dict[str, Any]]
    events: list[dict[str, Any]]
    changes: list[Change]
    checkpoints: list[Checkpoint]


@dataclass
class TestResult:
    path: Path
    checkpoints: int
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


# -- loading ----------------------------------------------------------------------------------------
def discover_tests(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.name.endswith((".test.yaml", ".test.yml"))))
        else:
            found.append(path)
    return found


class _Reader:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def error(self, loc: list[int | str], message: str) -> None:
        line, column, _ = self.source.locate(loc)
        self.problems.append(self.source.problem(line, column, message))

    def time(self, value: Any, loc: list[int | str], start: datetime | None) -> datetime | None:
        """An ISO time, or (with ``start``) a relative one such as ``-2d`` or ``+3h``."""
        if isinstance(value, datetime):  # YAML's own timestamp type: a plain datetime from here on
            plain = datetime(*value.timetuple()[:6], value.microsecond, tzinfo=value.tzinfo)
            return plain if plain.tzinfo else plain.replace(tzinfo=UTC)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        text = str(value).strip() if value is not None else ""
        if start is not None:
            relative = _relative(text)
            if relative is not None:
                return start + relative
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            hint = " or a time relative to start such as +3d, -2h, +90m" if start is not None else ""
            self.error(loc, f"{text!r} is not a time; write an ISO 8601 time (2026-03-02T10:00:00Z){hint}")
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    def mapping(self, value: Any, loc: list[int | str], what: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.error(loc, f"{what} is a mapping (key: value)")
            return None
        return value

    def unknown_keys(self, item: dict[str, Any], loc: list[int | str], allowed: Sequence[str]) -> None:
        for key in item:
            if key not in allowed:
                line, column = self.source.key_position([*loc, key])
                self.problems.append(
                    self.source.problem(
                        line, column, f"unknown key {key!r}; expected one of {', '.join(allowed)}"
                    )
                )


def _relative(text: str) -> timedelta | None:
    """``+3d`` / ``-2h`` / ``0`` -> a signed duration; None if not relative."""
    if text in ("0", "+0", "-0"):
        return timedelta(0)
    sign = -1 if text.startswith("-") else 1
    body = text[1:] if text[:1] in "+-" else text
    if not body or not body[0].isdigit():
        return None
    duration = parse_duration(body)
    return None if duration is None else sign * duration


def load_test(path: Path) -> PlaybookTest:
    """Read and check a test file; raise ``PlaybookError`` (exit 2) with file:line for each problem."""
    source = load(path)
    r = _Reader(source)
    data = source.data
    if not isinstance(data, dict):
        raise PlaybookError(
            [source.problem(1, 1, "a test file is a mapping with playbook, start, customers and expect")]
        )
    r.unknown_keys(data, [], TOP_KEYS)
    for key in ("playbook", "start", "customers", "expect"):
        if key not in data:
            r.problems.append(source.problem(1, 1, f"missing `{key}:`; see `automation test --help`"))
    playbook = path.parent / str(data.get("playbook", ""))
    if "playbook" in data and not playbook.is_file():
        r.error(["playbook"], f"playbook {str(data['playbook'])!r} not found (relative to {path.parent})")
    start = r.time(data["start"], ["start"], None) if "start" in data else None
    step = timedelta(hours=1)
    if "step" in data:
        parsed = parse_duration(str(data["step"]))
        if parsed is None or parsed <= timedelta(0):
            r.error(["step"], f"step {data['step']!r} is not a duration such as 1h or 30m")
        else:
            step = parsed
    base = start or datetime(2000, 1, 1, tzinfo=UTC)

    customers: list[dict[str, Any]] = []
    ids: set[str] = set()
    raw_customers = data.get("customers") or []
    if not isinstance(raw_customers, list):
        r.error(["customers"], "customers is a list of customers (- id: ...)")
        raw_customers = []
    for i, raw in enumerate(raw_customers):
        item = r.mapping(raw, ["customers", i], "a customer")
        if item is None:
            continue
        row = _customer_row(r, item, ["customers", i], base)
        if "id" not in item:
            r.error(["customers", i], "a customer needs an `id`")
        elif row["id"] in ids:
            r.error(["customers", i, "id"], f"customer id {row['id']!r} is used twice")
        else:
            ids.add(row["id"])
            customers.append(row)

    events: list[dict[str, Any]] = []
    raw_events = data.get("events") or []
    for i, raw in enumerate(raw_events if isinstance(raw_events, list) else []):
        item = r.mapping(raw, ["events", i], "an event")
        if item is None:
            continue
        r.unknown_keys(item, ["events", i], ("customer", "name", "at", "properties"))
        missing = [k for k in ("customer", "name", "at") if k not in item]
        if missing:
            r.error(["events", i], f"an event needs {', '.join(missing)} (customer, name, at)")
            continue
        if str(item["customer"]) not in ids:
            r.error(
                ["events", i, "customer"], f"unknown customer {str(item['customer'])!r}; declare it first"
            )
        at = r.time(item["at"], ["events", i, "at"], base)
        if at is not None:
            events.append(
                {
                    "customer_id": str(item["customer"]),
                    "name": str(item["name"]),
                    "occurred_at": at,
                    "properties": dict(item.get("properties") or {}),
                }
            )

    changes: list[Change] = []
    raw_changes = data.get("changes") or []
    for i, raw in enumerate(raw_changes if isinstance(raw_changes, list) else []):
        item = r.mapping(raw, ["changes", i], "a change")
        if item is None:
            continue
        r.unknown_keys(item, ["changes", i], ("customer", "at", "set"))
        if not all(k in item for k in ("customer", "at", "set")) or not isinstance(item["set"], dict):
            r.error(["changes", i], "a change needs customer, at and set: {field: value}")
            continue
        if str(item["customer"]) not in ids:
            r.error(["changes", i, "customer"], f"unknown customer {str(item['customer'])!r}")
        at = r.time(item["at"], ["changes", i, "at"], base)
        values = _customer_row(r, item["set"], ["changes", i, "set"], base, partial=True)
        if at is not None:
            changes.append(Change(str(item["customer"]), at, values))

    checkpoints: list[Checkpoint] = []
    raw_expect = data.get("expect") or []
    if not isinstance(raw_expect, list):
        r.error(["expect"], "expect is a list of checkpoints (- at: +1d ...)")
        raw_expect = []
    for i, raw in enumerate(raw_expect):
        loc: list[int | str] = ["expect", i]
        item = r.mapping(raw, loc, "a checkpoint")
        if item is None:
            continue
        r.unknown_keys(item, loc, CHECKPOINT_KEYS)
        line = source.locate(loc)[0]
        if "at" not in item or "customer" not in item:
            r.error(loc, "a checkpoint needs `at` (e.g. +3d) and `customer`")
            continue
        if str(item["customer"]) not in ids:
            r.error(
                [*loc, "customer"], f"unknown customer {str(item['customer'])!r}; declare it under customers"
            )
        at = r.time(item["at"], [*loc, "at"], base)
        if at is not None and start is not None and at < start:
            r.error([*loc, "at"], "a checkpoint cannot be before start")
        if not any(k in item for k in CHECKPOINT_KEYS[2:]):
            r.error(loc, f"a checkpoint checks at least one of {', '.join(CHECKPOINT_KEYS[2:])}")
        converted = _converted(r, item["converted"], [*loc, "converted"]) if "converted" in item else None
        cohort = str(item["cohort"]) if "cohort" in item else None
        if cohort is not None and cohort not in COHORTS:
            r.error([*loc, "cohort"], f"unknown cohort {cohort!r}; one of {', '.join(COHORTS)}")
        sent = _messages(r, item["sent"], [*loc, "sent"]) if "sent" in item else None
        not_sent = _messages(r, item["not_sent"], [*loc, "not_sent"]) if "not_sent" in item else ()
        if at is not None:
            checkpoints.append(
                Checkpoint(
                    line=line,
                    at=at,
                    offset=str(item["at"]),
                    customer=str(item["customer"]),
                    segment=_opt(item.get("segment")),
                    stage=_opt(item.get("stage")),
                    check_segment="segment" in item,
                    check_stage="stage" in item,
                    sent=sent,
                    not_sent=not_sent or (),
                    converted=converted,
                    cohort=cohort,
                )
            )
    if r.problems:
        raise PlaybookError(r.problems)
    assert start is not None
    return PlaybookTest(path, playbook, start, step, customers, events, changes, checkpoints)


def _opt(value: Any) -> str | None:
    return None if value is None or str(value) in ("", "none", "(none)") else str(value)


def _messages(r: _Reader, value: Any, loc: list[int | str]) -> tuple[Message, ...]:
    if not isinstance(value, list):
        r.error(loc, "a list of messages: [{channel: email, template: welcome}] ([] for none)")
        return ()
    out: list[Message] = []
    for i, raw in enumerate(value):
        if not isinstance(raw, dict) or "channel" not in raw or "template" not in raw:
            r.error([*loc, i], "a message is {channel: email|sms|webhook|task, template: <name>}")
            continue
        r.unknown_keys(raw, [*loc, i], ("channel", "template"))
        if str(raw["channel"]) not in CHANNELS:
            r.error(
                [*loc, i, "channel"], f"unknown channel {str(raw['channel'])!r}; one of {', '.join(CHANNELS)}"
            )
        out.append(Message(str(raw["channel"]), str(raw["template"])))
    return tuple(out)


def _converted(r: _Reader, value: Any, loc: list[int | str]) -> tuple[Converted, ...]:
    if not isinstance(value, list):
        r.error(loc, "a list of goals: [playbook, {goal: <stage>, template: <name>}] ([] for none)")
        return ()
    out: list[Converted] = []
    for i, raw in enumerate(value):
        if isinstance(raw, str):
            out.append(Converted(raw))
        elif isinstance(raw, dict) and "goal" in raw:
            r.unknown_keys(raw, [*loc, i], ("goal", "template"))
            template = None if raw.get("template") is None else str(raw["template"])
            out.append(Converted(str(raw["goal"]), template, "template" in raw))
        else:
            r.error([*loc, i], "a goal is its name (playbook or a stage) or {goal: <name>, template: <name>}")
    return tuple(out)


def _customer_row(
    r: _Reader, item: dict[str, Any], loc: list[int | str], start: datetime, partial: bool = False
) -> dict[str, Any]:
    row: dict[str, Any] = {} if partial else {"timezone": "UTC", "attributes": {}, "updated_at": start}
    for key, value in item.items():
        if key not in CUSTOMER_FIELDS:
            line, column = r.source.key_position([*loc, key])
            r.problems.append(
                r.source.problem(
                    line, column, f"unknown customer field {key!r}; fields: {', '.join(CUSTOMER_FIELDS)}"
                )
            )
            continue
        if value is None:
            row[key] = None
        elif key in TIME_FIELDS:
            row[key] = r.time(value, [*loc, key], start)
        elif key == "birthday":
            if isinstance(value, date):
                row[key] = value
            else:
                try:
                    row[key] = date.fromisoformat(str(value))
                except ValueError:
                    r.error([*loc, key], f"birthday {str(value)!r} is not a date such as 1990-03-02")
        elif key in ("clv",):
            row[key] = float(value)
        elif key in ("orders_count", "nps"):
            row[key] = int(value)
        elif key == "attributes":
            row[key] = dict(value)
        else:
            row[key] = str(value)
    if "id" in row:
        row["id"] = str(row["id"])
    return row


# -- running -------------------------------------------------------------------------------------------
class RecordingChannel:
    """A channel that keeps what it is given (and sends nothing anywhere)."""

    def __init__(self, name: str, clock: list[datetime]) -> None:
        self.name = name
        self.clock = clock
        self.sent: list[tuple[datetime, str, Message]] = []

    async def send(self, delivery: Delivery) -> DeliveryResult:
        template = str(delivery.metadata.get("template", ""))
        self.sent.append((self.clock[0], delivery.customer_id, Message(self.name, template)))
        return DeliveryResult(provider_id=f"test-{delivery.message_id}")

    async def aclose(self) -> None:
        return None


def run_test(test: PlaybookTest, templates_dir: Path) -> TestResult:
    """Run one test in a throwaway SQLite database; checkpoints that do not hold become failures."""
    with tempfile.TemporaryDirectory(prefix="automation-test-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'test.db'}")
        try:
            return _run(test, engine, templates_dir)
        finally:
            engine.dispose()


def _run(test: PlaybookTest, engine: Any, templates_dir: Path) -> TestResult:
    upgrade(engine)
    with engine.begin() as conn:
        keys = {key for row in test.customers for key in row}
        defaults = {c.name: _default(c) for c in CUSTOMER.columns}
        rows = [{key: row.get(key, defaults[key]) for key in keys} for row in test.customers]
        if rows:  # one shape for every row: an executemany takes its columns from the first
            conn.execute(insert(CUSTOMER), rows)
        if test.events:
            conn.execute(insert(EVENT), test.events)
    clock = [test.start]
    channels = {name: RecordingChannel(name, clock) for name in CHANNELS}
    try:  # only to find the ${VAR}s it names; loading it below reports what is wrong with it
        text = test.playbook.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    environ = dict(os.environ)
    for name in re.findall(r"\$\{(\w+)\}", text):
        environ.setdefault(name, f"http://127.0.0.1/{name.lower()}")
    settings = Settings(templates_dir=templates_dir, environ=environ)
    daemon = Daemon(
        engine,
        settings,
        channels,  # type: ignore[arg-type]
        [test.playbook],
        DispatchConfig(worker_id="automation-test"),
    )
    loaded = daemon.load()
    name = loaded.playbooks[0].name

    checkpoints = sorted(test.checkpoints, key=lambda c: (c.at, c.line))
    end = checkpoints[-1].at if checkpoints else test.start
    fixed = {c.at for c in checkpoints} | {c.at for c in test.changes if test.start <= c.at <= end}
    t = test.start
    while t <= end:
        fixed.add(t)
        t += test.step
    grid = sorted(fixed)
    pending = sorted(test.changes, key=lambda c: c.at)
    last_seen: dict[str, datetime] = {}
    result = TestResult(test.path, len(checkpoints))
    cursor = 0
    ticks = 0
    now: datetime | None = test.start
    while now is not None and now <= end:
        ticks += 1
        if ticks > MAX_TICKS:
            raise PlaybookError(
                [Problem(test.path, 0, 0, f"more than {MAX_TICKS:,} ticks to simulate; use a larger `step`")]
            )
        clock[0] = now
        with engine.begin() as conn:
            while pending and pending[0].at <= now:
                change = pending.pop(0)
                conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == change.customer).values(**change.values))
        daemon.tick_all(now)
        asyncio.run(daemon.drain(lambda: clock[0]))
        while cursor < len(checkpoints) and checkpoints[cursor].at == now:
            cp = checkpoints[cursor]
            cursor += 1
            since = last_seen.get(cp.customer)
            last_seen[cp.customer] = now
            sent = [
                m
                for ch in channels.values()
                for when, cid, m in ch.sent
                if cid == cp.customer and (since is None or when > since)
            ]
            with engine.connect() as conn:
                state = conn.execute(
                    select(STATE.c.segment, STATE.c.stage).where(
                        STATE.c.playbook == name, STATE.c.customer_id == cp.customer
                    )
                ).first()
            segment, stage = (state.segment, state.stage) if state is not None else (None, None)
            problems = _compare(cp, segment, stage, sent)
            problems += _compare_goals(cp, *_goals(engine, name, cp.customer))
            if problems:
                result.failures.append(_failure(test, cp, since, problems))
        now = _next_moment(engine, now, grid)
    return result


def _next_moment(engine: Any, now: datetime, grid: list[datetime]) -> datetime | None:
    """The next grid point, or earlier when a program step or a deferred message comes due before it."""
    later = [t for t in grid if t > now]
    candidates = later[:1]
    with engine.connect() as conn:
        step_due = conn.execute(
            select(func.min(ENROLLMENT.c.next_step_at)).where(
                ENROLLMENT.c.status == "active", ENROLLMENT.c.next_step_at > now
            )
        ).scalar()
        message_due = conn.execute(
            select(func.min(OUTBOX.c.due_at)).where(
                OUTBOX.c.status.in_(("pending", "retry")), OUTBOX.c.due_at > now
            )
        ).scalar()
    candidates += [_aware(t) for t in (step_due, message_due) if t is not None]
    return min(candidates) if candidates else None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _default(column: Any) -> Any:
    arg = column.default.arg if column.default is not None else None
    return None if callable(arg) else arg


def _compare(cp: Checkpoint, segment: str | None, stage: str | None, sent: list[Message]) -> list[str]:
    out: list[str] = []
    if cp.check_segment and cp.segment != segment:
        out.append(f"segment: expected {cp.segment or '(none)'}, got {segment or '(none)'}")
    if cp.check_stage and cp.stage != stage:
        out.append(f"stage:   expected {cp.stage or '(none)'}, got {stage or '(none)'}")
    got = Counter(sent)
    if cp.sent is not None:
        want = Counter(cp.sent)
        if want != got:
            out.append(f"sent:    expected {_list(cp.sent)}")
            out.append(f"         got      {_list(sent)}")
            missing, extra = want - got, got - want
            if missing:
                out.append(f"         - missing:    {_list(list(missing.elements()))}")
            if extra:
                out.append(f"         + unexpected: {_list(list(extra.elements()))}")
    for message in cp.not_sent:
        if got[message]:
            out.append(f"not_sent: {message} was sent")
    return out


def _goals(engine: Any, playbook: str, customer: str) -> tuple[list[tuple[str, str | None]], str | None]:
    """The customer's conversions in ``playbook`` (goal, attributed template) and last entry's cohort."""
    with engine.connect() as conn:
        converted = conn.execute(
            select(CONVERSION.c.goal, CONVERSION.c.template)
            .where(CONVERSION.c.playbook == playbook, CONVERSION.c.customer_id == customer)
            .order_by(CONVERSION.c.converted_at, CONVERSION.c.id)
        ).all()
        cohort = conn.execute(
            select(ENROLLMENT.c.cohort)
            .where(ENROLLMENT.c.playbook == playbook, ENROLLMENT.c.customer_id == customer)
            .order_by(ENROLLMENT.c.started_at.desc(), ENROLLMENT.c.id.desc())
            .limit(1)
        ).scalar()
    return [(goal, template) for goal, template in converted], cohort


def _compare_goals(cp: Checkpoint, converted: list[tuple[str, str | None]], cohort: str | None) -> list[str]:
    out: list[str] = []
    if cp.cohort is not None and cp.cohort != cohort:
        out.append(f"cohort:  expected {cp.cohort}, got {cohort or '(never entered a program)'}")
    if cp.converted is not None:
        got = [Converted(goal, template, True) for goal, template in converted]
        want = Counter(c.goal for c in cp.converted)
        if want != Counter(c.goal for c in got):
            out.append(f"converted: expected {_goal_list(cp.converted)}, got {_goal_list(got)}")
        else:
            for expected in cp.converted:
                templates = [c.template for c in got if c.goal == expected.goal]
                if expected.check_template and expected.template not in templates:
                    attributed = ", ".join(t or "nothing" for t in templates)
                    out.append(
                        f"converted: {expected.goal} expected after {expected.template or 'nothing'}, "
                        f"got after {attributed}"
                    )
    return out


def _goal_list(goals: Sequence[Converted]) -> str:
    return "[" + ", ".join(c.goal for c in goals) + "]" if goals else "[] (none)"


def _list(messages: Sequence[Message]) -> str:
    return "[" + ", ".join(str(m) for m in messages) + "]" if messages else "[] (nothing)"


def _when(test: PlaybookTest, at: datetime) -> str:
    offset = at - test.start
    sign = "-" if offset < timedelta(0) else "+"
    return f"{sign}{format_duration(abs(offset))} ({at.astimezone(UTC):%Y-%m-%d %H:%M} UTC)"


def _failure(test: PlaybookTest, cp: Checkpoint, since: datetime | None, problems: list[str]) -> str:
    window = f"since {_when(test, since)}" if since is not None else "since start"
    head = f"{test.path}:{cp.line}: at {_when(test, cp.at)}, customer {cp.customer} (messages {window}):"
    return "\n".join([head, *(f"    {p}" for p in problems)])


def run_tests(paths: Sequence[Path], templates_dir: Path) -> list[TestResult]:
    """Load every test first (any malformed file: ``PlaybookError``), then run them."""
    files = discover_tests(paths)
    if not files:
        where = ", ".join(str(p) for p in paths)
        raise PlaybookError([Problem(where, 0, 0, "no playbook tests found (*.test.yaml)")])
    tests: list[PlaybookTest] = []
    problems: list[Problem] = []
    for path in files:
        try:
            tests.append(load_test(path))
        except PlaybookError as exc:
            problems.extend(exc.problems)
    if problems:
        raise PlaybookError(problems)
    return [run_test(test, templates_dir) for test in tests]
