"""Playbook loading: the example validates; every kind of mistake names its file, line and column."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from automation.authoring.validate import check_playbook, validate_paths
from automation.errors import PlaybookError
from automation.messages.store import TemplateStore
from automation.playbook.models import EmailStep, TaskStep, WaitStep, WebhookStep, load_playbook
from automation.rules.compiled import compile_playbook
from tests.conftest import ROOT

EXAMPLE = ROOT / "playbooks" / "lifecycle.yaml"
TEMPLATES = TemplateStore(ROOT / "templates")
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)


def write(tmp_path: Path, text: str, name: str = "pb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(PlaybookError) as info:
        check_playbook(path, TEMPLATES, NOW)
    return [p.render() for p in info.value.problems]


def mutate(tmp_path: Path, old: str, new: str) -> Path:
    text = EXAMPLE.read_text()
    assert old in text, old
    return write(tmp_path, text.replace(old, new, 1))


def test_the_example_playbook_loads_as_written() -> None:
    pb = load_playbook(EXAMPLE).playbook
    assert pb.name == "lifecycle"
    assert pb.schedule.every == timedelta(minutes=15)
    assert pb.quiet_hours is not None and (pb.quiet_hours.start, pb.quiet_hours.end) == (time(21), time(8))
    assert pb.frequency_cap is not None and (pb.frequency_cap.count, pb.frequency_cap.period) == (
        3,
        timedelta(days=7),
    )
    assert [s.name for s in pb.segments] == ["strategic", "growth", "self_serve"]
    assert [s.touch for s in pb.segments] == ["high", "low", "none"]
    assert pb.segments[2].when is None
    assert [s.name for s in pb.stages] == ["loyalty", "retention", "conversion", "acquisition"]
    none_steps = pb.program("acquisition", "none")
    assert isinstance(none_steps[0], EmailStep) and none_steps[0].email == "welcome"
    assert isinstance(none_steps[1], WaitStep) and none_steps[1].wait == timedelta(days=3)
    assert isinstance(none_steps[2], EmailStep) and none_steps[2].unless is not None
    task = pb.program("acquisition", "low")[2]
    assert isinstance(task, TaskStep) and task.assign == "owner" and task.due == timedelta(days=2)
    webhook = pb.program("loyalty", "none")[1]
    assert isinstance(webhook, WebhookStep) and webhook.url == "${LOYALTY_WEBHOOK_URL}"
    assert pb.recurring[0].name == "birthday_reward" and pb.recurring[0].once_per == "year"


def test_the_example_validates_with_its_templates() -> None:
    compiled = validate_paths([ROOT / "playbooks"], TEMPLATES)
    assert [c.name for c in compiled] == ["lifecycle"]
    assert set(compiled[0].recurring) == {"birthday_reward"}
    assert len(compiled[0].guards) == 3


def test_unknown_field_in_a_rule_points_at_it_with_a_suggestion(tmp_path: Path) -> None:
    path = mutate(tmp_path, "when: orders_count >= 2", "when: ordres_count >= 2")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:21:11: unknown field 'ordres_count' (did you mean 'orders_count'?)")
    assert problem.splitlines()[-1] == "    " + " " * 10 + "^"


def test_type_mismatch_is_caught_before_anything_runs(tmp_path: Path) -> None:
    path = mutate(tmp_path, 'plan == "enterprise"', "plan > 3")
    (problem,) = problems_of(path)
    assert ":9:34: cannot compare plan (string) with 3 (number)" in problem


def test_rule_syntax_error_has_the_column_inside_the_rule(tmp_path: Path) -> None:
    path = mutate(tmp_path, "orders_count >= 10 or", "orders_count >= or")
    (problem,) = problems_of(path)
    assert ":19:27: invalid rule: unexpected 'or'" in problem


def test_quoted_rule_columns_account_for_the_quote(tmp_path: Path) -> None:
    path = mutate(tmp_path, "when: orders_count == 1", 'when: "orders_cnt == 1"')
    (problem,) = problems_of(path)
    assert ":23:12: unknown field 'orders_cnt'" in problem


def test_unknown_playbook_field_with_suggestion(tmp_path: Path) -> None:
    path = mutate(tmp_path, "frequency_cap:", "frequncy_cap:")
    (problem,) = problems_of(path)
    assert ":5:1: unknown field 'frequncy_cap' (did you mean 'frequency_cap'?)" in problem


def test_unknown_step_option_with_suggestion(tmp_path: Path) -> None:
    path = mutate(tmp_path, "        due: 2d", "        dew: 2d")
    (problem,) = problems_of(path)
    assert ":39:9: unknown field 'dew' (did you mean 'due'?)" in problem


def test_step_without_a_kind(tmp_path: Path) -> None:
    path = mutate(tmp_path, "- wait: 14d", "- wiat: 14d")
    (problem,) = problems_of(path)
    assert ":47:9: a step has exactly one of: email, sms, webhook, task, wait" in problem


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("touch: low", "touch: medium", ":13:12: touch: touch must be one of: high, low, none"),
        (
            'quiet_hours: "21:00-08:00"',
            'quiet_hours: "25:00-08:00"',
            ":4:14: quiet_hours: hours go from 00 to 23",
        ),
        (
            "frequency_cap: 3 per 7d",
            "frequency_cap: 3 every week",
            ':5:16: frequency_cap: expected "<count> per',
        ),
        (
            "schedule: every 15 minutes",
            "schedule: every fortnight",
            ':3:11: schedule: expected "every 15 minutes"',
        ),
        (
            "schedule: every 15 minutes",
            'schedule: cron "61 * * * *"',
            ":3:11: schedule: invalid cron expression",
        ),
        (
            "- wait: 3d",
            "- wait: 3 days",
            ":31:15: wait: expected a duration like 3d, 12h, 90m or 2w, got '3 days'",
        ),
        (
            "assign: owner\n        due: 1d",
            "assign: nobody\n        due: 1d",
            ":42:17: assign: assign takes `owner`",
        ),
        ("url: ${LOYALTY_WEBHOOK_URL}", "url: loyalty.example.com", ":64:14: url: expected an http(s) URL"),
        (
            "  - name: growth",
            "  - name: strategic",
            ":11:11: segment names must be unique: strategic (first defined at line 8)",
        ),
        (
            "  acquisition:\n    none:",
            "  acquistion:\n    none:",
            ":28:3: program for unknown stage 'acquistion' (did you mean 'acquisition'?)",
        ),
        (
            "    once_per: year",
            "    once_per: decade",
            ":74:15: once_per: Input should be 'day', 'week', 'month' or",
        ),
        (
            'stage in ["retention", "loyalty"]',
            'stage in ["retnetion", "loyalty"]',
            ":73:47: unknown stage 'retnetion' (did you mean 'retention'?)",
        ),
        (
            "- email: welcome",
            "- email: welcom",
            ":30:16: unknown email template 'welcom': template file not found",
        ),
    ],
)
def test_each_mistake_is_reported_where_it_is(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = mutate(tmp_path, old, new)
    rendered = "\n".join(problems_of(path))
    assert expected in rendered


def test_catch_all_segment_must_be_last(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace(
        '  - name: strategic\n    when: clv >= 10000 or plan == "enterprise"\n', "  - name: strategic\n"
    )
    (problem,) = problems_of(write(tmp_path, text))
    assert ":8:11: catch-all segment 'strategic' is not last: it has no `when`" in problem
    assert "so segment 'growth' (line 10) can never match" in problem


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = (
        EXAMPLE.read_text()
        .replace("orders_count == 1", "ordres == 1")
        .replace("clv >= 1000\n", 'clv >= "x"\n')
    )
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 2


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsegments: [\n  - a\n")
    with pytest.raises(PlaybookError) as info:
        load_playbook(path)
    (problem,) = info.value.problems
    assert problem.path == path and problem.line >= 2 and problem.message.startswith("invalid YAML")


def test_a_playbook_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError, match="a playbook is a mapping"):
        load_playbook(write(tmp_path, "- just\n- a list\n"))


def test_missing_required_fields(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError) as info:
        load_playbook(write(tmp_path, "name: x\n"))
    messages = [p.message for p in info.value.problems]
    assert "missing required field 'segments'" in messages
    assert "missing required field 'stages'" in messages


def test_missing_file() -> None:
    with pytest.raises(PlaybookError, match="file not found"):
        load_playbook(Path("/nonexistent/playbook.yaml"))


def test_duplicate_playbook_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(EXAMPLE.read_text())
    (tmp_path / "b.yaml").write_text(EXAMPLE.read_text())
    with pytest.raises(PlaybookError, match="already used by"):
        validate_paths([tmp_path], TEMPLATES)


def test_extensions_parse(tmp_path: Path) -> None:
    text = (
        EXAMPLE.read_text()
        .replace(
            "frequency_cap: 3 per 7d",
            "frequency_cap: 3 per 7d\ntimezone: Europe/Berlin\nreentry: never\npriority: 5",
        )
        .replace("schedule: every 15 minutes", 'schedule: cron "*/5 * * * *"')
    )
    pb = compile_playbook(load_playbook(write(tmp_path, text)), NOW).loaded.playbook
    assert pb.timezone == "Europe/Berlin" and pb.reentry.mode == "never" and pb.priority == 5
    assert pb.schedule.cron == "*/5 * * * *"
