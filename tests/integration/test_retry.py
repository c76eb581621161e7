"""``automation.outbox.retry`` on SQLite and PostgreSQL: which dead letters are requeued and how, and the
``--since`` parser.

The rows are written directly, so every combination of filters, time-to-live and lease is covered
without a dispatch run; ``tests/integration/test_status.py`` requeues real dead letters and sends them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from automation.db.tables import OUTBOX
from automation.errors import InputError
from automation.outbox.retry import REQUEUED_PREFIX, parse_since, retry_dead
from automation.outbox.sink import DEFAULT_TTL

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=3)


def message(key: str, **fields: Any) -> dict[str, Any]:
    """An outbox row: a dead email of playbook ``lifecycle`` that was due at ``NOW``, unless overridden."""
    row: dict[str, Any] = {
        "idempotency_key": key,
        "playbook": "lifecycle",
        "customer_id": f"c-{key}",
        "channel": "email",
        "template": "welcome",
        "payload": {},
        "status": "dead",
        "due_at": NOW,
        "expires_at": NOW + DEFAULT_TTL,
        "attempts": 8,
        "lease_owner": None,
        "lease_until": None,
        "last_error": "550 mailbox unavailable",
        "created_at": NOW - timedelta(hours=1),
    }
    row.update(fields)
    return row


def outbox(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every row by idempotency key."""
    with engine.connect() as conn:
        return {r.idempotency_key: dict(r._mapping) for r in conn.execute(select(OUTBOX))}


def seed(engine: Engine) -> None:
    rows = [
        message("old", due_at=NOW - timedelta(days=2)),
        message("new"),
        message("no-ttl", expires_at=None, last_error=None),
        message("sms", channel="sms", template="reminder"),
        message("other-playbook", playbook="winback"),
        message("leased", lease_owner="w1", lease_until=NOW + timedelta(minutes=5)),
        message("long-error", last_error="x" * 2000),
        message("sent", status="sent", last_error=None),
        message("retry", status="retry", attempts=2, last_error="timeout"),
    ]
    with engine.begin() as conn:
        conn.execute(insert(OUTBOX), rows)


def test_filters_choose_which_dead_letters_come_back(engine: Engine) -> None:
    seed(engine)
    with engine.begin() as conn:
        assert retry_dead(conn, LATER, channel="webhook") == 0
        assert retry_dead(conn, LATER, playbook="nope") == 0
        assert retry_dead(conn, LATER, since=NOW + timedelta(seconds=1)) == 0
        assert retry_dead(conn, LATER, channel="sms") == 1
        assert retry_dead(conn, LATER, playbook="winback") == 1
        # since is inclusive: the letters last due at NOW, not the one due two days before
        assert retry_dead(conn, LATER, since=NOW, channel="email", playbook="lifecycle") == 4
        assert retry_dead(conn, LATER) == 1  # the old one
        assert retry_dead(conn, LATER) == 0
    rows = outbox(engine)
    assert {key for key, row in rows.items() if row["status"] == "pending"} == {
        "old",
        "new",
        "no-ttl",
        "sms",
        "other-playbook",
        "leased",
        "long-error",
    }
    assert (rows["sent"]["status"], rows["retry"]["status"]) == ("sent", "retry")  # only dead letters
    assert (rows["retry"]["attempts"], rows["retry"]["last_error"]) == (2, "timeout")


def test_a_requeued_letter_is_due_now_with_a_fresh_time_to_live(engine: Engine) -> None:
    seed(engine)
    with engine.begin() as conn:
        assert retry_dead(conn, LATER, ttl=timedelta(hours=6)) == 7
    rows = outbox(engine)
    for key in ("old", "new", "sms", "leased"):
        row = rows[key]
        assert (row["status"], row["due_at"], row["attempts"]) == ("pending", LATER, 0), key
        assert row["expires_at"] == LATER + timedelta(hours=6), key
        assert (row["lease_owner"], row["lease_until"]) == (None, None), key
        assert row["last_error"] == REQUEUED_PREFIX + "550 mailbox unavailable", key
    # a message without a time-to-live keeps none; one without an error gets the bare prefix
    assert (rows["no-ttl"]["expires_at"], rows["no-ttl"]["last_error"]) == (None, REQUEUED_PREFIX)
    # the error column's limit holds
    assert rows["long-error"]["last_error"] == REQUEUED_PREFIX + "x" * (2000 - len(REQUEUED_PREFIX))


def test_the_default_time_to_live_is_the_one_a_tick_gives(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(OUTBOX), [message("one")])
        assert retry_dead(conn, LATER) == 1
    assert outbox(engine)["one"]["expires_at"] == LATER + DEFAULT_TTL


def test_parse_since() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since(" 30m ", now) == now - timedelta(minutes=30)
    assert parse_since("7D", now) == now - timedelta(days=7)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("2026-11-20T09:00:00Z", now) == datetime(2026, 11, 20, 9, tzinfo=UTC)
    assert parse_since("2026-11-20T09:00", now) == datetime(2026, 11, 20, 9, tzinfo=UTC)
    assert parse_since("2026-11-20T10:00:00+01:00", now) == datetime(2026, 11, 20, 9, tzinfo=UTC)
    for bad in ("garbage", "", "24", "h", "-3h", "3 hours", "99999999999999d"):
        with pytest.raises(InputError, match="--since"):
            parse_since(bad, now)
