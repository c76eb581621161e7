"""``automation.worker.status`` on the known data, on SQLite and PostgreSQL: ticks, stages, outbox, dead
letters."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select, update

from automation.authoring.validate import check_playbook
from automation.errors import PermanentDeliveryError, TransientDeliveryError
from automation.outbox.dispatch import DispatchConfig, Dispatcher, DispatchStats
from automation.outbox.retry import retry_dead
from automation.outbox.sink import DEFAULT_TTL
from automation.worker.status import HeldBack, held_back, playbook_status, queue_status
from automation.worker.tick import TickResult, run_tick
from tests.conftest import ROOT
from tests.integration.known import NOW, TEMPLATES, T
from tests.integration.test_dispatch import ENV, Recorder, channels

OUTBOX = T["outbox"]
TOKYO_DUE = NOW + timedelta(hours=11)  # 08:00 in Tokyo, the end of its quiet hours


def tick(engine: Engine, at: datetime = NOW) -> TickResult:
    return run_tick(engine, check_playbook(ROOT / "playbooks" / "lifecycle.yaml", TEMPLATES, at))


def drain(engine: Engine, chans: dict[str, Recorder], at: datetime, max_attempts: int = 8) -> DispatchStats:
    dispatcher = Dispatcher(
        engine,
        chans,
        TEMPLATES,
        DispatchConfig(worker_id="w1", max_attempts=max_attempts),
        clock=lambda: at,
        environ=ENV,
        seed=1,
    )
    return asyncio.run(dispatcher.drain())


def rows(engine: Engine, **where: str) -> list[dict[str, object]]:
    query = select(OUTBOX).order_by(OUTBOX.c.id)
    for column, value in where.items():
        query = query.where(OUTBOX.c[column] == value)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def test_empty_database(engine: Engine) -> None:
    with engine.connect() as conn:
        assert playbook_status(conn) == []
        queue = queue_status(conn, NOW)
        assert (queue.counts, queue.due, queue.oldest_due, queue.dead, queue.total) == ({}, 0, None, [], 0)
        assert retry_dead(conn, NOW) == 0


def test_playbook_status_reports_ticks_stages_and_enrollments(data: Engine) -> None:
    first = tick(data)
    second = tick(data, NOW + timedelta(hours=1))
    with data.connect() as conn:
        [status] = playbook_status(conn)
        enrollments = [r.status for r in conn.execute(select(T["enrollment"].c.status))]
    assert status.playbook == "lifecycle" and status.ticks == 2
    assert status.stages == {"loyalty": 3, "retention": 2, "conversion": 1, "acquisition": 4, "(none)": 1}
    assert status.customers == 11
    assert status.open_enrollments == enrollments.count("active") > 0
    last = status.last_tick
    assert last is not None and last.started_at == NOW + timedelta(hours=1)
    assert last.changes == {k: v for k, v in second.stats.items() if k in last.changes}
    assert set(last.changes) == {"transitions", "enrolled", "exited", "actions", "deferred"}
    assert first.stats["full"] == 1 and second.stats["full"] == 0  # the second tick was incremental
    assert last.seconds == pytest.approx(round(second.seconds, 3))
    assert first.stats["transitions"] == 11 and second.stats["transitions"] == 0

    # a tick recorded for an earlier time (``tick --at`` in the past) is not the last one
    tick(data, NOW - timedelta(days=1))
    with data.connect() as conn:
        [status] = playbook_status(conn)
    assert status.ticks == 3
    assert status.last_tick is not None and status.last_tick.started_at == NOW + timedelta(hours=1)
    assert status.as_json()["last_tick"]["started_at"] == "2026-11-22T13:00:00+00:00"


def test_queue_status_counts_what_is_due_and_the_oldest(data: Engine) -> None:
    tick(data)
    with data.connect() as conn:
        queue = queue_status(conn, NOW)
    # 7 messages due now, tokyo's welcome deferred by quiet hours; 3 suppressed at planning
    assert queue.counts == {
        ("email", "pending"): 6,
        ("email", "suppressed"): 2,
        ("task", "pending"): 1,
        ("task", "suppressed"): 1,
        ("webhook", "pending"): 1,
    }
    assert queue.by_status() == {"pending": 8, "suppressed": 3}
    assert list(queue.by_channel()) == ["email", "task", "webhook"]
    assert queue.total == 11 and queue.due == 7
    assert queue.oldest_due is not None and queue.oldest_due.age_seconds == 0

    webhook = rows(data, channel="webhook")[0]
    with data.begin() as conn:
        conn.execute(
            update(OUTBOX).where(OUTBOX.c.id == webhook["id"]).values(due_at=NOW - timedelta(hours=2))
        )
    with data.connect() as conn:
        later = queue_status(conn, NOW + timedelta(minutes=30))
        after_tokyo = queue_status(conn, TOKYO_DUE)
    assert later.oldest_due is not None
    assert (later.oldest_due.id, later.oldest_due.channel, later.oldest_due.status) == (
        webhook["id"],
        "webhook",
        "pending",
    )
    assert later.oldest_due.age_seconds == 2.5 * 3600
    assert later.due == 7 and after_tokyo.due == 8
    data_json = later.as_json()
    assert data_json["oldest_due"]["age_seconds"] == 9000 and data_json["by_status"]["pending"] == 8


def test_dead_letters_newest_first_masked_and_limited(data: Engine) -> None:
    tick(data)
    chans = channels(
        webhook=Recorder("webhook", fail=[PermanentDeliveryError("422 Unprocessable: bad points")]),
        task=Recorder("task", fail=[TransientDeliveryError("CRM down")] * 2),
    )
    drain(data, chans, NOW, max_attempts=2)  # webhook dead; task to retry (due ~30 s later)
    drain(data, chans, NOW + timedelta(hours=1), max_attempts=2)  # task dead after 2 attempts
    task = rows(data, channel="task", status="dead")[0]
    with data.begin() as conn:  # an address that got into an error text is masked on the way out
        conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.id == task["id"])
            .values(last_error="CRM refused owner@example.com, call +14155550100")
        )
    with data.connect() as conn:
        queue = queue_status(conn, NOW + timedelta(hours=1))
        one = queue_status(conn, NOW + timedelta(hours=1), dead_limit=1)
        none = queue_status(conn, NOW + timedelta(hours=1), dead_limit=0)
    assert queue.by_status()["dead"] == 2
    assert [(d.channel, d.customer_id, d.template) for d in queue.dead] == [
        ("task", "referrer", "vip_thank_you_call"),  # last due ~30 s after the webhook's
        ("webhook", "vip", "loyalty_points"),
    ]
    task_dead, webhook_dead = queue.dead
    assert task_dead.last_error == "CRM refused o***@example.com, call +14*******00"
    assert task_dead.attempts == 2 and task_dead.when > NOW
    assert webhook_dead.last_error == "422 Unprocessable: bad points" and webhook_dead.when == NOW
    assert [d.id for d in one.dead] == [task_dead.id] and none.dead == []
    assert queue.as_json()["dead"][1] == {
        "id": webhook_dead.id,
        "playbook": "lifecycle",
        "channel": "webhook",
        "customer": "vip",
        "template": "loyalty_points",
        "attempts": 1,
        "last_error": "422 Unprocessable: bad points",
        "when": "2026-11-22T12:00:00+00:00",
    }


def test_retry_dead_requeues_with_a_fresh_time_to_live_and_they_are_sent(data: Engine) -> None:
    tick(data)
    late = NOW + timedelta(days=3) - timedelta(hours=1)  # 11:00 UTC: daytime in Berlin and Tokyo
    chans = channels(webhook=Recorder("webhook", fail=[PermanentDeliveryError("410 Gone")]))
    drain(data, chans, late)
    dead = rows(data, status="dead")
    assert Counter(r["channel"] for r in dead) == {"email": 6, "webhook": 1}  # emails expired
    assert all(str(r["last_error"]).startswith("expired: ") for r in dead if r["channel"] == "email")

    with data.begin() as conn:
        assert retry_dead(conn, late, channel="sms") == 0
        assert retry_dead(conn, late, playbook="another") == 0
        # only tokyo's welcome was last due in the hour before its quiet hours ended
        assert retry_dead(conn, late, since=TOKYO_DUE - timedelta(hours=1), channel="email") == 1
        assert retry_dead(conn, late, channel="email") == 5
    emails = rows(data, channel="email", status="pending")
    assert len(emails) == 6
    for row in emails:
        assert (row["due_at"], row["attempts"], row["expires_at"]) == (late, 0, late + DEFAULT_TTL)
        assert str(row["last_error"]).startswith("requeued: expired: not sent by ")
        assert row["lease_owner"] is None
    [webhook] = rows(data, channel="webhook")
    assert webhook["status"] == "dead"  # not matched by the channel filter

    with data.begin() as conn:
        assert retry_dead(conn, late, playbook="lifecycle") == 1
        assert retry_dead(conn, late) == 0  # nothing dead any more
    [webhook] = rows(data, channel="webhook")
    assert (webhook["status"], webhook["expires_at"], webhook["attempts"]) == ("pending", None, 0)
    assert webhook["last_error"] == "requeued: 410 Gone"

    again = channels()
    stats = drain(data, again, late)
    assert stats.count("sent") == 7 and stats.count("dead") == 0
    assert sorted(d.customer_id for d in again["email"].sent) == [
        "fan",
        "newbie",
        "regular",
        "regular",
        "tokyo",
        "vip",
    ]
    assert all(r["last_error"] is None for r in rows(data, status="sent"))
    with data.connect() as conn:
        assert conn.execute(select(func.count()).where(OUTBOX.c.status == "dead")).scalar_one() == 0


def test_held_back_groups_what_was_not_sent_by_reason_largest_first(data: Engine) -> None:
    with data.connect() as conn:
        assert held_back(conn) == []
    tick(data)
    with data.connect() as conn:
        planned = held_back(conn)
    # the seven messages that are simply due are not held back; tokyo's welcome is deferred
    assert Counter(planned) == {
        HeldBack("email", "pending", "quiet hours until 08:00 Asia/Tokyo", 1): 1,
        HeldBack("email", "suppressed", "consent: email suppressed (unsubscribed)", 1): 1,
        HeldBack("email", "suppressed", "no email address", 1): 1,
        HeldBack("task", "suppressed", "no account owner: owner_email is empty", 1): 1,
    }
    chans = channels(
        email=Recorder("email", fail=[TransientDeliveryError("421 try again later")] * 10),
        webhook=Recorder("webhook", fail=[PermanentDeliveryError("422 Unprocessable")]),
    )
    drain(data, chans, NOW)
    with data.connect() as conn:
        after = held_back(conn)
    [largest, *others] = after
    assert (largest.channel, largest.status, largest.count) == ("email", "retry", 5)
    assert "421 try again later" in largest.reason
    assert Counter(others) == Counter([*planned, HeldBack("webhook", "dead", "422 Unprocessable", 1)])
