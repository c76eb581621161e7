"""What a stopped worker and a bad HTTP request leave in the logs: one clean line, never a traceback.

* ``automation run`` stopped by SIGTERM while a tick is running: the tick either finishes within
  ``--shutdown-timeout`` or its transaction is rolled back, and the log says which in one line;
* ``automation serve``, or the metrics server of ``automation run``, sent a request its HTTP parser
  refuses (a request line or header over the size limit, too many headers): the client gets a 4xx and
  the log gets one warning.

Everything listens on and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.worker_tools import EXE, Proc, cli_env, wait_until

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


# -- a request aiohttp's parser refuses -----------------------------------------------------------
def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def exchange(port: int, head: bytes) -> bytes:
    """Send ``head`` to 127.0.0.1:``port`` and read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def server(tmp_path: Path, procs: list[Proc]) -> tuple[Proc, int]:
    """``automation serve`` on a free port of 127.0.0.1, answering /healthz."""
    env = cli_env(AUTOMATION_TEMPLATES_DIR=str(ROOT / "templates"), AUTOMATION_SECRET_KEY="clean-logs")
    cli("db", "upgrade", cwd=tmp_path, env=env)
    port = free_port()
    proc = Proc(
        ["serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=tmp_path / "serve.out",
    )
    procs.append(proc)
    wait_until(lambda: f"127.0.0.1:{port}" in proc.stdout or not proc.alive(), WAIT, "the server to listen")
    assert proc.alive(), proc.stderr
    return proc, port


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        pytest.param(
            b"GET /unsubscribe/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            "request line too long (limit 8190 bytes)",
            id="long-url",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"b" * 20_000 + b"\r\n\r\n",
            "header too long (limit 8190 bytes)",
            id="long-header",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(b"X-H%d: 1\r\n" % n for n in range(200))
            + b"\r\n",
            "too many headers received",
            id="many-headers",
        ),
    ],
)
def test_a_request_the_parser_refuses_is_a_4xx_and_one_warning(
    server: tuple[Proc, int], head: bytes, reason: str
) -> None:
    proc, port = server
    answer = exchange(port, head)
    assert 400 <= status_of(answer) < 500, answer[:200]
    line = proc.wait_for_line(lambda text: "bad request from" in text, WAIT, "the warning")
    assert f"WARNING aiohttp.server: bad request from 127.0.0.1: {reason}" in line
    ok = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200  # the server goes on serving
    proc.signal(signal.SIGINT)
    assert proc.wait(WAIT) == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Error handling request" not in proc.stderr, proc.stderr
    assert [text for text in proc.lines if "bad request from" in text] == [line]


def test_the_metrics_server_logs_an_over_long_url_as_one_warning(tmp_path: Path, procs: list[Proc]) -> None:
    env = cli_env(AUTOMATION_TEMPLATES_DIR=str(ROOT / "templates"))
    cli("db", "upgrade", cwd=tmp_path, env=env)
    (tmp_path / "playbooks").mkdir()
    shutil.copy(ROOT / "playbooks" / "lifecycle.yaml", tmp_path / "playbooks" / "lifecycle.yaml")
    port = free_port()
    proc = Proc(
        ["run", "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
        cwd=tmp_path,
        env=env,
        stdout=tmp_path / "run.out",
    )
    procs.append(proc)
    proc.wait_for_line(lambda text: f"127.0.0.1:{port}/metrics" in text, WAIT, "the metrics server")
    answer = exchange(port, b"GET /metrics?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert 400 <= status_of(answer) < 500, answer[:200]
    line = proc.wait_for_line(lambda text: "bad request from" in text, WAIT, "the warning")
    assert (
        "WARNING aiohttp.server: bad request from 127.0.0.1: request line too long (limit 8190 bytes)" in line
    )
    proc.signal(signal.SIGTERM)
    assert proc.wait(WAIT) == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Error handling request" not in proc.stderr, proc.stderr
