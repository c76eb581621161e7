"""tick, dispatch, suppress and tasks as a user runs them, into the embedded file outbox."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import pytest

from tests.e2e.test_cli_playbooks import ROOT, run
from tests.e2e.worker_tools import load_sample

AT = "2026-11-22T12:00:00Z"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("delivery")
    (cwd / "playbooks").mkdir()
    (cwd / "playbooks" / "lifecycle.yaml").write_text((ROOT / "playbooks" / "lifecycle.yaml").read_text())
    return load_sample(run, cwd, customers=200, seed=5, now=AT)


def test_tick_dispatch_into_files_then_nothing_twice(project: Path) -> None:
    first = run("tick", "--at", AT, cwd=project)
    assert first.returncode == 0, first.stderr
    assert "lifecycle: evaluated everyone (first tick): 200 changed segment or stage" in first.stdout
    again = run("tick", "--at", AT, cwd=project)
    # nothing was written and no time passed: nobody to evaluate, nothing queued
    assert "lifecycle: evaluated 0 customers: 0 changed segment or stage" in again.stdout
    assert "0 actions queued" in again.stdout
    full = run("tick", "--at", AT, "--full", cwd=project)
    assert "lifecycle: evaluated everyone (requested): 0 changed segment or stage" in full.stdout
    assert "0 actions queued" in full.stdout

    sent = run("dispatch", "--once", "--at", AT, cwd=project)
    assert sent.returncode == 0, sent.stderr
    assert "email: files in outbox/email" in sent.stderr
    emails = sorted((project / "outbox" / "email").glob("*.eml"))
    assert emails, sent.stdout
    messages = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in emails]
    marketing = [m for m in messages if m["List-Unsubscribe"]]  # the others tell account owners of tasks
    assert marketing and all(m.get_body(("plain",)) is not None for m in marketing)
    assert all(m["Subject"].startswith("Task:") for m in messages if not m["List-Unsubscribe"])
    hooks = sorted((project / "outbox" / "webhook").glob("*.json"))
    assert hooks and json.loads(hooks[0].read_text())["url"] == "${LOYALTY_WEBHOOK_URL}"

    nothing = run("dispatch", "--once", "--at", AT, cwd=project)
    assert "dispatched 0 messages: nothing due" in nothing.stdout

    tasks = run("tasks", "list", cwd=project)
    assert tasks.returncode == 0 and " open task(s)" in tasks.stdout
    count = int(tasks.stdout.strip().splitlines()[-1].split()[0])
    assert count > 0


def test_suppress_and_tasks_bad_input(project: Path) -> None:
    added = run("suppress", "add", "cus_00001", "--channel", "sms", "--reason", "unsubscribed", cwd=project)
    assert added.returncode == 0 and "cus_00001: sms suppressed (unsubscribed)" in added.stdout
    listed = run("suppress", "list", "--customer", "cus_00001", cwd=project)
    assert "unsubscribed" in listed.stdout and "1 suppression(s)" in listed.stdout
    removed = run("suppress", "remove", "cus_00001", "--channel", "sms", cwd=project)
    assert "allowed again" in removed.stdout
    unknown = run("suppress", "add", "nobody", cwd=project)
    assert unknown.returncode == 2 and "no customer with id 'nobody'" in unknown.stderr
    missing = run("tasks", "done", "999999", cwd=project)
    assert missing.returncode == 2 and "no open task with id 999999" in missing.stderr
    assert "Traceback" not in unknown.stderr + missing.stderr
