"""Tick then dispatch on SQLite and PostgreSQL: each message once, retries, dead letters, leases, consent."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from automation.authoring.validate import check_playbook
from automation.channels.base import Delivery, DeliveryResult
from automation.db.tables import CUSTOMER, OUTBOX, SUPPRESSION, TASK
from automation.errors import PermanentDeliveryError, TransientDeliveryError
from automation.outbox.dispatch import DispatchConfig, Dispatcher
from automation.outbox.lease import claim
from automation.worker.tick import run_tick
from tests.conftest import ROOT
from tests.integration.known import NOW, TEMPLATES

ENV = {"LOYALTY_WEBHOOK_URL": "http://127.0.0.1:9/loyalty"}


class Recorder:
    """A channel that records deliveries and fails on demand (the real ones are tested against servers)."""

    def __init__(self, name: str, fail: list[Exception] | None = None, delay: float = 0.0) -> None:
        self.name = name
        self.sent: list[Delivery] = []
        self.fail = list(fail or [])
        self.delay = delay

    async def send(self, delivery: Delivery) -> DeliveryResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail.pop(0)
        self.sent.append(delivery)
        return DeliveryResult(provider_id=f"{self.name}-{delivery.message_id}")

    async def aclose(self) -> None:
        return None


def channels(**overrides: Recorder) -> dict[str, Recorder]:
    out = {name: Recorder(name) for name in ("email", "sms", "webhook", "task")}
    out.update(overrides)
    return out


def tick(engine: Engine, at: datetime = NOW) -> None:
    run_tick(engine, check_playbook(ROOT / "playbooks" / "lifecycle.yaml", TEMPLATES, at))


def dispatcher(engine: Engine, chans: dict[str, Recorder], at: datetime, **config: Any) -> Dispatcher:
    return Dispatcher(
        engine,
        chans,
        TEMPLATES,
        DispatchConfig(worker_id=config.pop("worker_id", "w1"), **config),
        clock=lambda: at,
        environ=ENV,
        seed=1,
    )


def statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(
            {s: n for s, n in conn.execute(select(OUTBOX.c.status, func.count()).group_by(OUTBOX.c.status))}
        )


def test_tick_then_dispatch_sends_each_message_once(data: Engine) -> None:
    tick(data)
    tick(data)  # repeating a tick plans nothing new
    chans = channels()
    stats = asyncio.run(dispatcher(data, chans, NOW).drain())
    sent = {(d.channel, d.customer_id, d.metadata["template"]) for ch in chans.values() for d in ch.sent}
    assert sent == {
        ("email", "newbie", "welcome"),
        ("email", "regular", "tips_and_offers"),
        ("email", "regular", "birthday_reward"),
        ("email", "fan", "tips_and_offers"),
        ("email", "vip", "vip_welcome"),
        ("webhook", "vip", "loyalty_points"),
        ("task", "referrer", "vip_thank_you_call"),
    }
    assert stats.count("sent") == 7
    webhook = chans["webhook"].sent[0]
    assert webhook.url == "http://127.0.0.1:9/loyalty" and webhook.rendered.json["customer_id"] == "vip"
    email = next(d for d in chans["email"].sent if d.customer_id == "newbie")
    assert (
        email.to == "newbie@example.com"
        and email.unsubscribe_url
        and "/unsubscribe/" in email.unsubscribe_url
    )
    assert chans["task"].sent[0].to == "owner@example.com"
    # held back at planning: tokyo deferred (quiet hours), nomail/unsub/bigco suppressed
    assert statuses(data) == Counter({"sent": 7, "suppressed": 3, "pending": 1})
    again = channels()
    assert asyncio.run(dispatcher(data, again, NOW).drain()).claimed == 0
    # the deferred message goes when Tokyo's quiet hours end
    later = NOW + timedelta(hours=11)
    asyncio.run(dispatcher(data, again, later).drain())
    assert [(d.customer_id, d.metadata["template"]) for d in again["email"].sent] == [("tokyo", "welcome")]


def test_transient_errors_retry_with_backoff_then_succeed(data: Engine) -> None:
    tick(data)
    flaky = Recorder("webhook", fail=[TransientDeliveryError("503 from receiver")])
    chans = channels(webhook=flaky)
    asyncio.run(dispatcher(data, chans, NOW).drain())
    with data.connect() as conn:
        row = conn.execute(select(OUTBOX).where(OUTBOX.c.channel == "webhook")).one()
    assert (row.status, row.attempts, row.last_error) == ("retry", 1, "503 from receiver")
    wait = (row.due_at.replace(tzinfo=NOW.tzinfo) - NOW).total_seconds()
    assert 15 <= wait <= 30  # first backoff: 30 s with jitter down to half
    asyncio.run(dispatcher(data, chans, NOW + timedelta(seconds=31)).drain())
    with data.connect() as conn:
        row = conn.execute(select(OUTBOX).where(OUTBOX.c.channel == "webhook")).one()
    assert (row.status, row.attempts, row.provider_id) == ("sent", 2, f"webhook-{row.id}")


def test_retry_after_is_honoured(data: Engine) -> None:
    tick(data)
    chans = channels(webhook=Recorder("webhook", fail=[TransientDeliveryError("429", retry_after=120)]))
    asyncio.run(dispatcher(data, chans, NOW).drain())
    with data.connect() as conn:
        due = conn.execute(select(OUTBOX.c.due_at).where(OUTBOX.c.channel == "webhook")).scalar_one()
    assert due.replace(tzinfo=NOW.tzinfo) == NOW + timedelta(seconds=120)


def test_permanent_errors_and_exhausted_retries_are_dead_with_reason(data: Engine) -> None:
    tick(data)
    chans = channels(
        webhook=Recorder("webhook", fail=[PermanentDeliveryError("422 Unprocessable: bad points")]),
        task=Recorder("task", fail=[TransientDeliveryError("CRM down")] * 2),
    )
    asyncio.run(dispatcher(data, chans, NOW, max_attempts=2).drain())
    asyncio.run(dispatcher(data, chans, NOW + timedelta(hours=1), max_attempts=2).drain())
    with data.connect() as conn:
        rows = {
            r.channel: r
            for r in conn.execute(select(OUTBOX).where(OUTBOX.c.channel.in_(["webhook", "task"])))
        }
    assert (rows["webhook"].status, rows["webhook"].last_error) == ("dead", "422 Unprocessable: bad points")
    assert rows["task"].status == "dead"
    assert rows["task"].last_error == "gave up after 2 attempts: CRM down"
    assert rows["task"].lease_owner is None


def test_consent_is_checked_again_when_sending(data: Engine) -> None:
    tick(data)
    with data.begin() as conn:
        conn.execute(
            SUPPRESSION.insert().values(
                channel="email", customer_id="fan", reason="unsubscribed", created_at=NOW
            )
        )
    chans = channels()
    asyncio.run(dispatcher(data, chans, NOW).drain())
    assert "fan" not in {d.customer_id for d in chans["email"].sent}
    with data.connect() as conn:
        row = conn.execute(select(OUTBOX).where(OUTBOX.c.customer_id == "fan")).one()
    assert (row.status, row.last_error) == ("suppressed", "consent: email suppressed (unsubscribed)")


def test_stale_marketing_messages_expire_instead_of_going_late(data: Engine) -> None:
    tick(data)
    chans = channels()
    asyncio.run(dispatcher(data, chans, NOW + timedelta(days=3)).drain())
    assert chans["email"].sent == []
    assert len(chans["webhook"].sent) == 1 and len(chans["task"].sent) == 1  # no TTL for these
    with data.connect() as conn:
        errors = {r.last_error for r in conn.execute(select(OUTBOX).where(OUTBOX.c.status == "dead"))}
    assert errors == {
        "expired: not sent by 2026-11-24 12:00 UTC",
        "expired: not sent by 2026-11-24 23:00 UTC",
    }


def test_an_unset_webhook_url_variable_is_a_dead_letter_naming_it(data: Engine) -> None:
    tick(data)
    d = Dispatcher(data, channels(), TEMPLATES, DispatchConfig(worker_id="w"), clock=lambda: NOW, environ={})
    asyncio.run(d.drain())
    with data.connect() as conn:
        row = conn.execute(select(OUTBOX).where(OUTBOX.c.channel == "webhook")).one()
    assert row.status == "dead"
    assert "environment variable LOYALTY_WEBHOOK_URL is not set" in row.last_error


def test_an_expired_lease_makes_a_message_claimable_again(data: Engine) -> None:
    tick(data)
    with data.begin() as conn:
        held = claim(conn, "dead-worker", NOW, timedelta(minutes=2), 100)
    assert len(held) == 7
    chans = channels()
    assert asyncio.run(dispatcher(data, chans, NOW + timedelta(minutes=1)).drain()).claimed == 0
    stats = asyncio.run(dispatcher(data, chans, NOW + timedelta(minutes=3)).drain())
    assert stats.count("sent") == 7
    with data.connect() as conn:
        assert conn.execute(select(func.count()).where(OUTBOX.c.status == "claimed")).scalar_one() == 0


@pytest.mark.postgres
def test_two_dispatchers_at_once_deliver_every_key_once(pg_engine: Engine) -> None:
    from sqlalchemy import insert

    with pg_engine.begin() as conn:
        conn.execute(
            insert(CUSTOMER),
            [
                {
                    "id": f"c{i}",
                    "email": f"c{i}@example.com",
                    "timezone": "UTC",
                    "orders_count": 0,
                    "attributes": {},
                }
                for i in range(300)
            ],
        )
        conn.execute(
            insert(OUTBOX),
            [
                {
                    "idempotency_key": f"k{i}",
                    "playbook": "p",
                    "customer_id": f"c{i % 300}",
                    "channel": "webhook",
                    "template": "loyalty_points",
                    "payload": {"url": "http://127.0.0.1:9/x"},
                    "status": "pending",
                    "due_at": NOW,
                    "created_at": NOW,
                    "priority": 0,
                    "attempts": 0,
                }
                for i in range(600)
            ],
        )
        conn.execute(update(OUTBOX).values(stage="loyalty", segment="self_serve", touch="none"))
    shared = Recorder("webhook", delay=0.001)

    async def both() -> None:
        one = dispatcher(pg_engine, {"webhook": shared}, NOW, worker_id="a", batch_size=50)
        two = dispatcher(pg_engine, {"webhook": shared}, NOW, worker_id="b", batch_size=50)
        await asyncio.gather(
            asyncio.to_thread(asyncio.run, one.drain()), asyncio.to_thread(asyncio.run, two.drain())
        )

    asyncio.run(both())
    keys = Counter(d.idempotency_key for d in shared.sent)
    assert len(keys) == 600 and set(keys.values()) == {1}
    with pg_engine.connect() as conn:
        owners = dict(conn.execute(select(OUTBOX.c.status, func.count()).group_by(OUTBOX.c.status)).all())
    assert owners == {"sent": 600}


def queue_webhooks(engine: Engine, count: int, template: str = "loyalty_points") -> None:
    from sqlalchemy import insert

    with engine.begin() as conn:
        conn.execute(
            insert(CUSTOMER),
            [
                {"id": f"q{i}", "email": f"q{i}@example.com", "timezone": "UTC", "attributes": {}}
                for i in range(count)
            ],
        )
        conn.execute(
            insert(OUTBOX),
            [
                {
                    "idempotency_key": f"q:{i}",
                    "playbook": "p",
                    "customer_id": f"q{i}",
                    "channel": "webhook",
                    "template": template,
                    "stage": "loyalty",
                    "segment": "self_serve",
                    "touch": "none",
                    "payload": {"url": "${LOYALTY_WEBHOOK_URL}"},
                    "status": "pending",
                    "due_at": NOW,
                    "created_at": NOW,
                    "priority": 0,
                    "attempts": 0,
                }
                for i in range(count)
            ],
        )


class Gauge(Recorder):
    """Counts the sends in flight at once."""

    def __init__(self, name: str, delay: float) -> None:
        super().__init__(name, delay=delay)
        self.in_flight = 0
        self.most = 0

    async def send(self, delivery: Delivery) -> DeliveryResult:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            return await super().send(delivery)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize(("concurrency", "lanes"), [(3, 2), (1, 2), (5, 1)])
def test_a_channel_never_has_more_sends_in_flight_than_its_concurrency(
    engine: Engine, concurrency: int, lanes: int
) -> None:
    queue_webhooks(engine, 60)
    gauge = Gauge("webhook", delay=0.002)
    d = dispatcher(
        engine, {"webhook": gauge}, NOW, batch_size=7, lanes=lanes, concurrency={"webhook": concurrency}
    )
    stats = asyncio.run(d.drain())
    assert stats.count("sent") == 60
    assert sorted(x.idempotency_key for x in gauge.sent) == sorted(f"q:{i}" for i in range(60))
    assert gauge.most == concurrency  # the limit, and all of it used
    assert statuses(engine) == Counter({"sent": 60})


def test_a_webhook_template_that_prints_the_unsubscribe_link_gets_a_signed_one(
    engine: Engine, tmp_path: Any
) -> None:
    from automation.messages.store import TemplateStore
    from automation.messages.unsubscribe import verify

    (tmp_path / "with_link.webhook.j2").write_text(
        '{"id": {{ customer.id|tojson }}, "u": {{ unsubscribe_url|tojson }}}'
    )
    (tmp_path / "without_link.webhook.j2").write_text('{"id": {{ customer.id|tojson }}}')
    queue_webhooks(engine, 4, template="with_link")
    recorder = Recorder("webhook")
    config = DispatchConfig(worker_id="w", public_url="https://crm.example", secret_key="s3cret")
    store = TemplateStore(tmp_path)
    asyncio.run(
        Dispatcher(engine, {"webhook": recorder}, store, config, clock=lambda: NOW, environ=ENV).drain()
    )
    assert len(recorder.sent) == 4
    for delivery in recorder.sent:
        link = delivery.rendered.json["u"]
        assert link.startswith("https://crm.example/unsubscribe/")
        assert verify("s3cret", link.rsplit("/", 1)[1]) == (delivery.customer_id, "webhook")
    assert store.reads("with_link", "webhook", "unsubscribe_url")
    assert not store.reads("without_link", "webhook", "unsubscribe_url")


def test_an_open_task_holds_only_the_messages_that_ask_for_it(engine: Engine) -> None:
    from sqlalchemy import insert

    queue_webhooks(engine, 3)  # customers q0..q2, webhooks without hold_during_tasks
    with engine.begin() as conn:
        conn.execute(
            insert(OUTBOX),
            [
                {
                    "idempotency_key": f"mail:{i}",
                    "playbook": "p",
                    "customer_id": f"q{i}",
                    "channel": "email",
                    "template": "welcome",
                    "stage": "loyalty",
                    "segment": "self_serve",
                    "touch": "none",
                    "payload": {"timezone": "UTC", "hold_during_tasks": True},
                    "status": "pending",
                    "due_at": NOW,
                    "created_at": NOW,
                    "priority": 0,
                    "attempts": 0,
                }
                for i in range(3)
            ],
        )
        conn.execute(
            insert(TASK),
            [
                {
                    "idempotency_key": "t:open",
                    "playbook": "p",
                    "customer_id": "q1",
                    "title": "Call",
                    "status": "open",
                    "created_at": NOW,
                },
                {
                    "idempotency_key": "t:done",
                    "playbook": "p",
                    "customer_id": "q2",
                    "title": "Call",
                    "status": "done",
                    "created_at": NOW,
                },
            ],
        )
    chans = channels()
    stats = asyncio.run(dispatcher(engine, chans, NOW).drain())
    assert sorted(d.idempotency_key for d in chans["webhook"].sent) == ["q:0", "q:1", "q:2"]
    assert sorted(d.idempotency_key for d in chans["email"].sent) == ["mail:0", "mail:2"]
    assert stats.count("pending") == 1
    with engine.connect() as conn:
        held = conn.execute(select(OUTBOX).where(OUTBOX.c.idempotency_key == "mail:1")).one()
    assert held.status == "pending"
    assert held.last_error == "held: a high-touch task is open for this customer"
