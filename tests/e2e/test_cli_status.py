"""``automation status``, ``retry-dead`` and ``run --metrics-port`` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.e2e.test_cli_playbooks import EXE, run

AT = "2026-11-22T12:00:00Z"
LATER = "2026-11-22T12:30:00Z"
HTTP_WEBHOOKS = {
    "AUTOMATION_WEBHOOKS": "http",
    "AUTOMATION_WEBHOOK_SECRET": "whsec_dGVzdC1zZWNyZXQtMDEyMzQ1Njc4OWFiY2RlZmdoISE=",
}
# a full address, not masked as automation.masking does it ("j***@example.com")
UNMASKED_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]*[A-Za-z0-9_%+\-]{2}@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def _project(cwd: Path, customers: int, now: str | None = AT) -> Path:
    (cwd / "playbooks").mkdir()
    (cwd / "playbooks" / "lifecycle.yaml").write_text((ROOT / "playbooks" / "lifecycle.yaml").read_text())
    steps: list[tuple[str, ...]] = [("db", "upgrade")]
    if customers:
        steps += [
            ("sample-data", "sample", "--customers", str(customers), "--seed", "5")
            + (("--now", now) if now else ()),
            ("import", "customers", "sample/customers.csv"),
            ("import", "events", "sample/events.jsonl"),
        ]
    for args in steps:
        result = run(*args, cwd=cwd)
        assert result.returncode == 0, result.stderr
    return cwd


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _project(tmp_path_factory.mktemp("status"), 200)


def status_json(cwd: Path, *args: str) -> dict[str, Any]:
    result = run("status", "--format", "json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_status_and_retry_dead(project: Path) -> None:
    empty = run("status", cwd=project)
    assert empty.returncode == 0, empty.stderr
    assert "no playbook has ticked yet" in empty.stdout and "the outbox is empty" in empty.stdout

    assert run("tick", "--at", AT, cwd=project).returncode == 0
    # webhooks over HTTP with LOYALTY_WEBHOOK_URL unset: each webhook message is a dead letter naming it
    sent = run("dispatch", "--once", "--at", AT, cwd=project, env=HTTP_WEBHOOKS)
    assert sent.returncode == 1, sent.stderr
    assert "LOYALTY_WEBHOOK_URL is not set" in sent.stderr

    data = status_json(project, "--at", AT, "--dead", "3")
    assert data["at"] == "2026-11-22T12:00:00+00:00"
    [playbook] = data["playbooks"]
    assert playbook["playbook"] == "lifecycle" and playbook["ticks"] == 1 and playbook["customers"] == 200
    assert sum(playbook["stages"].values()) == 200
    assert playbook["last_tick"]["started_at"] == "2026-11-22T12:00:00+00:00"
    assert playbook["last_tick"]["transitions"] == 200
    outbox = data["outbox"]
    assert isinstance(outbox, dict)
    dead_webhooks = outbox["by_channel"]["webhook"]["dead"]
    assert dead_webhooks > 3 and outbox["by_status"]["dead"] == dead_webhooks
    assert outbox["by_channel"]["webhook"].get("pending", 0) == 0
    assert outbox["total"] == sum(outbox["by_status"].values())
    assert outbox["due"] == 0 and outbox["oldest_due"] is None
    dead = data["dead"]
    assert isinstance(dead, list) and len(dead) == 3
    assert {d["channel"] for d in dead} == {"webhook"}
    assert all("LOYALTY_WEBHOOK_URL is not set" in d["last_error"] for d in dead)
    assert [d["id"] for d in dead] == sorted((d["id"] for d in dead), reverse=True)  # same time: newest id

    table = run("status", "--at", AT, cwd=project)
    assert table.returncode == 0, table.stderr
    assert "Dead letters, newest first" in table.stdout and "Outbox" in table.stdout
    assert f"{dead_webhooks} dead letter(s) in all" in table.stdout
    assert not UNMASKED_EMAIL.search(table.stdout + json.dumps(data))

    for bad in (("--since", "garbage"), ("--since", "3 days"), ("--at", "yesterday")):
        result = run("retry-dead", *bad, cwd=project)
        assert result.returncode == 2, (bad, result.stdout, result.stderr)
        assert bad[0] in result.stderr and "Traceback" not in result.stderr
    assert "neither a duration" in run("retry-dead", "--since", "garbage", cwd=project).stderr
    assert run("status", "--format", "yaml", cwd=project).returncode == 2
    assert run("status", "--dead", "-1", cwd=project).returncode == 2

    none = run("retry-dead", "--channel", "email", "--at", LATER, cwd=project)
    assert none.returncode == 0 and "requeued 0 dead letter(s) (channel email)" in none.stdout
    before = run("retry-dead", "--since", "2026-11-22T12:00:01Z", "--at", LATER, cwd=project)
    assert "requeued 0 dead letter(s)" in before.stdout  # they were last due at 12:00:00
    requeued = run("retry-dead", "--since", "1h", "--playbook", "lifecycle", "--at", LATER, cwd=project)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == (
        f"requeued {dead_webhooks} dead letter(s) "
        "(last due since 2026-11-22 11:30:00 UTC, playbook lifecycle)"
    )

    after = status_json(project, "--at", LATER)
    outbox = after["outbox"]
    assert isinstance(outbox, dict)
    assert outbox["by_channel"]["webhook"] == {"pending": dead_webhooks}
    assert "dead" not in outbox["by_status"] and after["dead"] == []
    assert outbox["due"] >= dead_webhooks and outbox["oldest_due"] is not None
    assert run("retry-dead", "--at", LATER, cwd=project).stdout.strip() == "requeued 0 dead letter(s)"

    # with the variable set they go out (into files) this time
    resent = run(
        "dispatch",
        "--once",
        "--at",
        LATER,
        cwd=project,
        env={"LOYALTY_WEBHOOK_URL": "http://127.0.0.1:9/x", "AUTOMATION_WEBHOOKS": "folder"},
    )
    assert resent.returncode == 0, resent.stderr
    final = status_json(project, "--at", LATER)
    assert final["outbox"]["by_channel"]["webhook"] == {"sent": dead_webhooks}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_run_serves_metrics_and_stops_cleanly(tmp_path: Path) -> None:
    cwd = _project(tmp_path, 100, now=None)  # the worker runs at the real time: data as of now
    port = _free_port()
    env = {**os.environ, "AUTOMATION_TEMPLATES_DIR": str(ROOT / "templates")}
    env.pop("AUTOMATION_DATABASE_URL", None)
    with (tmp_path / "stdout").open("w") as out, (tmp_path / "stderr").open("w") as err_file:
        proc = subprocess.Popen(
            [str(EXE), "run", "--metrics-port", str(port), "--poll", "0.2"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err_file,
        )
    try:
        deadline = time.monotonic() + 60
        body = ""
        while time.monotonic() < deadline:
            status, body = _get(f"http://127.0.0.1:{port}/metrics")
            if status == 200 and 'automation_ticks_total{playbook="lifecycle"} 1' in body:
                break
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            time.sleep(0.2)
        else:
            raise AssertionError(f"no tick in the metrics within 60s:\n{body}")
        assert "automation_database_up 1" in body
        assert 'automation_customers{playbook="lifecycle",stage="' in body
        assert "automation_dispatch_claimed_total " in body
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, '{"status": "ok"}')
        # the worker keeps dispatching while it serves: its own counters reach the endpoint
        sent = re.compile(r'^automation_dispatch_messages_total\{channel="\w+",status="sent"\} [1-9]', re.M)
        deadline = time.monotonic() + 30
        while not sent.search(body) and time.monotonic() < deadline:
            time.sleep(0.2)
            body = _get(f"http://127.0.0.1:{port}/metrics")[1]
        assert sent.search(body), body
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
    assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 0  # the server went away with the worker


def test_run_with_a_busy_metrics_port_is_bad_input(tmp_path: Path) -> None:
    cwd = _project(tmp_path, 0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("run", "--metrics-port", str(port), cwd=cwd)
    assert result.returncode == 2, result.stderr
    assert f"--metrics-port: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
