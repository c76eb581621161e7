"""The task channel on SQLite and PostgreSQL: one row per idempotency key, then a signed CRM request or an
email to the assignee; listing and completing tasks."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from automation.channels.base import Delivery, DeliveryResult
from automation.channels.http import make_client
from automation.channels.task import TASK, TaskChannel, complete_task, list_tasks
from automation.channels.webhook import WebhookChannel, message_id, verify
from automation.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from automation.messages.store import RenderedMessage
from tests.http_server import LocalServer, serve

NOW = datetime(2025, 3, 10, 9, 30, tzinfo=UTC)
DUE = datetime(2025, 3, 12, 17, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"crm-signing-key-0123456789").decode()


def task(
    key: str = "vip:c1:call:1",
    *,
    assignee: str | None = "owner@example.com",
    title: str = "Call Ann about her renewal",
    body: str = "She has 3 open tickets.\nOffer the annual plan.",
    due: datetime | None = DUE,
    customer: str = "c1",
) -> Delivery:
    rendered = RenderedMessage("task", "vip-call", title=title, body=body)
    return Delivery(
        message_id=3,
        idempotency_key=key,
        channel="task",
        customer_id=customer,
        rendered=rendered,
        to=assignee,
        due=due,
        metadata={"playbook": "vip", "stage": "at-risk", "step": "call"},
    )


@dataclass
class FakeEmail:
    """A Channel that records what it was asked to send (and can fail on demand)."""

    name: str = "email"
    sent: list[Delivery] = field(default_factory=list)
    fail_with: Exception | None = None

    async def send(self, delivery: Delivery) -> DeliveryResult:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(delivery)
        return DeliveryResult(provider_id=f"email-{len(self.sent)}")

    async def aclose(self) -> None:
        pass


def rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(TASK).order_by(TASK.c.id))]


def send_plain(
    engine: Engine, *deliveries: Delivery, notifier: FakeEmail | None = None
) -> list[DeliveryResult]:
    async def run() -> list[DeliveryResult]:
        channel = TaskChannel(engine, notifier=notifier, clock=lambda: NOW)
        return [await channel.send(d) for d in deliveries]

    return asyncio.run(run())


def send_crm(engine: Engine, url: str, *deliveries: Delivery) -> list[DeliveryResult]:
    async def run() -> list[DeliveryResult]:
        async with make_client(timeout=5) as client:
            notifier = WebhookChannel(client, secret=SECRET)
            channel = TaskChannel(
                engine, notifier=notifier, notify_via="webhook", crm_url=url, clock=lambda: NOW
            )
            return [await channel.send(d) for d in deliveries]

    return asyncio.run(run())


@pytest.fixture
def crm() -> Iterator[LocalServer]:
    with serve(secret=SECRET, dedupe_header="Idempotency-Key") as srv:
        yield srv


# ------------------------------------------------------------------------------------- the row


def test_inserts_one_row_per_idempotency_key(engine: Engine) -> None:
    first, again, other = send_plain(engine, task(), task(), task("vip:c2:call:1", customer="c2"))

    stored = rows(engine)
    assert len(stored) == 2
    row = stored[0]
    assert first.provider_id == again.provider_id == f"task:{row['id']}"
    assert other.provider_id == f"task:{stored[1]['id']}" != first.provider_id
    assert row["idempotency_key"] == "vip:c1:call:1"
    assert row["playbook"] == "vip"
    assert row["customer_id"] == "c1"
    assert row["assignee"] == "owner@example.com"
    assert row["title"] == "Call Ann about her renewal"
    assert row["body"] == "She has 3 open tickets.\nOffer the annual plan."
    assert row["due_at"] == DUE
    assert row["status"] == "open"
    assert row["created_at"] == NOW
    assert row["done_at"] is None


def test_concurrent_sends_of_the_same_delivery_insert_once(engine: Engine) -> None:
    async def run() -> list[DeliveryResult]:
        channel = TaskChannel(engine, clock=lambda: NOW)
        return await asyncio.gather(*(channel.send(task()) for _ in range(8)))

    results = asyncio.run(run())
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(TASK)).scalar_one() == 1
    assert len({r.provider_id for r in results}) == 1


def test_a_task_without_title_or_playbook_is_permanent(engine: Engine) -> None:
    with pytest.raises(PermanentDeliveryError, match="no title"):
        send_plain(engine, task(title=""))
    no_playbook = Delivery(
        message_id=1,
        idempotency_key="k",
        channel="task",
        customer_id="c1",
        rendered=RenderedMessage("task", "t", title="T", body=""),
    )
    with pytest.raises(PermanentDeliveryError, match="playbook"):
        send_plain(engine, no_playbook)
    assert rows(engine) == []


# ------------------------------------------------------------------------------ CRM notification


def test_notifies_the_crm_with_a_signed_json_task(engine: Engine, crm: LocalServer) -> None:
    [result] = send_crm(engine, crm.url + "/crm/tasks", task())

    [request] = crm.requests
    row = rows(engine)[0]
    assert request.path == "/crm/tasks"
    assert request.signature_ok is True
    assert verify(SECRET, request.headers, request.body)
    assert request.header("Idempotency-Key") == "vip:c1:call:1"
    assert request.header("webhook-id") == message_id("vip:c1:call:1")
    payload = request.json()
    assert payload["type"] == "task.created"
    assert payload["data"] == {
        "id": row["id"],
        "customer_id": "c1",
        "playbook": "vip",
        "assignee": "owner@example.com",
        "title": "Call Ann about her renewal",
        "body": "She has 3 open tickets.\nOffer the annual plan.",
        "due_at": DUE.isoformat(),
        "status": "open",
        "created_at": NOW.isoformat(),
        "idempotency_key": "vip:c1:call:1",
    }
    assert result.provider_id == f"task:{row['id']}"


def test_a_resend_inserts_nothing_and_the_crm_sees_one_task(engine: Engine, crm: LocalServer) -> None:
    send_crm(engine, crm.url, task(), task())
    assert len(rows(engine)) == 1
    assert [r.outcome for r in crm.requests] == ["ok", "duplicate"]
    assert crm.unique_deliveries == 1


def test_a_crm_outage_is_transient_and_the_retry_notifies_once(engine: Engine, crm: LocalServer) -> None:
    crm.fail_next(status=503, retry_after=30)
    with pytest.raises(TransientDeliveryError) as info:
        send_crm(engine, crm.url, task())
    assert info.value.retry_after == 30.0
    task_id = rows(engine)[0]["id"]
    assert f"task {task_id} saved" in str(info.value)
    assert "HTTP 503" in str(info.value)

    [result] = send_crm(engine, crm.url, task())
    assert result.provider_id == f"task:{task_id}"
    assert len(rows(engine)) == 1
    assert [r.outcome for r in crm.requests] == ["failed:503", "ok"]


def test_a_crm_refusing_the_task_is_permanent(engine: Engine, crm: LocalServer) -> None:
    crm.fail_next(status=422, body=b'{"error": "unknown assignee owner@example.com"}')
    with pytest.raises(PermanentDeliveryError, match="HTTP 422") as info:
        send_crm(engine, crm.url, task())
    assert "owner@example.com" not in str(info.value)
    assert len(rows(engine)) == 1


def test_a_done_task_is_not_notified_again(engine: Engine, crm: LocalServer) -> None:
    [first] = send_crm(engine, crm.url, task())
    assert complete_task(engine, int((first.provider_id or "").split(":")[1]), NOW)
    [again] = send_crm(engine, crm.url, task())
    assert again == first
    assert len(crm.requests) == 1


# ---------------------------------------------------------------------------- email notification


def test_emails_the_assignee(engine: Engine) -> None:
    email = FakeEmail()
    send_plain(engine, task(title="Call <Ann> & Bob", body="Line 1 <b>\nLine 2"), notifier=email)

    [sent] = email.sent
    row = rows(engine)[0]
    assert sent.channel == "email"
    assert sent.to == "owner@example.com"
    assert sent.idempotency_key == "vip:c1:call:1"
    assert sent.customer_id == "c1"
    assert sent.rendered.subject == "Task: Call <Ann> & Bob"
    text = sent.rendered.text or ""
    assert "Line 1 <b>\nLine 2" in text
    assert "Due: 2025-03-12 17:00 UTC" in text
    assert f"automation tasks done {row['id']}" in text
    html = sent.rendered.html or ""
    assert "Call &lt;Ann&gt; &amp; Bob" in html
    assert "Line 1 &lt;b&gt;<br>" in html
    assert "<Ann>" not in html and "<b>\n" not in html


def test_no_assignee_means_no_email(engine: Engine) -> None:
    email = FakeEmail()
    [result] = send_plain(engine, task(assignee=None), notifier=email)
    assert email.sent == []
    assert result.provider_id == f"task:{rows(engine)[0]['id']}"


def test_an_email_failure_keeps_the_task_and_is_reported(engine: Engine) -> None:
    email = FakeEmail(fail_with=TransientDeliveryError("SMTP 421", retry_after=60))
    with pytest.raises(
        TransientDeliveryError, match="saved, but notifying by email failed: SMTP 421"
    ) as info:
        send_plain(engine, task(), notifier=email)
    assert info.value.retry_after == 60
    email.fail_with = None
    send_plain(engine, task(), notifier=email)
    assert len(email.sent) == 1
    assert len(rows(engine)) == 1


def test_without_notifier_the_row_is_all(engine: Engine) -> None:
    [result] = send_plain(engine, task())
    assert result.provider_id == f"task:{rows(engine)[0]['id']}"


def test_inconsistent_notification_settings_are_config_errors(engine: Engine) -> None:
    email = FakeEmail()
    with pytest.raises(ConfigError, match="AUTOMATION_TASK_WEBHOOK_URL"):
        TaskChannel(engine, crm_url="http://127.0.0.1:9/")
    with pytest.raises(ConfigError, match="AUTOMATION_TASK_WEBHOOK_URL"):
        TaskChannel(engine, notifier=email, crm_url="http://127.0.0.1:9/")
    with pytest.raises(ConfigError, match="needs a notifier"):
        TaskChannel(engine, notify_via="email")
    with pytest.raises(ConfigError, match="AUTOMATION_TASK_WEBHOOK_URL"):
        TaskChannel(engine, notifier=FakeEmail(name="webhook"))
    with pytest.raises(ConfigError, match="email or webhook"):
        TaskChannel(engine, notifier=FakeEmail(name="sms"))
    assert TaskChannel(engine, notifier=email).notify_via == "email"


# --------------------------------------------------------------------------- list and complete


def test_list_and_complete(engine: Engine) -> None:
    send_plain(
        engine,
        task("k1", assignee="a@example.com", due=DUE),
        task("k2", assignee="b@example.com", due=None),
        task("k3", assignee="a@example.com", due=DUE - timedelta(days=1)),
    )
    ids = {r["idempotency_key"]: r["id"] for r in rows(engine)}

    assert [r.idempotency_key for r in list_tasks(engine)] == ["k3", "k1", "k2"]  # by due date, none last
    assert [r.idempotency_key for r in list_tasks(engine, assignee="a@example.com")] == ["k3", "k1"]
    assert [r.idempotency_key for r in list_tasks(engine, status="open")] == ["k3", "k1", "k2"]
    assert list_tasks(engine, status="done") == []

    done_at = NOW + timedelta(hours=2)
    assert complete_task(engine, ids["k1"], done_at) is True
    assert complete_task(engine, ids["k1"], done_at + timedelta(hours=1)) is False  # already done
    assert complete_task(engine, 999_999, done_at) is False

    [done] = list_tasks(engine, status="done")
    assert done.id == ids["k1"]
    assert done.done_at == done_at
    assert [r.idempotency_key for r in list_tasks(engine, status="open")] == ["k3", "k2"]
    assert [r.idempotency_key for r in list_tasks(engine, status="open", assignee="a@example.com")] == ["k3"]
