"""Marking sent messages, batched (one UPDATE joined to the (id, provider id) pairs, in chunks), on SQLite and
PostgreSQL: exactly the messages given change, each with its own provider id, only while this worker holds
them; and in a batch where some sends fail, the failed ones are retried and the rest are sent."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from automation.channels.base import Delivery, DeliveryResult
from automation.db.tables import CUSTOMER, OUTBOX
from automation.errors import TransientDeliveryError
from automation.outbox import lease
from automation.outbox.dispatch import DispatchConfig, Dispatcher
from automation.outbox.lease import claim, mark_sent
from tests.integration.known import NOW, TEMPLATES


def queue(engine: Engine, count: int, channel: str = "webhook") -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(CUSTOMER),
            [
                {"id": f"c{i}", "email": f"c{i}@example.com", "timezone": "UTC", "attributes": {}}
                for i in range(count)
            ],
        )
        conn.execute(
            insert(OUTBOX),
            [
                {
                    "idempotency_key": f"k{i}",
                    "playbook": "lifecycle",
                    "customer_id": f"c{i}",
                    "channel": channel,
                    "template": "loyalty_points",
                    "stage": "loyalty",
                    "segment": "self_serve",
                    "touch": "none",
                    "step": "loyalty/none#1",
                    "payload": {"url": "http://127.0.0.1:9/hook"},
                    "status": "pending",
                    "due_at": NOW,
                    "created_at": NOW,
                }
                for i in range(count)
            ],
        )


def rows(engine: Engine) -> dict[int, Any]:
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(select(OUTBOX).order_by(OUTBOX.c.id))}


@pytest.mark.parametrize("form", ["update-from", "executemany"])
def test_exactly_the_given_messages_are_marked_with_their_own_provider_ids(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    monkeypatch.setattr(lease, "MARK_CHUNK", 3)  # several statements for one call
    if form == "executemany":  # what SQLite before 3.33 gets (PostgreSQL always has UPDATE ... FROM)
        monkeypatch.setattr(lease.sqlite3, "sqlite_version_info", (3, 32, 3))
    queue(engine, 10)
    with engine.begin() as conn:
        claimed = claim(conn, "w1", NOW, timedelta(minutes=2), 10)
    ids = sorted(r.id for r in claimed)
    sent = ids[:7]
    with engine.begin() as conn:
        marked = mark_sent(conn, "w1", [(i, f"p-{i}" if i % 2 else None) for i in sent], NOW)
    assert marked == 7
    after = rows(engine)
    for i in sent:
        assert after[i].status == "sent"
        assert after[i].provider_id == (f"p-{i}" if i % 2 else None)
        assert after[i].lease_owner is None and after[i].lease_until is None
        assert after[i].sent_at is not None
    for i in ids[7:]:
        assert after[i].status == "claimed" and after[i].lease_owner == "w1" and after[i].provider_id is None


def test_only_messages_this_worker_still_holds_are_marked(engine: Engine) -> None:
    queue(engine, 4)
    with engine.begin() as conn:
        mine = sorted(r.id for r in claim(conn, "w1", NOW, timedelta(minutes=2), 2))
        theirs = sorted(r.id for r in claim(conn, "w2", NOW, timedelta(minutes=2), 2))
    with engine.begin() as conn:
        assert mark_sent(conn, "w1", [(i, "p") for i in mine + theirs], NOW) == 2
        assert mark_sent(conn, "w1", [(i, "again") for i in mine], NOW) == 0  # already sent
        assert mark_sent(conn, "w1", [], NOW) == 0
    after = rows(engine)
    assert {after[i].status for i in mine} == {"sent"}
    assert {after[i].provider_id for i in mine} == {"p"}
    assert {(after[i].status, after[i].lease_owner) for i in theirs} == {("claimed", "w2")}


class Flaky:
    """A webhook channel that fails every third message."""

    name = "webhook"

    def __init__(self) -> None:
        self.sent: list[int] = []

    async def send(self, delivery: Delivery) -> DeliveryResult:
        await asyncio.sleep(0)
        if delivery.message_id % 3 == 0:
            raise TransientDeliveryError("HTTP 503 from the server")
        self.sent.append(delivery.message_id)
        return DeliveryResult(provider_id=f"hook-{delivery.message_id}")

    async def aclose(self) -> None:
        return None


def test_failures_in_a_batch_are_retried_and_the_rest_marked_sent(engine: Engine) -> None:
    queue(engine, 25)
    channel = Flaky()
    at: datetime = NOW
    dispatcher = Dispatcher(
        engine,
        {"webhook": channel},
        TEMPLATES,
        DispatchConfig(worker_id="w1", batch_size=10, concurrency={"webhook": 4}),
        clock=lambda: at,
        environ={},
        seed=1,
    )
    stats = asyncio.run(dispatcher.drain())
    after = rows(engine)
    failed = {i for i in after if i % 3 == 0}
    assert stats.count("sent") == 25 - len(failed) and stats.count("retry") == len(failed)
    assert sorted(channel.sent) == sorted(set(after) - failed)
    for i, row in after.items():
        if i in failed:
            assert (row.status, row.provider_id, row.lease_owner) == ("retry", None, None)
            assert row.last_error == "HTTP 503 from the server" and row.due_at > NOW
        else:
            assert (row.status, row.provider_id, row.lease_owner) == ("sent", f"hook-{i}", None)


def test_each_claim_takes_its_own_time_worker_and_lease(engine: Engine) -> None:
    """The claim statement is built once and reused: every claim still reads its own parameters."""
    queue(engine, 6)
    lease_for = timedelta(minutes=2)
    with engine.begin() as conn:
        first = claim(conn, "w1", NOW, lease_for, 2, ["webhook"])
        assert claim(conn, "w2", NOW - timedelta(seconds=1), lease_for, 10, ["webhook"]) == []  # none due yet
        second = claim(conn, "w2", NOW + timedelta(seconds=1), lease_for, 3, ["webhook"])
        assert claim(conn, "w3", NOW, lease_for, 10, ["email"]) == []  # another channel
    assert len(first) == 2 and len(second) == 3
    after = rows(engine)
    for taken, worker, now in ((first, "w1", NOW), (second, "w2", NOW + timedelta(seconds=1))):
        for row in taken:
            assert after[row.id].lease_owner == worker
            assert after[row.id].lease_until == now + lease_for
    # w1's lease runs out: a later claim takes its messages back, with the one left
    with engine.begin() as conn:
        again = claim(conn, "w4", NOW + lease_for + timedelta(seconds=1), lease_for, 10, None)
    assert {r.id for r in again} == {r.id for r in first} | (set(after) - {r.id for r in first + second})
    assert all(rows(engine)[r.id].lease_owner == "w4" for r in again)
