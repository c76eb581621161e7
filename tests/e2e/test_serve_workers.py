"""``automation serve --workers N``: N processes on one port, stopped together.

The server runs as a subprocess in a session of its own (so a signal can go to its whole process
group, as systemd's default ``KillMode`` sends it) on a free port of 127.0.0.1, on the test database
(SQLite, and PostgreSQL when reachable). Checked: every worker announces itself and answers; batches
sent over many connections are all stored once; SIGTERM to the whole group drains and exits 0 with
nothing cut off; a worker that dies on its own stops the others and the parent exits 1; workers whose
parent is killed stop by themselves; ``--workers`` with port 0 is refused with exit code 2.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from automation.db.tables import EVENT
from tests.e2e.worker_tools import EXE, cli_env, wait_until

KEY = "wk_e2e_workers"
WAIT = 60.0  # seconds: upper bound for the workers to start here
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Server:
    """``automation serve --workers N`` in a new session; its output is collected."""

    def __init__(self, engine: Engine, cwd: Path, workers: int, port: int) -> None:
        env = cli_env(
            AUTOMATION_DATABASE_URL=engine.url.render_as_string(hide_password=False),
            AUTOMATION_WRITE_KEYS=KEY,
        )
        args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        self.port = port
        self.output: list[str] = []
        self.popen = subprocess.Popen(
            [str(EXE), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.output.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.output)

    def workers(self) -> list[int]:
        """The pids of the parent's children."""
        path = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except FileNotFoundError:
            return []

    def kill_all(self) -> None:
        with_children = [self.popen.pid, *self.workers()]
        for pid in with_children:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.popen.wait(10)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.kill_all()
        self.reader.join(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@pytest.fixture
def server(engine: Engine, tmp_path: Path) -> Iterator[Server]:
    started = Server(engine, tmp_path, workers=2, port=_free_port())
    try:
        wait_until(
            lambda: (
                all(f"worker {k} of 2" in started.text() for k in (1, 2)) or started.popen.poll() is not None
            ),
            WAIT,
            "both workers to listen",
        )
        assert started.popen.poll() is None, started.text()
        yield started
    finally:
        started.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _post(port: int, calls: list[dict[str, object]]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a new connection each time
    try:
        conn.request("POST", "/v1/batch", body=json.dumps({"batch": calls}), headers=HEADERS)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_workers_share_the_port_and_stop_together_on_a_group_signal(engine: Engine, server: Server) -> None:
    assert _post(server.port, [{"type": "identify", "userId": "w1", "traits": {"plan": "pro"}}]) == 200
    batches = [
        [{"type": "track", "userId": "w1", "event": "Viewed", "messageId": f"b{b}-m{m}"} for m in range(20)]
        for b in range(40)
    ]
    statuses: list[int] = []

    def send(part: list[list[dict[str, object]]]) -> None:
        statuses.extend(_post(server.port, calls) for calls in part)

    threads = [threading.Thread(target=send, args=(batches[k::8],)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 40
    with engine.connect() as conn:
        stored = conn.execute(select(func.count(), func.count(func.distinct(EVENT.c.message_id)))).one()
    assert tuple(stored) == (800, 800)

    children = server.workers()
    assert len(children) == 2
    os.killpg(server.popen.pid, signal.SIGTERM)  # the parent and both workers, as systemd does
    assert server.popen.wait(WAIT) == 0, server.text()
    assert not any(_alive(pid) for pid in children)
    output = server.text()
    assert "stopped" in output and "cut off" not in output and "Traceback" not in output


def test_a_worker_that_dies_stops_the_others_and_the_parent_fails(server: Server) -> None:
    first, second = server.workers()
    os.kill(first, signal.SIGKILL)
    assert server.popen.wait(WAIT) == 1
    wait_until(lambda: not _alive(second), WAIT, "the other worker to stop")
    assert "exited with -9; stopping the other workers" in server.text()


def test_workers_stop_by_themselves_when_the_parent_is_killed(server: Server) -> None:
    children = server.workers()
    os.kill(server.popen.pid, signal.SIGKILL)
    server.popen.wait(10)
    wait_until(lambda: not any(_alive(pid) for pid in children), WAIT, "the orphaned workers to stop")
    with closing(socket.socket()) as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0  # nobody listens any more


def test_workers_need_a_fixed_port(engine: Engine, tmp_path: Path) -> None:
    started = Server(engine, tmp_path, workers=2, port=0)
    assert started.popen.wait(WAIT) == 2
    deadline = time.monotonic() + 5
    while "--workers: needs a fixed --port" not in started.text() and time.monotonic() < deadline:
        time.sleep(0.05)
    started.close()
    assert "--workers: needs a fixed --port" in started.text() and "Traceback" not in started.text()
