"""``automation serve`` stopped with SIGTERM while ``/v1/batch`` requests stream in.

The server runs as a subprocess on a free port of 127.0.0.1 with a SQLite database. One request is
held in flight on purpose: its headers and half its body are sent, and the server's own
``automation_http_requests_in_flight`` says it is being handled. A thread then sends batches back to
back while the test sends SIGTERM. Checked: new connections are refused at once while the held
request is still waited for; its body, sent after the signal, is read and stored and answered 200;
the process exits 0 well within ``--shutdown-timeout``; every request answered 200 has all its
events stored (by ``messageId``); no request got any other status (no 5xx); the requests after the
stop got connection errors.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from automation.db.tables import EVENT
from tests.e2e.worker_tools import Proc, cli_env, wait_until

KEY = "wk_e2e_shutdown"
TOKEN = "mt_e2e_shutdown"
WAIT = 60.0  # seconds: upper bound for the server to start here
SHUTDOWN_TIMEOUT = 10.0
TRACKS = 20  # track calls per batch, after one identify
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _batch(name: str) -> tuple[bytes, set[str]]:
    """A batch that identifies customer ``name`` and tracks ``TRACKS`` events for it; its messageIds."""
    ids = {f"{name}-m{k}" for k in range(TRACKS)}
    calls = [{"type": "identify", "userId": name, "traits": {"plan": "pro"}}]
    calls += [{"type": "track", "userId": name, "event": "Ordered", "messageId": i} for i in sorted(ids)]
    return json.dumps({"batch": calls}).encode(), ids


@dataclass
class Sent:
    """One request of the stream: when it started, its messageIds, and its answer or its error."""

    started: float
    ids: set[str]
    status: int | None = None
    answer: object = None
    error: Exception | None = None


class Stream(threading.Thread):
    """Sends batches back to back on a kept-alive connection (a new one after each error)."""

    def __init__(self, port: int) -> None:
        super().__init__(name="batch-stream", daemon=True)
        self.port = port
        self.sent: list[Sent] = []
        self.halt = threading.Event()

    def answered(self) -> int:
        return sum(1 for s in list(self.sent) if s.status == 200)

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        n = 0
        while not self.halt.is_set():
            n += 1
            body, ids = _batch(f"stream-{n}")
            item = Sent(time.monotonic(), ids)
            try:
                conn.request("POST", "/v1/batch", body=body, headers=HEADERS)
                response = conn.getresponse()
                item.status, raw = response.status, response.read()
                item.answer = json.loads(raw) if raw else None
                if response.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                item.error = exc
                conn.close()
                time.sleep(0.01)
            self.sent.append(item)
        conn.close()


def _in_flight(port: int) -> int | None:
    """``automation_http_requests_in_flight`` as the server reports it (this scrape included)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        assert response.status == 200
        match = re.search(r"^automation_http_requests_in_flight (\d+)$", response.read().decode(), re.M)
    finally:
        conn.close()
    assert match, "no in-flight gauge"
    return int(match.group(1))


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # reset: the connection reached the backlog of the listening socket as it closed, and was
        # dropped unserved, which is what the client of a stopping server should see too
        return True
    return False


@pytest.fixture
def served(sqlite_engine: Engine, tmp_path: Path, procs: list[Proc]) -> Iterator[tuple[Proc, int]]:
    """``automation serve`` on the test database with a write key and a metrics token."""
    port = _free_port()
    env = cli_env(
        AUTOMATION_DATABASE_URL=sqlite_engine.url.render_as_string(hide_password=False),
        AUTOMATION_WRITE_KEYS=KEY,
        AUTOMATION_METRICS_TOKEN=TOKEN,
        AUTOMATION_SECRET_KEY="shutdown-e2e",
    )
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--shutdown-timeout", str(SHUTDOWN_TIMEOUT)]
    proc = Proc(args, cwd=tmp_path, env=env, stdout=tmp_path / "out")
    procs.append(proc)
    wait_until(lambda: f"127.0.0.1:{port}" in proc.stdout or not proc.alive(), WAIT, "the server to listen")
    assert proc.alive(), proc.stderr
    yield proc, port


def test_sigterm_lets_requests_in_flight_finish_and_loses_nothing_acknowledged(
    sqlite_engine: Engine, served: tuple[Proc, int]
) -> None:
    proc, port = served
    # a request held in flight: headers and half its body now, the rest after the signal
    held_body, held_ids = _batch("held")
    held = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    held.putrequest("POST", "/v1/batch")
    for name, value in HEADERS.items():
        held.putheader(name, value)
    held.putheader("Content-Length", str(len(held_body)))
    held.endheaders()
    held.send(held_body[: len(held_body) // 2])
    wait_until(lambda: _in_flight(port) == 2, 10, "the held request to be in flight")

    stream = Stream(port)
    stream.start()
    try:
        wait_until(lambda: stream.answered() >= 5, 30, "a few batches to be answered")
        signalled = time.monotonic()
        proc.signal(signal.SIGTERM)

        wait_until(lambda: _refused(port), 5, "new connections to be refused")
        proc.wait_for_line(lambda line: "stopping: no new connections" in line, 5, "the stopping line")
        time.sleep(0.5)
        assert proc.alive(), "the server exited without waiting for the request in flight"

        held.send(held_body[len(held_body) // 2 :])
        response = held.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {"success": True, "accepted": TRACKS + 1, "rejected": []}
        assert response.getheader("Connection", "").lower() == "close"
        held.close()

        assert proc.wait(SHUTDOWN_TIMEOUT) == 0
        took = time.monotonic() - signalled
        assert took < SHUTDOWN_TIMEOUT, f"exit took {took:.1f}s: the server waited out its timeout"
        exited = time.monotonic()

        def after_exit() -> bool:
            return sum(1 for s in list(stream.sent) if s.started > exited) >= 3

        wait_until(after_exit, 10, "requests after the exit")
    finally:
        stream.halt.set()
        stream.join(30)

    sent = stream.sent
    assert not stream.is_alive()
    statuses = {s.status for s in sent if s.error is None}
    assert statuses == {200}, f"statuses other than 200 (or a connection error): {statuses}"
    ok = [s for s in sent if s.status == 200]
    assert len(ok) >= 5
    for s in ok:
        assert s.answer == {"success": True, "accepted": TRACKS + 1, "rejected": []}
    errors = [s for s in sent if s.error is not None]
    assert errors and all(s.started > signalled for s in errors), "connection errors only after the signal"
    assert any(s.started < exited for s in errors), "no connection refused while the server was stopping"
    assert all(s.error is not None for s in sent if s.started > exited)

    with sqlite_engine.connect() as conn:
        stored = set(conn.execute(select(EVENT.c.message_id)).scalars())
    acknowledged = set().union(held_ids, *(s.ids for s in ok))
    missing = acknowledged - stored
    assert not missing, f"{len(missing)} acknowledged events were not stored, e.g. {sorted(missing)[:3]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().endswith("stopped"), proc.stderr
