"""What a stopped worker and a bad HTTP request leave in the logs: one clean line, never a traceback.

* ``automation run`` stopped by SIGTERM while a tick is running: the tick either finishes within
  ``--shutdown-timeout`` or its transaction is rolled back, and the log says which in one line;
* ``automation serve`` sent a request line or header too long for its HTTP parser: the client gets a
  4xx and the log gets one warning.

Everything listens on and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.worker_tools import EXE, Proc, cli_env

pytestmark = pytest.mark.slow

CUSTOMERS = 180_000  # enough for a first tick of seconds
WAIT = 60.0  # seconds: upper bound for starting a worker or a server here


def cli(*args: str, cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(EXE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def query(project: Path, sql: str) -> int:
    with closing(sqlite3.connect(project / "automation.db", timeout=30)) as conn:
        value = conn.execute(sql).fetchone()[0]
    assert isinstance(value, int)
    return value


@pytest.fixture(scope="module")
def big_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database with enough customers that a first tick takes seconds (written in
    SQL: a spread of plans, values, orders and sign-up dates over a few time zones) and the lifecycle
    playbook."""
    cwd = tmp_path_factory.mktemp("clean-logs")
    cli("db", "upgrade", cwd=cwd, env=cli_env())
    with closing(sqlite3.connect(cwd / "automation.db")) as conn, conn:
        conn.execute(
            f"WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < {CUSTOMERS}) "
            "INSERT INTO customer (id, email, first_name, timezone, plan, clv, orders_count, signed_up_at,"
            " attributes, updated_at) SELECT printf('cus_%06d', n), printf('customer.%d@example.com', n),"
            " 'Sam', CASE n % 3 WHEN 0 THEN 'UTC' WHEN 1 THEN 'Europe/Berlin' ELSE 'America/Chicago' END,"
            " CASE n % 7 WHEN 0 THEN 'enterprise' WHEN 1 THEN 'pro' ELSE 'free' END, (n % 40) * 400.0,"
            " n % 13, strftime('%Y-%m-%d %H:%M:%S.000000', 'now', printf('-%d days', n % 60)), '{}',"
            " strftime('%Y-%m-%d %H:%M:%S.000000', 'now') FROM k"
        )
    (cwd / "playbooks").mkdir()
    shutil.copy(ROOT / "playbooks" / "lifecycle.yaml", cwd / "playbooks" / "lifecycle.yaml")
    return cwd


@pytest.fixture
def project(big_project: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(big_project, tmp_path / "project"))


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.close()


def records(proc: Proc) -> list[dict[str, str]]:
    """The JSON log records on stderr (the channel lines the CLI echoes are skipped)."""
    return [json.loads(line) for line in proc.lines if line.startswith("{")]


# -- SIGTERM during a tick ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shutdown_timeout", "finished"),
    [
        pytest.param(1.0, False, id="tick-rolled-back"),
        pytest.param(120.0, True, id="tick-finishes-first"),
    ],
)
def test_sigterm_during_a_tick_is_one_clean_line(
    project: Path, procs: list[Proc], shutdown_timeout: float, finished: bool
) -> None:
    env = cli_env(AUTOMATION_TEMPLATES_DIR=str(ROOT / "templates"))
    proc = Proc(
        ["run", "--log-format", "json", "--poll", "0.2", "--shutdown-timeout", str(shutdown_timeout)],
        cwd=project,
        env=env,
        stdout=project / "run.out",
    )
    procs.append(proc)
    proc.wait_for_line(lambda line: "lifecycle: tick started" in line, WAIT, "the tick to start")
    time.sleep(0.3)  # well inside the tick, which takes seconds
    assert not any("lifecycle: tick in " in line for line in proc.lines), "the tick ended too soon"

    proc.signal(signal.SIGTERM)
    started = time.monotonic()
    code = proc.wait(shutdown_timeout + 10.0)
    took = time.monotonic() - started
    output = proc.stderr + proc.stdout
    assert code == 0, output
    assert "Traceback" not in output and "CancelledError" not in output, output
    assert took < shutdown_timeout + (10.0 if finished else 3.0)  # a tick given up is not waited for

    logged = records(proc)
    assert not [r for r in logged if r["level"] in ("error", "critical")], output
    stopping = [r for r in logged if r["message"].startswith("stopping: ")]
    if finished:
        assert [(r["level"], r["message"]) for r in stopping] == [
            ("info", "stopping: the tick of lifecycle in progress finished first")
        ]
        assert any(r["message"].startswith("lifecycle: tick in ") for r in logged)
        assert query(project, "SELECT count(*) FROM run_log") == 1
        assert query(project, "SELECT count(*) FROM customer_state") == CUSTOMERS
    else:
        assert [(r["level"], r["message"]) for r in stopping] == [
            (
                "warning",
                f"stopping: the tick of lifecycle in progress did not finish within {shutdown_timeout:.0f}s "
                "and is rolled back (it runs again at the next start)",
            )
        ]
        assert not any(r["message"].startswith("lifecycle: tick in ") for r in logged)
        # one transaction per tick: nothing of it was written
        for table in ("run_log", "customer_state", "stage_history", "enrollment", "outbox", "tick_cursor"):
            assert query(project, f"SELECT count(*) FROM {table}") == 0, table
    assert logged[-1]["message"] == "stopped"
