"""Goals are checked like every part of a playbook: file:line:column on the element that is wrong."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from automation.errors import PlaybookError, Problem
from automation.playbook.models import load_playbook
from automation.rules.compiled import compile_playbook

BASE = """\
name: goals
segments:
  - name: rest
    touch: none
stages:
  - name: fresh
    when: orders_count == 0
  - name: buyer
    when: orders_count > 0
goal:
  when: orders_count >= 1
  within: 7d
goals:
  fresh:
    when: events("activated") > 0
    within: 3d
"""
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def problems(tmp_path: Path, text: str, compile_too: bool = False) -> list[Problem]:
    path = tmp_path / "pb.yaml"
    path.write_text(text)
    with pytest.raises(PlaybookError) as info:
        loaded = load_playbook(path)
        if compile_too:
            compile_playbook(loaded, NOW)
    return list(info.value.problems)


def test_goals_load_and_compile(tmp_path: Path) -> None:
    path = tmp_path / "pb.yaml"
    path.write_text(BASE)
    compiled = compile_playbook(load_playbook(path), NOW)
    assert [(g.name, g.stage, g.within.days, g.text) for g in compiled.goals] == [
        ("playbook", None, 7, "orders_count >= 1"),
        ("fresh", "fresh", 3, 'events("activated") > 0'),
    ]
    # the stage goal's events(...) is recorded, so an incremental tick finds customers whose events arrived
    assert [type(atom).__name__ for atom in compiled.goal_clock] == ["EventWindow"]


def test_a_goal_rule_of_the_wrong_type_points_into_the_rule(tmp_path: Path) -> None:
    text = BASE.replace('when: orders_count >= 1', 'when: orders_count >= "one"')
    (problem,) = problems(tmp_path, text, compile_too=True)
    assert (problem.line, problem.column) == (11, 25)  # the string compared with a number
    assert "number" in problem.message or "int" in problem.message


def test_a_syntax_error_in_a_stage_goal_points_at_the_offending_character(tmp_path: Path) -> None:
    text = BASE.replace('when: events("activated") > 0', 'when: events("activated") >> 0')
    (problem,) = problems(tmp_path, text)
    assert problem.line == 15 and problem.column > 11
    assert problem.message.startswith("invalid rule")


def test_within_must_be_a_positive_duration(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, BASE.replace("within: 7d", "within: soon"))
    assert (problem.line, problem.column) == (12, 11)
    assert "duration" in problem.message
    (zero,) = problems(tmp_path, BASE.replace("within: 3d", "within: 0d"))
    assert (zero.line, zero.column) == (16, 13)
    assert "positive" in zero.message


def test_a_goal_needs_when_and_within_and_nothing_else(tmp_path: Path) -> None:
    (missing,) = problems(tmp_path, BASE.replace("  within: 7d\n", ""))
    assert missing.line == 11 and "within" in missing.message
    (unknown,) = problems(tmp_path, BASE.replace("  within: 7d\n", "  within: 7d\n  widthin: 2d\n"))
    assert (unknown.line, unknown.column) == (13, 3)
    assert "'within'" in unknown.message  # did you mean


def test_a_goal_for_an_unknown_stage_is_an_error_at_its_key(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, BASE.replace("goals:\n  fresh:", "goals:\n  frsh:"))
    assert (problem.line, problem.column) == (14, 3)
    assert problem.message == "goal for unknown stage 'frsh' (did you mean 'fresh'?)"


def test_a_stage_named_playbook_cannot_have_a_goal(tmp_path: Path) -> None:
    text = BASE.replace("name: fresh", "name: playbook").replace("goals:\n  fresh:", "goals:\n  playbook:")
    (problem,) = problems(tmp_path, text)
    assert (problem.line, problem.column) == (14, 3)
    assert "playbook's own goal" in problem.message
