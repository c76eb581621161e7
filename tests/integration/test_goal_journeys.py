"""``automation test`` checks goals: the goals a customer reached, the message each is attributed to, and
the customer's cohort (a held-out customer converts too, after nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from automation.authoring.journeys import load_test, run_test
from automation.errors import PlaybookError
from automation.plan import assign
from tests.conftest import ROOT

TEMPLATES = ROOT / "templates"

PLAYBOOK = """\
name: shop
holdout: 30%
segments:
  - name: everyone
    touch: none
stages:
  - name: fresh
    when: orders_count == 0
  - name: buyer
    when: orders_count >= 1
programs:
  fresh:
    none:
      - email: welcome
        variants: {welcome: 50, tips_and_offers: 50}
      - wait: 1d
      - email: getting_started
goal:
  when: orders_count >= 1
  within: 7d
goals:
  fresh:
    when: events("activated") > 0
    within: 3d
"""


def _ids() -> tuple[str, str, str]:
    """A treated customer for each variant, and a held-out one (assignment is a stable hash)."""
    variants = {"welcome": 50, "tips_and_offers": 50}
    treated = [f"c{n}" for n in range(200) if not assign.in_holdout("shop", f"c{n}", 0.3)]
    a = next(c for c in treated if assign.variant("shop", "fresh/none#1", c, variants) == "welcome")
    b = next(c for c in treated if assign.variant("shop", "fresh/none#1", c, variants) == "tips_and_offers")
    held = next(f"c{n}" for n in range(200) if assign.in_holdout("shop", f"c{n}", 0.3))
    return a, b, held


def _test_file(tmp_path: Path, expect: str) -> Path:
    a, b, held = _ids()
    (tmp_path / "shop.yaml").write_text(PLAYBOOK)
    path = tmp_path / "shop.test.yaml"
    path.write_text(
        f"""\
playbook: shop.yaml
start: 2026-03-02T10:00:00Z
customers:
  - {{id: {a}, email: a@example.com, orders_count: 0}}
  - {{id: {b}, email: b@example.com, orders_count: 0}}
  - {{id: {held}, email: h@example.com, orders_count: 0}}
events:
  - {{customer: {a}, name: activated, at: +2h}}
changes:
  - {{customer: {a}, at: +2d, set: {{orders_count: 1}}}}
  - {{customer: {held}, at: +3d, set: {{orders_count: 1}}}}
  - {{customer: {b}, at: +9d, set: {{orders_count: 1}}}}
expect:
{expect.format(a=a, b=b, held=held)}"""
    )
    return path


PASSING = """\
  - at: +3h
    customer: {a}
    cohort: treatment
    sent: [{{channel: email, template: welcome}}]
    converted: [{{goal: fresh, template: welcome}}]
  - at: +3h
    customer: {b}
    sent: [{{channel: email, template: tips_and_offers}}]
    converted: []
  - at: +3d
    customer: {a}
    converted: [fresh, {{goal: playbook, template: getting_started}}]
  - at: +4d
    customer: {held}
    cohort: holdout
    sent: []
    converted: [{{goal: playbook, template: null}}]
  - at: +10d
    customer: {b}
    cohort: treatment
    converted: []
"""


def test_conversions_cohorts_and_attributed_templates_are_checked(tmp_path: Path) -> None:
    result = run_test(load_test(_test_file(tmp_path, PASSING)), TEMPLATES)
    assert result.failures == []
    assert result.checkpoints == 5


def test_a_wrong_goal_expectation_fails_readably(tmp_path: Path) -> None:
    wrong = PASSING.replace(
        "    converted: [fresh, {{goal: playbook, template: getting_started}}]",
        "    converted: [fresh, {{goal: playbook, template: welcome}}]",
    ).replace("    cohort: holdout", "    cohort: treatment").replace(
        "    converted: []\n  - at: +3d", "    converted: [playbook]\n  - at: +3d"
    )
    result = run_test(load_test(_test_file(tmp_path, wrong)), TEMPLATES)
    text = "\n".join(result.failures)
    assert len(result.failures) == 3
    assert "converted: playbook expected after welcome, got after getting_started" in text
    assert "cohort:  expected treatment, got holdout" in text
    assert "converted: expected [playbook], got [] (none)" in text


def test_bad_goal_expectations_are_located(tmp_path: Path) -> None:
    bad = "  - at: +1d\n    customer: {a}\n    cohort: treated\n"
    bad += "    converted: [{{goal: fresh, tempate: x}}]\n"
    path = _test_file(tmp_path, bad)
    with pytest.raises(PlaybookError) as info:
        load_test(path)
    found = {(p.line, p.column, p.message) for p in info.value.problems}
    assert (16, 13, "unknown cohort 'treated'; one of treatment, holdout, control") in found
    assert (17, 31, "unknown key 'tempate'; expected one of goal, template") in found
