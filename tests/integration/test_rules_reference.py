"""The SQL the rule compiler produces selects exactly the customers the Python reference selects.

Random data sets and random rule texts (hypothesis) run on SQLite and on PostgreSQL; a few
hand-written cases pin the boundaries (whole days, event windows, 29 February, time zones around
midnight) with explicit expected ids, checked against both the database and the reference.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import DBAPIError

from automation.db.tables import CUSTOMER, EVENT
from automation.rules import ast
from automation.rules.compiler import Scope, compile_rule
from automation.rules.parser import parse
from tests.reference import evaluate, matching_ids

ZONES = [
    "UTC",
    "Pacific/Kiritimati",  # UTC+14
    "Pacific/Pago_Pago",  # UTC-11
    "Asia/Kolkata",  # UTC+5:30
    "America/St_Johns",  # UTC-3:30 / -2:30
    "Europe/Berlin",
    "America/Los_Angeles",
    "Etc/GMT+12",  # UTC-12
    "Mars/Olympus",  # unknown: the fallback zone applies
]
FALLBACK_ZONES = ["UTC", "Pacific/Kiritimati", "Asia/Kolkata", "America/St_Johns"]

# -- data --------------------------------------------------------------------------------------------

BASE_DAYS = [
    date(2026, 6, 15),
    date(2026, 1, 1),
    date(2026, 12, 31),
    date(2027, 2, 28),
    date(2027, 3, 1),
    date(2028, 2, 28),
    date(2028, 2, 29),
    date(2028, 3, 1),
]
# UTC seconds of the day around local midnights: Kiritimati 10:00, Pago Pago 11:00, Kolkata 18:30,
# St John's 03:30 (winter) / 02:30 (summer), GMT+12 12:00
MIDNIGHTS = [36000, 39600, 66600, 12600, 9000, 43200]
INTERESTING_SECONDS = [0, 1, 86399, *(m + d for m in MIDNIGHTS for d in (-1, 0, 1))]
DAY_EDGES = [k * 86400 + d for k in (-31, -30, -29, -1, 0, 1, 29, 30, 31) for d in (-1, 0, 1)]
EVENT_OFFSETS = [
    0,
    1,
    -1,
    *(
        -s + d
        for s in (86400, 3 * 86400, 129600, 43200, 5400, 7 * 86400, 14 * 86400, 30 * 86400)
        for d in (-1, 0, 1)
    ),
]

PLANS = [None, "free", "pro", "Pro", "enterprise", "", "m"]
EMAILS = [None, "a@x.com", "B@y.org", "zed@z.net", "m"]
FIRST_NAMES = [None, "Ann", "bob", "Zoe", ""]
LOCALES = [None, "en", "de-DE"]
CLVS = [None, -5, 0, 0.5, 2.5, 3, 10, 99.5, 10000]
JSON_SCALARS: list[Any] = [None, True, False, 0, 1, 2.5, 3.0, -3, 10000, "gold", "silver", "1", "", "Gold"]
EVENT_NAMES = ["activated", "login", "purchase"]


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.sampled_from(JSON_SCALARS)
    return st.one_of(
        scalars,
        st.lists(scalars, max_size=2),
        st.fixed_dictionaries({}, optional={"level": scalars}),
    )


def attribute_dicts() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "score": json_values(),
            "tier": json_values(),
            "flag": json_values(),
            "meta": json_values(),
        },
    )


def _safe_date(year: int, month: int, day: int) -> date:
    if month == 2 and day == 29 and not calendar.isleap(year):
        year = 1992
    return date(year, month, day)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    day = draw(st.one_of(st.sampled_from(BASE_DAYS), st.dates(date(2025, 1, 1), date(2029, 12, 31))))
    seconds = draw(st.one_of(st.sampled_from(INTERESTING_SECONDS), st.integers(0, 86399)))
    now = datetime.combine(day, time(), UTC) + timedelta(seconds=seconds)
    fallback = draw(st.sampled_from(FALLBACK_ZONES))

    offsets = st.one_of(st.sampled_from(DAY_EDGES), st.integers(-400 * 86400, 400 * 86400))
    local_days = sorted({now.astimezone(ZoneInfo(z)).date() for z in ZONES[:-1]} | {now.date()})
    month_days = [(d.month, d.day) for d in local_days] + [(2, 28), (2, 29), (3, 1)]
    anniversary_dates = st.builds(
        lambda y, md: _safe_date(y, *md),
        st.sampled_from([1890, 1960, 1992, 2000, now.year - 1, now.year, now.year + 1]),
        st.sampled_from(month_days),
    )
    # anniversaries of timestamps, also before 1970 (looked up by month-day rather than by date)
    anniversary_times = st.builds(
        lambda d, seconds: datetime.combine(d, datetime.min.time(), UTC) + timedelta(seconds=seconds),
        anniversary_dates,
        st.sampled_from([0, 1, 43_200, 86_399]),
    )
    timestamps = st.one_of(st.none(), offsets.map(lambda s: now + timedelta(seconds=s)), anniversary_times)
    birthdays = st.one_of(st.none(), anniversary_dates, st.dates(date(1950, 1, 1), date(2030, 12, 31)))

    count = draw(st.integers(5, 30))
    customers: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for i in range(count):
        cid = f"c{i}"
        customers.append(
            {
                "id": cid,
                "email": draw(st.sampled_from(EMAILS)),
                "phone": None,
                "first_name": draw(st.sampled_from(FIRST_NAMES)),
                "last_name": None,
                "timezone": draw(st.sampled_from(ZONES)),
                "locale": draw(st.sampled_from(LOCALES)),
                "owner_email": None,
                "plan": draw(st.sampled_from(PLANS)),
                "clv": draw(st.sampled_from(CLVS)),
                "orders_count": draw(st.integers(0, 5)),
                "signed_up_at": draw(timestamps),
                "last_order_at": draw(timestamps),
                "last_seen_at": draw(timestamps),
                "birthday": draw(birthdays),
                "nps": draw(st.one_of(st.none(), st.integers(-1, 10))),
                "attributes": draw(attribute_dicts()),
                "updated_at": None,
            }
        )
        for _ in range(draw(st.integers(0, 4))):
            offset = draw(st.one_of(st.sampled_from(EVENT_OFFSETS), st.integers(-40 * 86400, 2 * 86400)))
            name = draw(st.sampled_from([*EVENT_NAMES, "other"]))
            events.append({"customer_id": cid, "name": name, "occurred_at": now + timedelta(seconds=offset)})
    rules = draw(st.lists(rule_texts(now), min_size=1, max_size=4))
    return {"now": now, "fallback": fallback, "customers": customers, "events": events, "rules": rules}


# -- rule texts ---------------------------------------------------------------------------------------

NUMBER_FIELDS = ["clv", "orders_count", "nps"]
STRING_FIELDS = ["plan", "email", "first_name", "timezone", "id", "locale"]
TIMESTAMP_FIELDS = ["signed_up_at", "last_order_at", "last_seen_at"]
DATE_FIELDS = ["birthday"]
ALL_FIELDS = NUMBER_FIELDS + STRING_FIELDS + TIMESTAMP_FIELDS + DATE_FIELDS
OPS = ["==", "!=", "<", "<=", ">", ">="]
NUMBERS = ["-1", "0", "0.5", "1", "2", "2.5", "3", "10", "99.5", "-5", "10000", "3000000000"]
STRINGS = [
    '"free"',
    '"pro"',
    '"Pro"',
    '"enterprise"',
    '""',
    '"m"',
    '"c3"',
    '"UTC"',
    "'a@x.com'",
    '"Gold"',
    '"1"',
]
BOOLS = ["true", "false"]
DAY_NUMBERS = ["-1", "0", "0.5", "1", "2", "29", "30", "30.5", "31", "-30", "-0.5", "365", "-2.5"]
HUGE_DAY_NUMBERS = ["3000000", "-3000000"]  # beyond any representable date
EVENT_NUMBERS = ["0", "0.5", "1", "2", "-1", "3", "1.5"]
WITHIN = ["", ", within=1d", ", within=3d", ", within=1.5d", ", within=12h", ", within=30d", ", within=0d"]
WITHIN += [', within="7d"', ", within=90m", ", within=2w", ", within='14d'"]
ATTRIBUTES = [
    "attributes.score",
    "attributes.tier",
    "attributes.flag",
    "attributes.meta",
    "attributes.meta.level",
]


def _lists(items: Sequence[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(items), max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")


def _nonempty_lists(items: Sequence[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(items), min_size=1, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")


def _compare(left: st.SearchStrategy[str], right: st.SearchStrategy[str], ops: Sequence[str] = OPS) -> Any:
    """``left op right``, or the literal first (``3 < clv``) now and then."""
    return st.builds(
        lambda a, op, b, flip: f"{b} {op} {a}" if flip else f"{a} {op} {b}",
        left,
        st.sampled_from(ops),
        right,
        st.booleans(),
    )


def _in(left: st.SearchStrategy[str], lists: st.SearchStrategy[str]) -> Any:
    return st.builds(lambda a, neg, xs: f"{a} {'not in' if neg else 'in'} {xs}", left, st.booleans(), lists)


def _iso(now: datetime) -> st.SearchStrategy[str]:
    instants = st.one_of(st.sampled_from(DAY_EDGES), st.integers(-400 * 86400, 400 * 86400)).map(
        lambda s: now + timedelta(seconds=s)
    )
    return st.builds(
        lambda at, style: {
            0: f'"{at.date().isoformat()}"',
            1: f'"{at.strftime("%Y-%m-%dT%H:%M:%SZ")}"',
            2: f'"{at.astimezone(ZoneInfo("Asia/Kolkata")).isoformat()}"',
            3: f"'{at.strftime('%Y-%m-%d %H:%M:%S')}'",
        }[style],
        instants,
        st.integers(0, 3),
    )


def rule_leaves(now: datetime) -> st.SearchStrategy[str]:
    fields = st.sampled_from
    number_fields = fields(NUMBER_FIELDS)
    string_fields = fields(STRING_FIELDS)
    attributes = fields(ATTRIBUTES)
    events = st.builds(lambda n, w: f'events("{n}"{w})', fields(EVENT_NAMES), fields(WITHIN))
    days = st.builds(
        lambda fn, f: f"{fn}({f})",
        fields(["days_since", "days_until"]),
        fields(TIMESTAMP_FIELDS + DATE_FIELDS),
    )
    day_numbers = st.one_of(fields(DAY_NUMBERS), fields(HUGE_DAY_NUMBERS))
    anniversary = fields(["anniversary(birthday)", "anniversary(signed_up_at)"])
    dates = st.one_of(
        st.sampled_from(DAY_EDGES).map(lambda s: (now + timedelta(seconds=s)).date()),
        st.dates(date(1950, 1, 1), date(2030, 12, 31)),
    ).map(lambda d: f'"{d.isoformat()}"')
    return st.one_of(
        _compare(number_fields, fields(NUMBERS)),
        _compare(number_fields, st.one_of(number_fields, events)),
        _compare(string_fields, fields(STRINGS)),
        _compare(string_fields, string_fields),
        _in(number_fields, _lists(NUMBERS)),
        _in(string_fields, _lists(STRINGS)),
        st.builds(
            lambda f, neg: f"{f} is {'not ' if neg else ''}null",
            st.one_of(fields(ALL_FIELDS), attributes, days, anniversary),
            st.booleans(),
        ),
        _compare(attributes, fields(NUMBERS)),
        _compare(attributes, fields(STRINGS)),
        _compare(attributes, fields(BOOLS), ["==", "!="]),
        _in(attributes, st.one_of(_lists(NUMBERS), _lists(STRINGS), _nonempty_lists(BOOLS))),
        attributes,
        _compare(fields(TIMESTAMP_FIELDS), _iso(now)),
        _compare(fields(TIMESTAMP_FIELDS), fields(TIMESTAMP_FIELDS)),
        _compare(fields(DATE_FIELDS), dates),
        _compare(days, day_numbers),
        _in(days, _lists(DAY_NUMBERS)),
        _compare(events, fields(EVENT_NUMBERS)),
        _compare(events, events),
        _in(events, _lists(EVENT_NUMBERS)),
        anniversary,
        _compare(anniversary, fields(BOOLS), ["==", "!="]),
        fields(BOOLS),
    )


def _is_condition(text: str) -> bool:
    """Not a bare literal or field: ``(true) is null`` and ``(attributes.x) == (...)`` are rejected."""
    return not isinstance(parse(text), ast.Literal | ast.Field)


def rule_texts(now: datetime) -> st.SearchStrategy[str]:
    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        conditions = children.filter(_is_condition)
        return st.one_of(
            st.builds(lambda a, b: f"{a} and {b}", children, children),
            st.builds(lambda a, b: f"{a} or {b}", children, children),
            children.map(lambda a: f"not {a}"),
            children.map(lambda a: f"({a})"),
            st.builds(
                lambda a, op, b: f"({a}) {op} ({b})", conditions, st.sampled_from(["==", "!="]), conditions
            ),
            conditions.map(lambda a: f"({a}) is null"),
        )

    return st.recursive(rule_leaves(now), extend, max_leaves=6)


# -- running rules --------------------------------------------------------------------------------


def load(engine: Engine, customers: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(delete(EVENT))
        conn.execute(delete(CUSTOMER))
        conn.execute(insert(CUSTOMER), [dict(c) for c in customers])
        if events:
            conn.execute(insert(EVENT), [{**e, "properties": {}} for e in events])


#: How event tests are compiled: correlated EXISTS, LEFT JOINs (``Scope.hoist``) or IN (``Scope.events_in``).
FORMS = {
    "exists": "with correlated event subqueries",
    "joins": "with hoisted event joins",
    "in": "with event tests as IN (subquery)",
}


def selected(
    engine: Engine, text: str, now: datetime, fallback: str = "UTC", form: str = "exists"
) -> set[str]:
    """Ids the compiled rule selects, with event tests in the given form (``FORMS``)."""
    joins: list[Any] | None = [] if form == "joins" else None
    scope = Scope(now=now, fallback_timezone=fallback, hoist=joins, events_in=form == "in")
    condition = compile_rule(parse(text), scope)
    source: Any = CUSTOMER
    for sub in joins or []:
        source = source.outerjoin(sub, sub.c.customer_id == CUSTOMER.c.id)
    with engine.connect() as conn:
        rows = list(conn.execute(select(CUSTOMER.c.id).select_from(source).where(condition)))
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids)), f"{text!r} selects some customers more than once: {sorted(ids)}"
    return set(ids)


def check_against_reference(
    engine: Engine,
    text: str,
    customers: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    now: datetime,
    fallback: str = "UTC",
) -> None:
    tree = parse(text)
    want = matching_ids(tree, customers, events, now, fallback)
    for name, form in FORMS.items():
        try:
            got = selected(engine, text, now, fallback, name)
        except DBAPIError as exc:
            raise AssertionError(
                f"rule {text!r} ({form}): the query fails on {engine.dialect.name}: {exc.orig}"
            ) from exc
        if got == want:
            continue
        by_id = {c["id"]: c for c in customers}
        details = "\n".join(
            f"  {cid}: sql={'yes' if cid in got else 'no'} reference="
            f"{evaluate(tree, by_id[cid], events, now, fallback)} customer={by_id[cid]} "
            f"events={[e for e in events if e['customer_id'] == cid]}"
            for cid in sorted(got ^ want)
        )
        raise AssertionError(
            f"rule {text!r} at now={now.isoformat()} (fallback {fallback}, {form}): the SQL selects "
            f"{sorted(got)}, the reference {sorted(want)}; differing customers:\n{details}"
        )


# No "explain" phase (it re-runs the database-bound test many times) and one bug at a time, so that
# a failure is shrunk in about a minute; the failing example is then replayed from .hypothesis/.
@settings(
    max_examples=80,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(scenario=scenarios())
def test_compiled_rules_select_what_the_reference_selects(engine: Engine, scenario: dict[str, Any]) -> None:
    """Random rules over random customers: the SQL selects exactly the reference's ids."""
    load(engine, scenario["customers"], scenario["events"])
    for text in scenario["rules"]:
        check_against_reference(
            engine, text, scenario["customers"], scenario["events"], scenario["now"], scenario["fallback"]
        )


# -- hand-written boundaries ---------------------------------------------------------------------------

NOW = datetime(2026, 5, 10, 12, 0, 0, tzinfo=UTC)


def customer(cid: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": cid,
        "email": None,
        "phone": None,
        "first_name": None,
        "last_name": None,
        "timezone": "UTC",
        "locale": None,
        "owner_email": None,
        "plan": None,
        "clv": None,
        "orders_count": 0,
        "signed_up_at": None,
        "last_order_at": None,
        "last_seen_at": None,
        "birthday": None,
        "nps": None,
        "attributes": {},
        "updated_at": None,
    }
    row.update(values)
    return row


def expect(
    engine: Engine,
    customers: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    cases: Mapping[str, set[str]],
    now: datetime = NOW,
    fallback: str = "UTC",
) -> None:
    """Each rule selects exactly the expected ids, in the database and in the reference."""
    load(engine, customers, events)
    for text, want in cases.items():
        assert matching_ids(parse(text), customers, events, now, fallback) == want, f"reference: {text}"
        for name, form in FORMS.items():
            assert selected(engine, text, now, fallback, name) == want, f"SQL {form}: {text}"


def test_days_since_and_until_floor_whole_days_at_the_boundary(engine: Engine) -> None:
    day, sec = timedelta(days=1), timedelta(seconds=1)
    people = [
        customer("exact30", signed_up_at=NOW - 30 * day, last_order_at=NOW + 30 * day),
        customer("30plus1s", signed_up_at=NOW - 30 * day - sec, last_order_at=NOW + 30 * day + sec),
        customer("30minus1s", signed_up_at=NOW - 30 * day + sec, last_order_at=NOW + 30 * day - sec),
        customer("31", signed_up_at=NOW - 31 * day, last_order_at=NOW + 31 * day),
        customer("future1s", signed_up_at=NOW + sec, last_order_at=NOW - sec),
        customer("missing"),
    ]
    expect(
        engine,
        people,
        [],
        {
            "days_since(signed_up_at) == 30": {"exact30", "30plus1s"},
            "days_since(signed_up_at) >= 30": {"exact30", "30plus1s", "31"},
            "days_since(signed_up_at) > 30": {"31"},
            "days_since(signed_up_at) < 30": {"30minus1s", "future1s"},
            "days_since(signed_up_at) <= 29.5": {"30minus1s", "future1s"},
            "days_since(signed_up_at) == 30.5": set(),
            "days_since(signed_up_at) != 30.5": {"exact30", "30plus1s", "30minus1s", "31", "future1s"},
            "not days_since(signed_up_at) == 30": {"30minus1s", "31", "future1s"},
            "days_since(signed_up_at) == -1": {"future1s"},
            "days_since(signed_up_at) in [29, 31]": {"30minus1s", "31"},
            "days_since(signed_up_at) is null": {"missing"},
            "days_until(last_order_at) == 30": {"exact30", "30plus1s"},
            "days_until(last_order_at) < 30": {"30minus1s", "future1s"},
            "days_until(last_order_at) == -1": {"future1s"},
            "30 <= days_until(last_order_at)": {"exact30", "30plus1s", "31"},
        },
    )


def test_days_on_a_date_field_use_the_utc_date_of_now(engine: Engine) -> None:
    late = datetime(2026, 5, 10, 23, 59, 59, tzinfo=UTC)
    people = [
        customer("today", birthday=date(2026, 5, 10)),
        customer("yesterday", birthday=date(2026, 5, 9)),
        customer("tomorrow", birthday=date(2026, 5, 11)),
        customer("none"),
    ]
    expect(
        engine,
        people,
        [],
        {
            "days_since(birthday) == 0": {"today"},
            "days_since(birthday) == 1": {"yesterday"},
            "days_until(birthday) == 1": {"tomorrow"},
            "days_since(birthday) >= 0": {"today", "yesterday"},
            "days_until(birthday) is not null": {"today", "yesterday", "tomorrow"},
        },
        now=late,
    )


def test_event_windows_include_both_ends(engine: Engine) -> None:
    day, sec = timedelta(days=1), timedelta(seconds=1)
    people = [customer(c) for c in ("at_start", "before_start", "at_now", "after_now", "two", "none")]
    events = [
        {"customer_id": "at_start", "name": "login", "occurred_at": NOW - 3 * day},
        {"customer_id": "before_start", "name": "login", "occurred_at": NOW - 3 * day - sec},
        {"customer_id": "at_now", "name": "login", "occurred_at": NOW},
        {"customer_id": "after_now", "name": "login", "occurred_at": NOW + sec},
        {"customer_id": "two", "name": "login", "occurred_at": NOW - day},
        {"customer_id": "two", "name": "login", "occurred_at": NOW - 2 * day},
        {"customer_id": "two", "name": "purchase", "occurred_at": NOW - day},
    ]
    everyone = {"at_start", "before_start", "at_now", "after_now", "two", "none"}
    expect(
        engine,
        people,
        events,
        {
            'events("login", within=3d) > 0': {"at_start", "at_now", "two"},
            'events("login", within="72h") >= 1': {"at_start", "at_now", "two"},
            'events("login", within=3d) == 0': {"before_start", "after_now", "none"},
            'events("login", within=3d) == 2': {"two"},
            'events("login", within=3d) >= 1.5': {"two"},
            'events("login", within=3d) < 0.5': {"before_start", "after_now", "none"},
            'events("login") > 0': {"at_start", "before_start", "at_now", "two"},
            'events("login", within=0d) == 1': {"at_now"},
            'events("login") == 0.5': set(),
            'events("login") != 0.5': everyone,
            'events("login") > -1': everyone,
            'events("login") <= -1': set(),
            'events("login") in [0, 2]': {"after_now", "two", "none"},
            'events("login") != 1': {"after_now", "two", "none"},
            'events("login") > events("purchase")': {"at_start", "before_start", "at_now", "two"},
            'events("login") == orders_count': {"after_now", "none"},
        },
    )


def test_events_not_equal_to_zero_selects_customers_with_events(engine: Engine) -> None:
    """Regression: ``events(...) != 0`` used to compile like ``== 0``."""
    people = [customer("with"), customer("without")]
    events = [{"customer_id": "with", "name": "login", "occurred_at": NOW - timedelta(hours=1)}]
    expect(engine, people, events, {'events("login") != 0': {"with"}})


def test_events_not_equal_to_a_negative_number_selects_everyone(engine: Engine) -> None:
    """Regression: ``events(...) != -1`` used to compile to false."""
    people = [customer("with"), customer("without")]
    events = [{"customer_id": "with", "name": "login", "occurred_at": NOW - timedelta(hours=1)}]
    expect(engine, people, events, {'events("login") != -1': {"with", "without"}})


def test_days_until_beyond_the_representable_range(engine: Engine) -> None:
    """Compiler bug: when ``now ± N days`` overflows, ``days_bound`` decides the days_until
    bounds the wrong way round (``days_until(x) <= 3000000`` matches nobody)."""
    people = [
        customer("ts", signed_up_at=NOW - timedelta(days=5), birthday=date(2000, 1, 1)),
        customer("none"),
    ]
    expect(
        engine,
        people,
        [],
        {
            "days_since(signed_up_at) <= 3000000": {"ts"},
            "days_since(signed_up_at) >= -3000000": {"ts"},
            "days_since(signed_up_at) > 3000000": set(),
            "days_until(signed_up_at) <= 3000000": {"ts"},
            "days_until(signed_up_at) >= -3000000": {"ts"},
            "days_until(signed_up_at) >= 3000000": set(),
            "days_until(birthday) <= 3000000": {"ts"},
            "days_until(birthday) < -3000000": set(),
        },
    )


def test_number_lists_mixing_whole_and_fractional_numbers(engine: Engine) -> None:
    """Compiler bug (PostgreSQL): the bound list takes the type of its first value, so in
    ``clv in [3, 2.5]`` the 2.5 is sent as ``::INTEGER`` (rounded to 3) and 2.5 is not found."""
    people = [
        customer("half", clv=2.5, attributes={"score": 2.5}),
        customer("three", clv=3.0, attributes={"score": 3}),
        customer("none"),
    ]
    expect(
        engine,
        people,
        [],
        {
            "clv in [2.5, 3]": {"half", "three"},
            "clv in [3, 2.5]": {"half", "three"},
            "clv in [2, 2.5]": {"half"},
            "clv not in [2, 2.5]": {"three"},
            "attributes.score in [2, 2.5]": {"half"},
        },
    )


def test_numbers_beyond_32_bits(engine: Engine) -> None:
    """Compiler bug (PostgreSQL): a literal beyond the 32-bit range compared with an integer column
    (or an event count) is bound as ``::INTEGER`` and the query fails with "integer out of range"."""
    people = [customer("a", nps=5, orders_count=2), customer("b")]
    events = [{"customer_id": "a", "name": "login", "occurred_at": NOW - timedelta(hours=1)}]
    load(engine, people, events)
    cases = {
        "nps < 3000000000": {"a"},
        "orders_count == 3000000000": set(),
        "orders_count in [1, 3000000000]": set(),
        'events("login") < 3000000000': {"a", "b"},
        "clv > 3000000000": set(),
        "attributes.score < 3000000000": set(),
    }
    failures = []
    for text, want in cases.items():
        assert matching_ids(parse(text), people, events, NOW) == want, f"reference: {text}"
        try:
            got = selected(engine, text, NOW)
        except DBAPIError as exc:
            failures.append(f"{text}: the query fails: {exc.orig}")
            continue
        if got != want:
            failures.append(f"{text}: selects {sorted(got)}, expected {sorted(want)}")
    assert not failures, "\n".join(failures)


def test_timestamps_compare_with_iso_strings(engine: Engine) -> None:
    people = [
        customer(
            "early", signed_up_at=datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC), birthday=date(1990, 1, 31)
        ),
        customer("midnight", signed_up_at=datetime(2026, 2, 1, tzinfo=UTC), birthday=date(1990, 2, 1)),
        customer("later", signed_up_at=datetime(2026, 2, 1, 5, 30, tzinfo=UTC), birthday=date(1990, 2, 2)),
        customer("none"),
    ]
    expect(
        engine,
        people,
        [],
        {
            'signed_up_at >= "2026-02-01"': {"midnight", "later"},
            'signed_up_at < "2026-02-01T00:00:00Z"': {"early"},
            'signed_up_at == "2026-02-01T11:00:00+05:30"': {"later"},
            '"2026-02-01" > signed_up_at': {"early"},
            'birthday <= "1990-02-01"': {"early", "midnight"},
            'birthday != "1990-02-01"': {"early", "later"},
        },
    )


def test_anniversary_of_29_february(engine: Engine) -> None:
    people = [
        customer("leap", birthday=date(1992, 2, 29)),
        customer("feb28", birthday=date(1990, 2, 28)),
        customer("mar1", birthday=date(1990, 3, 1)),
        customer("none"),
    ]
    non_leap_28 = datetime(2027, 2, 28, 12, tzinfo=UTC)
    leap_28 = datetime(2028, 2, 28, 12, tzinfo=UTC)
    leap_29 = datetime(2028, 2, 29, 12, tzinfo=UTC)
    expect(engine, people, [], {"anniversary(birthday)": {"leap", "feb28"}}, now=non_leap_28)
    expect(engine, people, [], {"anniversary(birthday)": {"feb28"}}, now=leap_28)
    expect(engine, people, [], {"anniversary(birthday)": {"leap"}}, now=leap_29)
    expect(engine, people, [], {"anniversary(birthday)": {"mar1"}}, now=datetime(2027, 3, 1, 12, tzinfo=UTC))
    expect(
        engine,
        people,
        [],
        {"not anniversary(birthday)": {"mar1"}, "anniversary(birthday) is null": {"none"}},
        now=non_leap_28,
    )


def test_anniversary_uses_each_customers_time_zone_around_midnight(engine: Engine) -> None:
    # 10:30 UTC: Pago Pago is still on the 14th (23:30), Kiritimati already on the 16th (00:30)
    now = datetime(2026, 6, 15, 10, 30, tzinfo=UTC)
    people = [
        customer(f"{name}-{day}", timezone=zone, birthday=date(1990, 6, day))
        for name, zone in [
            ("pago", "Pacific/Pago_Pago"),
            ("kiri", "Pacific/Kiritimati"),
            ("kolkata", "Asia/Kolkata"),
            ("stjohns", "America/St_Johns"),
            ("unknown", "Mars/Olympus"),
        ]
        for day in (14, 15, 16)
    ]
    people += [
        customer("this-year", birthday=date(2026, 6, 15)),
        customer("next-year", birthday=date(2027, 6, 15)),
        customer(
            "ts-kiri", timezone="Pacific/Kiritimati", signed_up_at=datetime(2020, 6, 16, 23, 0, tzinfo=UTC)
        ),
        customer("ts-utc", signed_up_at=datetime(2020, 6, 15, 0, 0, tzinfo=UTC)),
        customer("ts-this-year", signed_up_at=datetime(2026, 6, 15, 0, 0, tzinfo=UTC)),
    ]
    expect(
        engine,
        people,
        [],
        {
            "anniversary(birthday)": {"pago-14", "kiri-16", "kolkata-15", "stjohns-15", "unknown-15"},
            "anniversary(signed_up_at)": {"ts-kiri", "ts-utc"},
        },
        now=now,
    )
    expect(
        engine,
        people,
        [],
        {"anniversary(birthday)": {"pago-14", "kiri-16", "kolkata-15", "stjohns-15", "unknown-16"}},
        now=now,
        fallback="Pacific/Kiritimati",
    )
    # one second earlier Kiritimati is still on the 15th
    expect(
        engine,
        people,
        [],
        {"anniversary(birthday)": {"pago-14", "kiri-15", "kolkata-15", "stjohns-15", "unknown-15"}},
        now=datetime(2026, 6, 15, 9, 59, 59, tzinfo=UTC),
    )
    winter = [
        customer("stjohns-9", timezone="America/St_Johns", birthday=date(1990, 1, 9)),
        customer("stjohns-10", timezone="America/St_Johns", birthday=date(1990, 1, 10)),
        customer("kolkata-10", timezone="Asia/Kolkata", birthday=date(1990, 1, 10)),
    ]
    expect(
        engine,
        winter,
        [],
        {"anniversary(birthday)": {"stjohns-9", "kolkata-10"}},
        now=datetime(2026, 1, 10, 3, 29, 59, tzinfo=UTC),
    )
    expect(
        engine,
        winter,
        [],
        {"anniversary(birthday)": {"stjohns-10", "kolkata-10"}},
        now=datetime(2026, 1, 10, 3, 30, tzinfo=UTC),
    )


def test_attributes_compare_only_values_of_the_literals_json_type(engine: Engine) -> None:
    people = [
        customer("num", attributes={"score": 3, "flag": True}),
        customer("float", attributes={"score": 3.0, "flag": False}),
        customer("text", attributes={"score": "3", "flag": "true"}),
        customer("bool", attributes={"score": True, "flag": 1}),
        customer("null", attributes={"score": None, "flag": None}),
        customer("nested", attributes={"score": {"level": 3}, "meta": {"level": "gold"}}),
        customer("missing"),
    ]
    expect(
        engine,
        people,
        [],
        {
            "attributes.score == 3": {"num", "float"},
            "attributes.score != 3": set(),
            'attributes.score == "3"': {"text"},
            "attributes.score == true": {"bool"},
            "attributes.score is null": {"null", "missing"},
            "attributes.score is not null": {"num", "float", "text", "bool", "nested"},
            "attributes.score.level >= 3": {"nested"},
            'attributes.meta.level == "gold"': {"nested"},
            "attributes.meta.level is null": {"num", "float", "text", "bool", "null", "missing"},
            "attributes.flag": {"num"},
            "not attributes.flag": {"float"},
            "attributes.flag != false": {"num"},
            "attributes.score in [1, 3]": {"num", "float"},
            "attributes.score not in [1, 2]": {"num", "float"},
            'attributes.score in ["3", "x"]': {"text"},
        },
    )


def test_missing_values_are_unknown_and_never_match(engine: Engine) -> None:
    people = [customer("a", plan="pro", clv=10.0, nps=5), customer("b", plan=None, clv=None, nps=None)]
    expect(
        engine,
        people,
        [],
        {
            'plan != "free"': {"a"},
            'not plan == "free"': {"a"},
            'plan not in ["free"]': {"a"},
            "plan in []": set(),
            "plan not in []": {"a", "b"},
            'not (plan == "pro" and clv > 100)': {"a"},
            'plan == "pro" or clv > 100': {"a"},
            "plan is null or clv > 100": {"b"},
            "not (clv > 100 or nps < 0)": {"a"},
            "(clv > 5) == (nps > 1)": {"a"},
            "(clv > 5) is null": {"b"},
            "clv > nps": {"a"},
            "true": {"a", "b"},
            "not true or false": set(),
        },
    )


def test_string_order_is_ordinal(engine: Engine) -> None:
    people = [customer("upper", plan="Pro"), customer("lower", plan="free"), customer("empty", plan="")]
    expect(
        engine,
        people,
        [],
        {'plan < "a"': {"upper", "empty"}, 'plan >= "Z"': {"lower"}, 'plan > ""': {"upper", "lower"}},
    )


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("Pacific/Kiritimati", date(2026, 6, 16)),
        ("Pacific/Pago_Pago", date(2026, 6, 14)),
        ("Nowhere/Else", date(2026, 6, 15)),
    ],
)
def test_reference_local_dates(zone: str, expected: date) -> None:
    """The reference itself: anniversary looks at the customer's local date, falling back to UTC."""
    now = datetime(2026, 6, 15, 10, 30, tzinfo=UTC)
    tree = parse("anniversary(birthday)")
    born = {"id": "x", "timezone": zone, "birthday": expected.replace(year=1990)}
    assert evaluate(tree, born, [], now) is True
    born["birthday"] = (expected + timedelta(days=1)).replace(year=1990)
    assert evaluate(tree, born, [], now) is False
    assert evaluate(tree, {"id": "x", "timezone": zone, "birthday": None}, [], now) is None
