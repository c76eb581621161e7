"""Every type and name error of the rule compiler: a ``RuleError`` at the right offset, with a
message that tells the author what to write instead."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import literal_column

from automation.rules.ast import RuleError
from automation.rules.compiler import Binding, Scope, compile_rule
from automation.rules.parser import parse

NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
STAGES = ("onboarding", "retention", "winback")


def stage_scope(values: tuple[str, ...] = STAGES) -> Scope:
    return Scope(now=NOW, names={"stage": Binding(literal_column("'onboarding'"), values)})


def rule_error(text: str, scope: Scope | None = None) -> RuleError:
    with pytest.raises(RuleError) as info:
        compile_rule(parse(text), scope or Scope(now=NOW))
    return info.value


def locate(text: str, at: str) -> int:
    """The offset of ``at`` in ``text``; ``at`` may mark the spot with ``^`` (``"a ^== b"``)."""
    if "^" in at:
        before, after = at.split("^", 1)
        return text.index(before + after) + len(before)
    assert text.count(at) == 1, f"{at!r} is ambiguous in {text!r}"
    return text.index(at)


CASES = [
    # unknown names
    ("ordrs_count > 1", "ordrs_count", "unknown field 'ordrs_count' (did you mean 'orders_count'?)"),
    (
        "clv > 1 and sigend_up_at is null",
        "sigend_up_at",
        "unknown field 'sigend_up_at' (did you mean 'signed_up_at'?)",
    ),
    ("days_snce(signed_up_at) > 3", "days_snce", "unknown function 'days_snce' (did you mean 'days_since'?)"),
    ('event("a") > 0', "event", "unknown function 'event' (did you mean 'events'?)"),
    ("plan.tier == 'x'", "plan", "'plan' has no fields; only attributes.<name> takes a dot"),
    ("days_since == 3", "days_since", "days_since is a function; call it: days_since(...)"),
    # types of comparisons
    ("plan > 3", "3", "cannot compare plan (string) with 3 (number)"),
    ("3 < plan", "3", "cannot compare plan (string) with 3 (number)"),
    ('clv == "10"', '"10"', "cannot compare clv (number) with '10' (string)"),
    ("nps == true", "true", "cannot compare nps (number) with true (bool)"),
    ("anniversary(birthday) == 3", "3", "cannot compare anniversary(...) (bool) with 3 (number)"),
    ("clv == plan", "clv ^==", "cannot compare clv (number) with plan (string)"),
    ("birthday < signed_up_at", "<", "cannot compare birthday (date) with signed_up_at (timestamp)"),
    ('events("a") == plan', "==", "cannot compare events(...) (number) with plan (string)"),
    # null
    ("nps == null", "null", "cannot compare with null; write `is null`"),
    ("nps != null", "null", "cannot compare with null; write `is not null`"),
    ("null == nps", "null", "cannot compare with null; write `is null`"),
    ("attributes.score == null", "null", "write `is null`"),
    # values that are not conditions
    ("clv", "clv", "clv is a number, not true or false; compare it with something, e.g. `orders_count > 0`"),
    ("clv > 1 and nps", "nps", "nps is a number, not true or false"),
    ("plan", "plan", "plan is a string, not true or false"),
    ("signed_up_at or clv > 1", "signed_up_at", "signed_up_at is a timestamp, not true or false"),
    ('events("a")', "events", "events(...) is a count, not true or false"),
    ("days_since(signed_up_at)", "days_since", "days_since(...) is a number of days, not true or false"),
    ("3", "3", "3 on its own is not a rule; compare a field with it"),
    ('"pro"', '"pro"', "'pro' on its own is not a rule"),
    ("null", "null", "null on its own is not a rule"),
    ("3 == 3", "^3 ==", "3 on its own is not a rule"),
    # attributes
    ("attributes", "attributes", "name the attribute: attributes.<name>, e.g. attributes.industry"),
    ("attributes == 3", "attributes", "name the attribute"),
    ("clv > 1 or attributes is null", "attributes", "name the attribute"),
    ("attributes.score == clv", "clv", "compare attributes.score with a literal value, not with clv"),
    ("clv == attributes.score", "attributes", "compare clv with a literal value, not with attributes.score"),
    ("attributes.flag < true", "<", "true/false values only support == and !=, not <"),
    ("attributes.score in [clv]", "clv", "a list after `in` holds numbers, strings or booleans"),
    # days_since / days_until / anniversary
    ("days_since(plan) > 3", "plan", "days_since() takes a date or timestamp field; plan is a string"),
    ("days_until(clv) < 3", "clv", "days_until() takes a date or timestamp field; clv is a number"),
    ("days_since(attributes.x) > 1", "attributes", "attributes.x is an attribute"),
    ('days_since("signed_up_at") > 1', '"signed_up_at"', "days_since() takes a date or timestamp field"),
    ("days_since() > 1", "days_since", "days_since() takes one field, e.g. days_since(signed_up_at)"),
    ("days_since(signed_up_at, last_seen_at) > 1", "days_since", "days_since() takes one field"),
    ("days_until(signed_up_at, x=1) > 1", "days_until", "days_until() takes one field"),
    ("anniversary(clv)", "clv", "anniversary() takes a date or timestamp field; clv is a number"),
    ("anniversary(birthday, signed_up_at)", "anniversary", "anniversary() takes one field"),
    ("days_since(signed_up_at) > clv", "clv", "compare days_since(...) with a literal value, not with clv"),
    ("clv < days_since(signed_up_at)", "days_since", "with a literal value, not with days_since(...)"),
    (
        "days_since(signed_up_at) == days_until(birthday)",
        "days_until",
        "compare days_since(...) with a literal value, not with days_until(...)",
    ),
    ('days_since(signed_up_at) > "3"', '"3"', "days_since() is a number of days; compare it with a number"),
    ('days_until(birthday) in ["a"]', '"a"', "days_until() is a number of days; compare it with a number"),
    # events
    (
        "events(3) > 0",
        "events",
        'events() takes the event name as a string, e.g. events("activated", within="3d")',
    ),
    ("events() > 0", "events", "events() takes the event name as a string"),
    ("events(name) > 0", "events", "events() takes the event name as a string"),
    ('events("a", "b") > 0', "events", "events() takes the event name as a string"),
    ('events("a", within="3x") > 0', '"3x"', '\'3x\' is not a duration; use e.g. "30d", "12h", "90m"'),
    ('events("a", within="-3d") > 0', '"-3d"', "'-3d' is not a duration"),
    ('events("a", within="") > 0', '""', "'' is not a duration"),
    ('events("a", within=3) > 0', "3)", 'within= takes a duration, e.g. within="30d"'),
    ('events("a", within=clv) > 0', "clv", "within= takes a duration"),
    ('events("a") > "x"', '"x"', "events(...) is a count; compare it with a number, not a string"),
    ('events("a") == true', "true", "events(...) is a count; compare it with a number, not true or false"),
    ('events("a") in ["x"]', '"x"', "events(...) is a count; compare it with a number, not a string"),
    ('events("a") is null', "events", "events(...) is a count and never null; compare it with 0"),
    # durations outside within=
    ("clv > 30d", "30d", 'a duration can only be used as within=..., e.g. events("x", within=30d)'),
    ("30d < clv", "30d", "a duration can only be used as within=..."),
    ("days_since(signed_up_at) > 3d", "3d", "a duration can only be used as within=..."),
    ('events("a", within=3d) > 1d', "1d", "a duration can only be used as within=..."),
    ("plan in [30d]", "30d", "a list after `in` holds numbers, strings or booleans"),
    # names that only exist in some contexts
    (
        'stage == "onboarding"',
        "stage",
        "`stage` cannot be used here; it is available in step guards and recurring rules",
    ),
    (
        'clv > 1 or segment == "a"',
        "segment",
        "`segment` cannot be used here; it is available in step guards, recurring rules and stage rules",
    ),
    ('touch in ["high"]', "touch", "`touch` cannot be used here"),
    # booleans only support == and !=
    ("anniversary(birthday) >= false", ">=", "true/false values only support == and !=, not >="),
    ("(clv > 1) < (nps > 2)", ") ^< (", "true/false values only support == and !=, not <"),
    # lists
    ('plan in ["a", 1]', "plan", "all values in the list must be of one type"),
    ('clv not in [1, "a"]', "clv", "all values in the list must be of one type"),
    ("attributes.flag in [true, 1]", "attributes", "all values in the list must be of one type"),
    ("plan in [1, 2]", "1", "plan is a string; the list holds numbers"),
    ("plan in [null]", "null", "a list after `in` holds numbers, strings or booleans"),
    ('signed_up_at in ["2026-01-01"]', '"2026', "signed_up_at is a timestamp; the list holds strings"),
    # timestamps and dates
    (
        'signed_up_at > "yesterday"',
        '"yesterday"',
        '\'yesterday\' is not an ISO 8601 timestamp, e.g. "2026-01-31" or "2026-01-31T09:00:00Z"',
    ),
    ('"nope" < last_seen_at', '"nope"', "'nope' is not an ISO 8601 timestamp"),
    ('signed_up_at > "2026-02-30"', '"2026', "'2026-02-30' is not an ISO 8601 timestamp"),
    ('birthday > "2026-13-01"', '"2026', "'2026-13-01' is not an ISO 8601 date"),
    ('birthday == "2026-01-01T00:00:00"', '"2026', "is not an ISO 8601 date"),
    (
        "signed_up_at > 3",
        "3",
        'signed_up_at is a timestamp; compare it with a date like "2026-01-31", or use days_since',
    ),
    ("birthday == true", "true", "birthday is a date; compare it with a date like"),
]


@pytest.mark.parametrize(("text", "at", "message"), CASES, ids=[c[0] for c in CASES])
def test_rule_errors_point_at_the_problem(text: str, at: str, message: str) -> None:
    error = rule_error(text)
    assert message in error.message
    assert error.pos == locate(text, at), f"offset {error.pos} points at {text[error.pos :]!r}"


def test_unknown_field_without_a_close_match_has_no_suggestion() -> None:
    error = rule_error("frobnication > 1")
    assert error.message == "unknown field 'frobnication'"
    assert error.pos == 0
    assert rule_error("clv > 1 or zzz(1)").message == "unknown function 'zzz'"


def test_stage_values_are_checked_against_the_binding() -> None:
    scope = stage_scope()
    error = rule_error('stage == "retnetion"', scope)
    assert error.message == "unknown stage 'retnetion' (did you mean 'retention'?)"
    assert error.pos == locate('stage == "retnetion"', '"retnetion"')

    text = 'stage in ["onboarding", "retnetion"]'
    error = rule_error(text, scope)
    assert error.message == "unknown stage 'retnetion' (did you mean 'retention'?)"
    assert error.pos == locate(text, '"retnetion"')

    error = rule_error('"wnback" != stage', scope)
    assert error.message == "unknown stage 'wnback' (did you mean 'winback'?)"
    assert error.pos == 0

    error = rule_error('stage == "zzz"', scope)
    assert error.message == "unknown stage 'zzz'; known: onboarding, retention, winback"

    error = rule_error("stage == 3", scope)
    assert error.message == "cannot compare stage (string) with 3 (number)"

    error = rule_error('stag == "retention"', scope)
    assert error.message == "unknown field 'stag' (did you mean 'stage'?)"

    # known values, and a binding that lists no values, compile
    for ok in ('stage == "retention"', 'stage not in ["winback", "onboarding"]', "stage is null"):
        compile_rule(parse(ok), scope)
    compile_rule(parse('stage == "anything"'), stage_scope(()))


def test_unknown_keyword_argument_points_into_the_argument() -> None:
    text = 'events("a", foo=1) > 0'
    error = rule_error(text)
    assert error.message == "events() has no argument 'foo'; it takes within=<duration>"
    # the offset lands on the argument (its value: the tree keeps no offset for the name)
    assert locate(text, "foo") <= error.pos <= locate(text, "1)")


def test_positional_after_keyword_is_a_syntax_error() -> None:
    with pytest.raises(RuleError) as info:
        parse('events(within=3d, "a") > 0')
    assert info.value.message == "a positional argument cannot follow a keyword argument"


def test_rule_error_carries_message_and_offset() -> None:
    error = rule_error("plan > 3")
    assert isinstance(error, Exception)
    assert str(error) == error.message
    assert (error.pos, error.message) == (7, "cannot compare plan (string) with 3 (number)")


# -- regressions: defects found while writing these tests -----------------------------------------


def test_flipped_timestamp_comparison_names_the_field() -> None:
    """With the literal first, the message used to describe the literal: "3 is a timestamp"."""
    error = rule_error("3 < signed_up_at")
    assert error.pos == 0
    assert error.message.startswith("signed_up_at is a timestamp"), error.message


def test_flipped_bool_comparison_names_the_operator_written() -> None:
    """``true > anniversary(birthday)`` used to be reported as "not <" (the flipped operator)."""
    text = "true > anniversary(birthday)"
    error = rule_error(text)
    assert error.pos == locate(text, ">")
    assert error.message.endswith("not >"), error.message


def test_misspelt_attributes_suggests_attributes() -> None:
    """A dotted path with an unknown head used to report "'atributes' has no fields"."""
    error = rule_error('atributes.industry == "retail"')
    assert error.pos == 0
    assert "unknown field 'atributes' (did you mean 'attributes'?)" in error.message, error.message
