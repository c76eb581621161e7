"""``automation test``: the shipped file passes, a wrong expectation fails readably, a bad file is located."""

from __future__ import annotations

from pathlib import Path

import pytest

from automation.authoring.journeys import load_test, run_test, run_tests
from automation.errors import PlaybookError
from tests.conftest import ROOT

SHIPPED = ROOT / "playbooks" / "lifecycle.test.yaml"
TEMPLATES = ROOT / "templates"


def copy_with(tmp_path: Path, old: str, new: str) -> Path:
    """The shipped test with one line changed, next to a copy of the playbook."""
    (tmp_path / "lifecycle.yaml").write_text((ROOT / "playbooks" / "lifecycle.yaml").read_text())
    text = SHIPPED.read_text()
    assert old in text
    path = tmp_path / "lifecycle.test.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_the_shipped_file_passes() -> None:
    [result] = run_tests([ROOT / "playbooks"], TEMPLATES)
    assert result.path == SHIPPED
    assert result.failures == []
    assert result.checkpoints == 20


def test_it_covers_every_stage_and_touch_model() -> None:
    test = load_test(SHIPPED)
    stages = {c.stage for c in test.checkpoints if c.check_stage}
    assert stages == {"acquisition", "conversion", "retention", "loyalty"}
    sent = {(m.channel, m.template) for c in test.checkpoints for m in c.sent or ()}
    assert {
        ("email", "welcome"),
        ("email", "getting_started"),
        ("task", "onboarding_call"),
        ("task", "kickoff_meeting"),
        ("email", "tips_and_offers"),
        ("sms", "feedback_survey"),
        ("task", "check_in"),
        ("task", "quarterly_review"),
        ("email", "vip_welcome"),
        ("webhook", "loyalty_points"),
        ("email", "birthday_reward"),
    } <= sent


def test_a_wrong_expectation_fails_with_a_readable_diff(tmp_path: Path) -> None:
    path = copy_with(
        tmp_path,
        "    customer: ada\n    sent: [{channel: email, template: getting_started}]",
        "    customer: ada\n    stage: retention\n    sent: [{channel: sms, template: getting_started}]",
    )
    line = path.read_text().splitlines().index("    stage: retention") - 1  # the `- at:` line, 1-based
    result = run_test(load_test(path), TEMPLATES)
    assert not result.ok
    [failure] = result.failures
    assert failure.splitlines() == [
        f"{path}:{line}: at +3d (2026-03-05 10:00 UTC), customer ada "
        "(messages since +0s (2026-03-02 10:00 UTC)):",
        "    stage:   expected retention, got acquisition",
        "    sent:    expected [sms getting_started]",
        "             got      [email getting_started]",
        "             - missing:    [sms getting_started]",
        "             + unexpected: [email getting_started]",
    ]


def test_not_sent_is_checked(tmp_path: Path) -> None:
    path = copy_with(
        tmp_path,
        "    not_sent: [{channel: email, template: welcome}]",
        "    not_sent: [{channel: task, template: kickoff_meeting}]",
    )
    [failure] = run_test(load_test(path), TEMPLATES).failures
    assert "not_sent: task kickoff_meeting was sent" in failure


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  - at: +3d\n    customer: ada", "  - at: soon\n    customer: ada", "'soon' is not a time"),
        ("    customer: bea\n    stage", "    customer: nobody\n    stage", "unknown customer 'nobody'"),
        (
            "orders_count: 0, clv: 50, signed_up_at: -1h}",
            "ordres: 0, signed_up_at: -1h}",
            "unknown customer field",
        ),
        ("    sent: []\n    not_sent", "    snet: []\n    not_sent", "unknown key 'snet'"),
    ],
)
def test_a_malformed_file_is_reported_with_file_and_line(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = copy_with(tmp_path, old, new)
    changed = new.splitlines()[0]
    expected_line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if changed in text)
    with pytest.raises(PlaybookError) as info:
        load_test(path)
    [problem] = info.value.problems
    assert message in problem.message
    assert problem.path == path
    assert problem.line in (expected_line, expected_line + 1)


def test_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "x.test.yaml"
    path.write_text("playbook: nope.yaml\ncustomers: []\n")
    with pytest.raises(PlaybookError) as info:
        load_test(path)
    text = str(info.value)
    assert "missing `start:`" in text and "missing `expect:`" in text
    assert f"{path}:1:" in text and "playbook 'nope.yaml' not found" in text
