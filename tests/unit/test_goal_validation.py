"""Goals are checked like every part of a playbook: file:line:column on the element that is wrong."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from automation.authoring.lint import lint_paths
from automation.cli import main
from automation.errors import PlaybookError, Problem
from automation.messages.store import TemplateStore
from automation.playbook.models import load_playbook
from automation.rules.compiled import compile_playbook
from tests.conftest import ROOT

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
    text = BASE.replace("when: orders_count >= 1", 'when: orders_count >= "one"')
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


def _project(tmp_path: Path, text: str) -> Path:
    (tmp_path / "playbooks").mkdir(parents=True)
    path = tmp_path / "playbooks" / "pb.yaml"
    path.write_text(text)
    return path


WITH_PROGRAM = BASE + "programs:\n  fresh:\n    none:\n      - email: welcome\n"


def test_lint_warns_of_goals_that_cannot_convert_or_always_do(tmp_path: Path) -> None:
    buyer = "goals:\n  buyer:\n    when: true\n    within: 1d\n  fresh:"
    text = WITH_PROGRAM.replace("goals:\n  fresh:", buyer)
    text = text.replace("  when: orders_count >= 1\n", "  when: true\n")
    _project(tmp_path, text)
    result = lint_paths([tmp_path / "playbooks"], TemplateStore(ROOT / "templates"))
    goal = sorted(
        (f.problem.line, f.problem.column, f.problem.message) for f in result.findings if f.rule == "goal"
    )
    assert goal == [
        (11, 9, "the playbook's goal is always true: every entry converts at once"),
        (
            14,
            3,
            "the goal of stage 'buyer' never converts: stage 'buyer' has no program, so no one enters one",
        ),
    ]
    assert {f.severity for f in result.findings if f.rule == "goal"} == {"warning"}
    bare = lint_paths([_project(tmp_path / "bare", BASE)], TemplateStore(ROOT / "templates"))
    assert [f.problem.line for f in bare.findings if f.rule == "goal"] == [10, 14]  # no program at all


def test_validate_and_schema_commands_know_goals(tmp_path: Path) -> None:
    path = _project(tmp_path, WITH_PROGRAM)
    env = {"AUTOMATION_TEMPLATES_DIR": str(ROOT / "templates")}
    ok = CliRunner().invoke(main, ["validate", str(path)], env=env)
    assert ok.exit_code == 0, ok.output
    path.write_text(WITH_PROGRAM.replace("goals:\n  fresh:", "goals:\n  frsh:"))
    bad = CliRunner().invoke(main, ["validate", str(path)], env=env)
    assert bad.exit_code == 2
    assert f"{path}:14:3: goal for unknown stage 'frsh' (did you mean 'fresh'?)" in bad.output
    schema = json.loads(CliRunner().invoke(main, ["schema"]).output)
    assert schema["properties"]["goal"]["anyOf"][0]["$ref"] == "#/$defs/Goal"
    assert schema["$defs"]["Goal"]["required"] == ["when", "within"]
