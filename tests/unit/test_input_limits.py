"""The limits every YAML file and every rule is held to: each excess is a clean error with its position."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from automation.errors import PlaybookError, Problem
from automation.playbook.source import MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_VALUES, load
from automation.rules.ast import RuleError
from automation.rules.parser import MAX_RULE_DEPTH, MAX_RULE_LENGTH, parse
from tests.hostile import alias_bomb


def problem_of(tmp_path: Path, text: str, name: str = "hostile.yaml") -> Problem:
    path = tmp_path / name
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(PlaybookError) as caught:
        load(path)
    assert time.monotonic() - started < 2.0
    (problem,) = caught.value.problems
    assert problem.path == path
    return problem


def test_an_alias_bomb_is_refused_at_the_line_of_its_first_excess(tmp_path: Path) -> None:
    problem = problem_of(tmp_path, alias_bomb())
    # sizes 10, 91, 820, 7,381, 66,430 values: the sixth anchor (597,871 values) passes the budget
    assert (problem.line, problem.column) == (6, 10)
    assert f"more than {MAX_VALUES:,} values once aliases are expanded" in problem.message
    assert "^" in problem.render()


def test_aliases_within_the_budget_and_merge_keys_load_as_their_values(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "defaults: &defaults {touch: none, when: clv > 1}\n"
        "steps: &steps [{email: welcome}, {wait: 3d}]\n"
        "segment:\n  <<: *defaults\n  name: all\n"
        "again: *steps\n" + alias_bomb(levels=4)
    )
    data = load(path).data
    assert data["segment"] == {"name": "all", "touch": "none", "when": "clv > 1"}
    assert data["again"] == [{"email": "welcome"}, {"wait": "3d"}]
    assert data["segment"]["touch"].line == 1  # merged values keep the position they were written at
    assert len(data["l3"]) == 9 and len(data["l3"][0][0]) == 9


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    problem = problem_of(tmp_path, "a: 1\nloop: &loop [1, *loop]\n")
    assert (problem.line, problem.column) == (2, 17)
    assert "*loop refers to a value that contains it" in problem.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("name: x\ndeep: " + "[" * 20_000 + "]" * 20_000 + "\n", 2, id="flow-lists"),
        pytest.param("name: x\ndeep: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n", 2, id="flow-maps"),
        pytest.param("".join("  " * i + f"k{i}:\n" for i in range(200)), MAX_DEPTH + 1, id="block-maps"),
    ],
)
def test_yaml_nested_too_deep_is_refused_at_once(tmp_path: Path, text: str, line: int) -> None:
    problem = problem_of(tmp_path, text)
    assert problem.line == line
    assert f"nested more than {MAX_DEPTH} levels deep" in problem.message


def test_nesting_up_to_the_limit_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("deep: " + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "\n")
    value = load(path).data["deep"]
    for _ in range(MAX_DEPTH - 1):
        (value,) = value
    assert value == 1


@pytest.mark.parametrize(
    ("tag", "shown"),
    [
        ("!!python/object/apply:os.system [touch pwned]", "!!python/object/apply:os.system"),
        ("!!python/name:os.system", "!!python/name:os.system"),
        ("!custom 1", "!custom"),
        ("!!binary aGVsbG8=", "!!binary"),
    ],
)
def test_tags_other_than_plain_yaml_values_are_refused(tmp_path: Path, tag: str, shown: str) -> None:
    problem = problem_of(tmp_path, f"name: x\nhook: {tag}\n")
    assert (problem.line, problem.column) == (2, 7)
    assert problem.message == f"the tag {shown} is not allowed; write plain YAML values"
    assert not (tmp_path / "pwned").exists()


def test_plain_yaml_tags_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("a: !!str 3\nb: !!int '4'\nc: !!map {x: 1}\n")
    assert load(path).data == {"a": "3", "b": 4, "c": {"x": 1}}


def test_a_document_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "# padding\n" * (MAX_DOCUMENT_BYTES // 10))
    with pytest.raises(PlaybookError) as caught:
        load(path)
    assert f"the limit is {MAX_DOCUMENT_BYTES:,}" in str(caught.value)
    assert str(caught.value).startswith(f"{path}: the file is ")


DEEP = "nests more than 32 levels deep"


@pytest.mark.parametrize(
    ("rule", "message", "pos"),
    [
        pytest.param("(" * 400 + "clv > 1" + ")" * 400, DEEP, MAX_RULE_DEPTH, id="parens"),
        pytest.param("not " * 900 + "clv > 1", DEEP, 4 * MAX_RULE_DEPTH, id="nots"),
        pytest.param("not " * 20_000 + "clv > 1", "is 80,007 characters long", MAX_RULE_LENGTH, id="long"),
        pytest.param("f(" * 40 + "1" + ")" * 40, DEEP, 2 * MAX_RULE_DEPTH + 1, id="calls"),
        pytest.param("x in " + "[" * 100 + "]" * 100, DEEP, 5 + MAX_RULE_DEPTH, id="lists"),
    ],
)
def test_rules_past_the_limits_are_refused_at_the_offending_offset(rule: str, message: str, pos: int) -> None:
    started = time.monotonic()
    with pytest.raises(RuleError) as caught:
        parse(rule)
    assert time.monotonic() - started < 0.5
    assert message in caught.value.message
    assert caught.value.pos == pos


@pytest.mark.parametrize(
    "rule",
    [
        "(" * (MAX_RULE_DEPTH - 1) + "clv > 1" + ")" * (MAX_RULE_DEPTH - 1),
        "not " * MAX_RULE_DEPTH + "clv > 1",
        " and ".join(["not (clv > 1)"] * 200),  # many shallow terms: long, not deep
        "plan not in ['a', 'b'] and not (email is not null)",
    ],
)
def test_rules_within_the_limits_parse(rule: str) -> None:
    assert parse(rule) is not None


def test_a_long_source_line_is_shown_clipped_around_the_caret() -> None:
    line = "when: " + "x" * 5000 + "!" + "y" * 5000
    rendered = Problem("p.yaml", 3, 5007, "unexpected '!'", line).render()
    _, shown, caret = rendered.splitlines()
    assert len(shown) < 120 and shown.startswith("    ...") and shown.endswith("...")
    assert shown[caret.index("^")] == "!"
