"""``automation run`` reacts to new customers within seconds: the tick of a ``react: immediately``
playbook runs early when the change log grows, a ``react: on schedule`` one waits for its schedule, and
a burst of writes becomes a few ticks, not one per write.

Every playbook ticks every hour, so anything after the first tick is a reaction (on SQLite, and on
PostgreSQL when it is reachable, where the worker listens for the change log's notifications). Emails go
to the file outbox (no SMTP server is set).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from automation.db.connect import make_engine
from automation.db.triggers import CHANNEL
from tests.conftest import ROOT, fresh_postgres_database
from tests.e2e.worker_tools import EXE, Proc, check_json_logs, cli, cli_env, load_sample, wait_until

pytestmark = pytest.mark.slow

PLAYBOOK = """\
name: NAME
description: Welcomes new customers
schedule: every 1 hours
REACT
segments:
  - name: everyone
    touch: none
stages:
  - name: fresh
    when: orders_count < 2
programs:
  fresh:
    none:
      - email: welcome
"""
WAIT = 40.0  # seconds: upper bound for the first tick and for stopping
REACTION = 15.0  # seconds: the bound on reacting to a write (it takes 1-2 s)


def playbook(name: str, react: str | None) -> str:
    return PLAYBOOK.replace("NAME", name).replace("REACT\n", f"react: {react}\n" if react else "")


@pytest.fixture(scope="module")
def template_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrated SQLite database with a few sample customers and events as of now."""
    cwd = tmp_path_factory.mktemp("react-template")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    load_sample(partial(cli, env=env()), cwd, customers=10, seed=5, now=now)
    (cwd / "playbooks").mkdir()
    return cwd


@pytest.fixture
def project(template_project: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template_project, tmp_path / "project"))


def env(**extra: str) -> dict[str, str]:
    return cli_env(AUTOMATION_TEMPLATES_DIR=str(ROOT / "templates"), **extra)


def query(project: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(project / "automation.db", timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql, params))


def outbox_of(project: Path, customer_id: str) -> list[sqlite3.Row]:
    return query(project, "SELECT playbook, status FROM outbox WHERE customer_id = ?", customer_id)


def customers_csv(project: Path, ids: list[str]) -> Path:
    path = project / f"{ids[0]}.csv"
    rows = "".join(f"{i},{i}@example.com,Newt,0\n" for i in ids)
    path.write_text("id,email,first_name,orders_count\n" + rows)
    return path


def import_customers(project: Path, ids: list[str], **extra: str) -> None:
    result = cli("import", "customers", str(customers_csv(project, ids)), cwd=project, env=env(**extra))
    assert result.returncode == 0, result.stderr


def start_import(project: Path, ids: list[str]) -> subprocess.Popen[str]:
    """``automation import customers`` of ``ids``, started and not waited for."""
    return subprocess.Popen(
        [str(EXE), "import", "customers", str(customers_csv(project, ids))],
        cwd=project,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def start(procs: list[Proc], project: Path, **extra: str) -> Proc:
    proc = Proc(
        ["run", "--log-format", "json", "--poll", "0.2"],
        cwd=project,
        env=env(**extra),
        stdout=project / f"run-{len(procs)}.out",
    )
    procs.append(proc)
    return proc


def messages(proc: Proc) -> list[str]:
    return [r["message"] for r in check_json_logs(proc.lines)]


def ticks_started(proc: Proc, name: str) -> int:
    return messages(proc).count(f"{name}: tick started")


def first_ticks_done(proc: Proc, *names: str) -> None:
    for name in names:
        proc.wait_for_line(lambda line, n=name: f"{n}: tick in " in line, WAIT, f"the first tick of {name}")


def stop(proc: Proc) -> list[dict[str, Any]]:
    """SIGTERM, a clean exit, and the log records (none above info)."""
    proc.signal(signal.SIGTERM)
    assert proc.wait(WAIT) == 0, proc.stderr
    records = check_json_logs(proc.lines)
    assert not [r for r in records if r["level"] in ("warning", "error", "critical")], proc.stderr
    return records


def test_a_new_customer_is_evaluated_within_seconds_unless_the_playbook_reacts_on_schedule(
    project: Path, procs: list[Proc]
) -> None:
    (project / "playbooks" / "now.yaml").write_text(playbook("now", None))  # the default: immediately
    (project / "playbooks" / "later.yaml").write_text(playbook("later", "on schedule"))
    proc = start(procs, project)
    first_ticks_done(proc, "now", "later")

    began = time.monotonic()
    import_customers(project, ["newt-1"])
    rows = wait_until(lambda: outbox_of(project, "newt-1"), REACTION, "the new customer's welcome email")
    latency = time.monotonic() - began
    print(f"reaction latency (import command included): {latency:.2f}s")
    assert [r["playbook"] for r in rows] == ["now"]
    wait_until(
        lambda: [r for r in outbox_of(project, "newt-1") if r["status"] == "sent"], REACTION, "it sent"
    )
    assert list((project / "outbox").rglob("*.eml")), "the email is in the file outbox"

    time.sleep(2.0)  # a reaction of the other playbook, had there been one, would have happened by now
    assert [r["playbook"] for r in outbox_of(project, "newt-1")] == ["now"]
    assert ticks_started(proc, "later") == 1
    stop(proc)


def test_a_burst_of_imports_becomes_a_few_ticks(project: Path, procs: list[Proc]) -> None:
    (project / "playbooks" / "now.yaml").write_text(playbook("now", "immediately"))
    proc = start(procs, project)
    first_ticks_done(proc, "now")

    began = time.monotonic()
    ids = [f"burst-{i}" for i in range(20)]
    importing = [start_import(project, [customer_id]) for customer_id in ids]  # all at once
    for child in importing:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    burst = time.monotonic() - began
    wait_until(
        lambda: all(outbox_of(project, i) for i in ids), REACTION + burst, "an email for every new customer"
    )
    time.sleep(2.0)  # any tick still owed to the burst has started by now
    ticks = ticks_started(proc, "now") - 1
    print(f"{len(ids)} imports in {burst:.1f}s: {ticks} reactive tick(s)")
    # at most one reactive tick starts per second (REACT_EVERY), plus one for the last writes
    assert 1 <= ticks <= burst / 1.0 + 2
    assert ticks <= len(ids) // 2
    records = stop(proc)
    assert not any("maximum number of running instances" in r["message"] for r in records)


def test_no_writes_no_reactive_ticks(project: Path, procs: list[Proc]) -> None:
    (project / "playbooks" / "now.yaml").write_text(playbook("now", "immediately"))
    proc = start(procs, project)
    first_ticks_done(proc, "now")
    time.sleep(3.0)  # the ticks' own writes must not look like customer changes
    assert ticks_started(proc, "now") == 1
    stop(proc)


def test_postgresql_a_new_customer_is_evaluated_within_seconds(tmp_path: Path, procs: list[Proc]) -> None:
    with fresh_postgres_database(f"automation_react_{os.getpid()}") as url:
        (tmp_path / "playbooks").mkdir()
        (tmp_path / "playbooks" / "now.yaml").write_text(playbook("now", "immediately"))
        proc = start(procs, tmp_path, AUTOMATION_DATABASE_URL=url)
        first_ticks_done(proc, "now")
        engine = make_engine(url)

        def rows() -> list[Any]:
            with engine.connect() as conn:
                sql = text("SELECT playbook FROM outbox WHERE customer_id = :c")
                return list(conn.execute(sql, {"c": "newt-pg"}))

        try:
            began = time.monotonic()
            import_customers(tmp_path, ["newt-pg"], AUTOMATION_DATABASE_URL=url)
            wait_until(rows, REACTION, "the new customer's welcome email")
            print(f"PostgreSQL reaction latency (import command included): {time.monotonic() - began:.2f}s")
            records = stop(proc)  # the listening connection closed without a warning
            assert f"listening for changes (LISTEN {CHANNEL})" in [r["message"] for r in records]
        finally:
            engine.dispose()
