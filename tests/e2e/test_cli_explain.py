"""``automation explain`` as a user runs it: subprocess, exit codes, text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    )
    (cwd / "events.jsonl").write_text(
        '{"customer_id": "ref", "name": "referral_sent", "occurred_at": "2026-11-19T10:00:00Z"}\n'
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
