"""``automation explain`` as a user runs it: subprocess, exit codes, text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import update

from automation.db.connect import make_engine
from automation.db.tables import EVENT
from tests.conftest import ROOT
from tests.e2e.test_cli_playbooks import run

AT = "2026-11-22T12:00:00Z"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("explain")
    (cwd / "customers.csv").write_text(
        "id,email,phone,timezone,owner_email,plan,clv,orders_count,signed_up_at\n"
        "ref,ref@example.com,+14155550100,Europe/Berlin,owner@example.com,starter,20000,1,2025-01-01T00:00:00Z\n"
        "tok,tok@example.com,+14155550101,Asia/Tokyo,owner@example.com,starter,10,0,2026-11-20T00:00:00Z\n"
        "evt,evt@example.com,+14155550102,America/New_York,,starter,10,0,2025-01-01T00:00:00Z\n"
    )
    (cwd / "events.jsonl").write_text(
        '{"customer_id": "ref", "name": "referral_sent", "occurred_at": "2026-11-19T10:00:00Z"}\n'
        # evt: 12 page views, stored newest first on purpose, then an order and one event after AT
        + "".join(
            f'{{"customer_id": "evt", "name": "page_viewed", "occurred_at": "2026-11-{day:02d}T09:00:00Z", '
            f'"properties": {{"page": {day}}}}}\n'
            for day in range(21, 9, -1)
        )
        + '{"customer_id": "evt", "name": "Order Completed", "occurred_at": "2026-11-22T11:59:59Z", '
        '"properties": {"total": 42, "email": "grace.hopper@example.com", "phone": "+14155550199"}}\n'
        '{"customer_id": "evt", "name": "later", "occurred_at": "2026-11-23T00:00:00Z"}\n'
    )
    (cwd / "playbooks").mkdir()
    (cwd / "playbooks" / "lifecycle.yaml").write_text((ROOT / "playbooks" / "lifecycle.yaml").read_text())
    for args in (
        ("db", "upgrade"),
        ("import", "customers", "customers.csv"),
        ("import", "events", "events.jsonl"),
    ):
        result = run(*args, cwd=cwd)
        assert result.returncode == 0, result.stderr
    # the order as sent over the HTTP API would carry its messageId (an event file has no such column)
    engine = make_engine(f"sqlite:///{cwd / 'automation.db'}")
    with engine.begin() as conn:
        conn.execute(update(EVENT).where(EVENT.c.name == "Order Completed").values(message_id="order-1001"))
    engine.dispose()
    return cwd


def test_explain_text(project: Path) -> None:
    result = run("explain", "ref", "--at", AT, cwd=project)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "segment: strategic (touch high)   stage: loyalty" in out
    assert "-> loyalty: true" in out
    assert "false    orders_count >= 10" in out
    assert 'true     events("referral_sent", within="90d") > 0' in out
    assert "would enter loyalty program high" in out
    assert "vip_thank_you_call   would be sent to owner@example.com" in out
    assert out.endswith("\nlast events (1 of 1 events):\n  2026-11-19 10:00:00 UTC  referral_sent  -\n")


def _event_lines(out: str) -> list[str]:
    tail = out[out.index("\nlast events (") + 1 :].splitlines()
    return tail[1:]


def test_explain_lists_the_latest_events(project: Path) -> None:
    result = run("explain", "evt", "--at", AT, cwd=project)
    assert result.returncode == 0, result.stderr
    assert (
        "\nlast events (10 of 13 events; 1 later, after 2026-11-22 12:00 UTC, not shown):\n" in result.stdout
    )
    lines = _event_lines(result.stdout)
    assert len(lines) == 10
    assert lines[0] == (
        "  2026-11-22 11:59:59 UTC  Order Completed  order-1001  "
        '{"email": "g***@example.com", "phone": "+14*******99", "total": 42}'
    )
    assert lines[1] == '  2026-11-21 09:00:00 UTC  page_viewed      -           {"page": 21}'
    assert lines[-1].startswith("  2026-11-13 09:00:00 UTC  page_viewed") and lines[-1].endswith(
        '{"page": 13}'
    )
    times = [line.split(" UTC")[0] for line in lines]
    assert times == sorted(times, reverse=True)
    assert "grace.hopper" not in result.stdout and "4155550199" not in result.stdout

    two = run("explain", "evt", "--at", AT, "--events", "2", cwd=project)
    assert two.returncode == 0, two.stderr
    assert "last events (2 of 13 events; 1 later" in two.stdout
    assert _event_lines(two.stdout) == lines[:2]


def test_explain_events_zero_and_json(project: Path) -> None:
    plain = run("explain", "evt", "--at", AT, "--events", "0", cwd=project)
    assert plain.returncode == 0, plain.stderr
    assert "last events" not in plain.stdout and "page_viewed" not in plain.stdout
    assert "outbox: nothing for this customer yet" in plain.stdout

    result = run("explain", "evt", "--at", AT, "--events", "3", "--format", "json", cwd=project)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["events_total"], data["events_later"]) == (13, 1)
    assert data["events"] == [
        {
            "occurred_at": "2026-11-22T11:59:59+00:00",
            "name": "Order Completed",
            "message_id": "order-1001",
            "properties": {"total": 42, "email": "grace.hopper@example.com", "phone": "+14155550199"},
        },
        {
            "occurred_at": "2026-11-21T09:00:00+00:00",
            "name": "page_viewed",
            "message_id": None,
            "properties": {"page": 21},
        },
        {
            "occurred_at": "2026-11-20T09:00:00+00:00",
            "name": "page_viewed",
            "message_id": None,
            "properties": {"page": 20},
        },
    ]
    hidden = run("explain", "evt", "--at", AT, "--events", "0", "--format", "json", cwd=project)
    assert hidden.returncode == 0, hidden.stderr
    assert not {"events", "events_total", "events_later"} & set(json.loads(hidden.stdout))

    negative = run("explain", "evt", "--events", "-1", cwd=project)
    assert negative.returncode == 2
    assert "-1 is not in the range x>=0" in negative.stderr


def test_explain_a_customer_without_events(project: Path) -> None:
    result = run("explain", "tok", "--at", AT, cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\nlast events: none\n")
    data = json.loads(run("explain", "tok", "--at", AT, "--format", "json", cwd=project).stdout)
    assert (data["events"], data["events_total"], data["events_later"]) == ([], 0, 0)


def test_explain_json_with_a_playbook_and_a_reason(project: Path) -> None:
    result = run(
        "explain", "tok", "--playbook", "playbooks/lifecycle.yaml", "--at", AT, "--format=json", cwd=project
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    pb = data["playbooks"][0]
    assert (pb["segment"], pb["stage"]) == ("self_serve", "acquisition")
    [action] = pb["actions"]
    assert (action["template"], action["status"], action["reason"]) == (
        "welcome",
        "suppressed",
        "quiet hours until 08:00 Asia/Tokyo",
    )
    acquisition = next(r for r in pb["rules"] if r["name"] == "acquisition")
    assert acquisition["values"]["days_since(signed_up_at)"] == 2


def test_explain_after_a_tick_shows_the_program_step_and_the_outbox(project: Path) -> None:
    result = run("tick", "--at", AT, cwd=project)
    assert result.returncode == 0, result.stderr
    result = run("explain", "tok", "--at", "2026-11-22T12:30:00Z", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "acquisition program none, step 3 of 3 (email: getting_started) due" in result.stdout
    assert "welcome" in result.stdout and "pending" in result.stdout


def test_unknown_customer_exits_2(project: Path) -> None:
    result = run("explain", "nobody", "--at", AT, cwd=project)
    assert result.returncode == 2
    assert "no customer with id 'nobody'" in result.stderr
    assert "Traceback" not in result.stderr


# -- automation test ------------------------------------------------------------------------------
def test_playbook_tests_pass_from_the_default_folder(tmp_path: Path) -> None:
    (tmp_path / "playbooks").mkdir()
    for name in ("lifecycle.yaml", "lifecycle.test.yaml"):
        (tmp_path / "playbooks" / name).write_text((ROOT / "playbooks" / name).read_text())
    result = run("test", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lifecycle.test.yaml: ok (20 checkpoints)" in result.stdout
    validate = run("validate", "playbooks", cwd=tmp_path)
    assert validate.returncode == 0 and "lifecycle.test.yaml" not in validate.stdout


def test_a_failing_expectation_exits_1(tmp_path: Path) -> None:
    (tmp_path / "lifecycle.yaml").write_text((ROOT / "playbooks" / "lifecycle.yaml").read_text())
    (tmp_path / "t.test.yaml").write_text(
        "playbook: lifecycle.yaml\nstart: 2026-03-02T10:00:00Z\n"
        "customers:\n  - {id: ada, email: a@example.com, timezone: Europe/Berlin, signed_up_at: -1h}\n"
        "expect:\n  - at: +1h\n    customer: ada\n    stage: retention\n"
        "    sent: [{channel: sms, template: welcome}]\n"
    )
    result = run("test", str(tmp_path / "t.test.yaml"), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"{tmp_path / 't.test.yaml'}:6: at +1h" in result.stdout
    assert "stage:   expected retention, got acquisition" in result.stdout
    assert "+ unexpected: [email welcome]" in result.stdout


def test_a_malformed_test_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "lifecycle.yaml").write_text((ROOT / "playbooks" / "lifecycle.yaml").read_text())
    bad = tmp_path / "bad.test.yaml"
    bad.write_text(
        "playbook: lifecycle.yaml\nstart: 2026-03-02T10:00:00Z\ncustomers:\n  - {id: ada}\n"
        "expect:\n  - at: tomorrow\n    customer: ada\n    stage: acquisition\n"
    )
    result = run("test", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{bad}:6:" in result.stderr and "'tomorrow' is not a time" in result.stderr
    assert "Traceback" not in result.stderr
