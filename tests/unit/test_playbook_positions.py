"""Every check of a whole playbook points at the element that breaks it: line, column and caret."""

from __future__ import annotations

from pathlib import Path

import pytest

from automation.errors import PlaybookError, Problem
from automation.playbook.models import load_playbook

BASE = """\
name: positions
segments:
  - name: big
    when: clv > 100
    touch: low
  - name: rest
    touch: none
stages:
  - name: active
    when: orders_count > 0
programs:
  active:
    none:
      - email: welcome
recurring:
  - name: yearly
    when: orders_count > 5
    steps:
      - email: welcome
"""


def problems(tmp_path: Path, text: str) -> list[Problem]:
    path = tmp_path / "pb.yaml"
    path.write_text(text)
    with pytest.raises(PlaybookError) as info:
        load_playbook(path)
    return list(info.value.problems)


def caret_under(problem: Problem) -> str:
    """The text of the source line from the caret to the end of its token."""
    rendered = problem.render().splitlines()
    source, caret = rendered[-2], rendered[-1]
    start = caret.index("^")
    return source[start:].split()[0]


def test_base_playbook_loads(tmp_path: Path) -> None:
    path = tmp_path / "pb.yaml"
    path.write_text(BASE)
    assert load_playbook(path).playbook.name == "positions"


def test_a_duplicate_segment_points_at_the_second_name_and_names_the_first(tmp_path: Path) -> None:
    text = BASE.replace("  - name: rest\n    touch: none\n", "  - name: big\n    touch: none\n")
    (problem,) = problems(tmp_path, text)
    assert (problem.line, problem.column) == (6, 11)
    assert problem.message == "segment names must be unique: big (first defined at line 3)"
    assert caret_under(problem) == "big"


def test_duplicate_stages_and_recurring_rules_are_each_reported_where_they_are(tmp_path: Path) -> None:
    text = (
        BASE.replace("programs:", "  - name: active\n    when: orders_count > 1\nprograms:")
        + "  - name: yearly\n    when: orders_count > 9\n    steps:\n      - email: welcome\n"
    )
    found = problems(tmp_path, text)
    assert [(p.line, p.column, p.message) for p in found] == [
        (11, 11, "stage names must be unique: active (first defined at line 9)"),
        (22, 11, "recurring rule names must be unique: yearly (first defined at line 18)"),
    ]
    assert [caret_under(p) for p in found] == ["active", "yearly"]


def test_a_catch_all_segment_that_is_not_last_is_pointed_at_and_names_the_one_it_hides(
    tmp_path: Path,
) -> None:
    text = BASE.replace("  - name: big\n    when: clv > 100\n    touch: low\n", "").replace(
        "    touch: none\n", "    touch: none\n  - name: big\n    when: clv > 100\n    touch: low\n"
    )
    (problem,) = problems(tmp_path, text)
    assert (problem.line, problem.column) == (3, 11)
    assert problem.message.startswith("catch-all segment 'rest' is not last")
    assert "segment 'big' (line 5) can never match" in problem.message
    assert caret_under(problem) == "rest"


def test_a_program_of_an_unknown_stage_points_at_its_key(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, BASE.replace("  active:\n    none:", "  actve:\n    none:"))
    assert (problem.line, problem.column) == (12, 3)
    assert problem.message == "program for unknown stage 'actve' (did you mean 'active'?)"
    assert caret_under(problem) == "actve:"


def test_a_wait_in_a_recurring_rule_points_at_the_wait_step(tmp_path: Path) -> None:
    text = BASE.replace(
        "    steps:\n      - email: welcome\n", "    steps:\n      - email: welcome\n      - wait: 1d\n"
    )
    (problem,) = problems(tmp_path, text)
    assert (problem.line, problem.column) == (20, 9)
    assert "`wait` is not allowed" in problem.message
    assert caret_under(problem) == "wait:"
