"""The official Segment Python client (``segment-analytics-python``) against ``automation serve``.

The server runs as a subprocess on a free port of 127.0.0.1 with a write key; the client sends
identify and track calls there (``host=``), plain and gzip-compressed, and the stored rows are
checked, including the change-log row a track call leaves for the next incremental tick.
"""

from __future__ import annotations

import socket
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from automation.db.tables import CHANGE, CUSTOMER, EVENT
from tests.e2e.worker_tools import Proc, cli_env, wait_until

analytics = pytest.importorskip("segment.analytics")

KEY = "wk_e2e_segment"
WAIT = 60.0  # seconds: upper bound for the server to start here


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def served(engine: Engine, tmp_path: Path, procs: list[Proc]) -> str:
    """``automation serve`` on the test database, with a write key; its base URL."""
    port = _free_port()
    env = cli_env(
        AUTOMATION_DATABASE_URL=engine.url.render_as_string(hide_password=False),
        AUTOMATION_WRITE_KEYS=f"other-key, {KEY}",
        AUTOMATION_SECRET_KEY="segment-e2e",
    )
    proc = Proc(
        ["serve", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=env, stdout=tmp_path / "out"
    )
    procs.append(proc)
    wait_until(lambda: f"127.0.0.1:{port}" in proc.stdout or not proc.alive(), WAIT, "the server to listen")
    assert proc.alive(), proc.stderr
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_the_segment_client_identifies_and_tracks(engine: Engine, served: str, gzip: bool) -> None:
    errors: list[Exception] = []
    client = analytics.Client(
        KEY, host=served, sync_mode=True, gzip=gzip, max_retries=0, on_error=lambda e, _b: errors.append(e)
    )
    client.identify(
        "cust-1",
        {"email": "ada@example.com", "firstName": "Ada", "plan": "pro", "company": "Analytical"},
        context={"timezone": "Europe/Berlin"},
    )
    with engine.connect() as conn:
        before = conn.execute(select(func.max(CHANGE.c.seq))).scalar_one()
    when = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
    client.track("cust-1", "Order Completed", {"total": 42}, timestamp=when, message_id="order-1")
    client.track("cust-1", "Order Completed", {"total": 42}, timestamp=when, message_id="order-1")
    client.flush()
    assert errors == []

    with engine.connect() as conn:
        customer = conn.execute(select(CUSTOMER).where(CUSTOMER.c.id == "cust-1")).one()
        events = conn.execute(select(EVENT)).all()
        changed = conn.execute(select(CHANGE.c.customer_id).where(CHANGE.c.seq > before)).scalars().all()
    assert (customer.email, customer.first_name, customer.plan) == ("ada@example.com", "Ada", "pro")
    assert customer.timezone == "Europe/Berlin" and customer.attributes == {"company": "Analytical"}
    assert [(e.customer_id, e.name, e.properties, e.message_id) for e in events] == [
        ("cust-1", "Order Completed", {"total": 42}, "order-1")
    ]
    assert events[0].occurred_at == when
    assert "cust-1" in changed  # the next incremental tick re-evaluates this customer


def test_a_wrong_write_key_is_refused(engine: Engine, served: str) -> None:
    errors: list[Exception] = []
    client = analytics.Client(
        "wrong", host=served, sync_mode=True, max_retries=0, on_error=lambda e, _b: errors.append(e)
    )
    with pytest.raises(Exception, match="invalid write key"):
        client.identify("cust-2", {"plan": "free"})
    with engine.connect() as conn:
        assert conn.execute(select(CUSTOMER).where(CUSTOMER.c.id == "cust-2")).first() is None
