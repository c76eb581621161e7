"""automation.feedback.record on SQLite and PostgreSQL: each report once, on the message, as an event,
as consent."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, insert, select

from automation.db.tables import CHANGE, EVENT, FEEDBACK, OUTBOX, SUPPRESSION
from automation.feedback.record import SOFT_BOUNCES, Report, record
from tests.integration.known import NOW, T, customer

KEY = "lifecycle_2026-11-22_ada_welcome"


def _setup(engine: Engine) -> int:
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), [customer("ada", phone="+14155550101"), customer("bob")])
        return int(
            conn.execute(
                insert(OUTBOX)
                .values(
                    idempotency_key=KEY,
                    playbook="lifecycle",
                    customer_id="ada",
                    channel="email",
                    template="welcome",
                    stage="acquisition",
                    step="0",
                    payload={},
                    status="sent",
                    due_at=NOW,
                    created_at=NOW,
                    sent_at=NOW,
                    provider_id="sg-1",
                )
                .returning(OUTBOX.c.id)
            ).scalar_one()
        )


def _record(engine: Engine, **fields: Any) -> str:
    fields.setdefault("source", "generic")
    fields.setdefault("channel", "email")
    fields.setdefault("occurred_at", NOW + timedelta(minutes=5))
    with engine.begin() as conn:
        return record(conn, Report(**fields), NOW + timedelta(minutes=6))


def _message(engine: Engine, outbox_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(OUTBOX).where(OUTBOX.c.id == outbox_id)).one()


def _events(engine: Engine, name: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(EVENT).where(EVENT.c.name == name).order_by(EVENT.c.id)))


def _suppressions(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(SUPPRESSION).order_by(SUPPRESSION.c.channel, SUPPRESSION.c.customer_id))
        return [(r.customer_id, r.channel, r.reason) for r in rows]


def test_a_click_is_recorded_once_on_the_message_and_as_an_event(engine: Engine) -> None:
    outbox_id = _setup(engine)
    with engine.connect() as conn:
        seq = conn.execute(select(CHANGE.c.seq).order_by(CHANGE.c.seq.desc()).limit(1)).scalar() or 0
    click = {"kind": "clicked", "unique": "click-1", "idempotency_key": KEY, "url": "https://example.com/a"}
    assert _record(engine, **click) == "recorded"
    assert _record(engine, **click) == "duplicate"  # a provider's retry
    assert _record(engine, **(click | {"unique": "click-2"})) == "recorded"
    message = _message(engine, outbox_id)
    assert (message.clicks, message.clicked_at) == (2, NOW + timedelta(minutes=5))
    events = _events(engine, "email_clicked")
    assert len(events) == 2 and events[0].customer_id == "ada"
    assert events[0].properties == {
        "source": "generic",
        "playbook": "lifecycle",
        "stage": "acquisition",
        "step": "0",
        "template": "welcome",
        "idempotency_key": KEY,
        "url": "https://example.com/a",
    }
    with engine.connect() as conn:
        changed = conn.execute(select(CHANGE.c.customer_id).where(CHANGE.c.seq > seq)).scalars().all()
        assert conn.execute(select(FEEDBACK.c.outbox_id)).scalars().all() == [outbox_id, outbox_id]
    assert "ada" in changed  # the incremental tick sees the customer


def test_opens_count_machine_ones_apart_and_delivery_keeps_the_first_time(engine: Engine) -> None:
    outbox_id = _setup(engine)
    _record(engine, kind="opened", unique="o1", outbox_id=outbox_id, machine=True)
    later = NOW + timedelta(hours=1)
    _record(engine, kind="opened", unique="o2", outbox_id=outbox_id, occurred_at=later)
    _record(engine, kind="delivered", unique="d1", provider_id="sg-1", status="delivered")
    _record(engine, kind="delivered", unique="d2", provider_id="sg-1", occurred_at=later)
    message = _message(engine, outbox_id)
    assert (message.opens, message.machine_opens, message.opened_at) == (1, 1, later)
    assert (message.delivered_at, message.provider_status) == (NOW + timedelta(minutes=5), "delivered")
    assert [e.properties["machine"] for e in _events(engine, "email_opened")] == [True, False]


def test_hard_bounce_complaint_and_unsubscribe_suppress_at_once(engine: Engine) -> None:
    outbox_id = _setup(engine)
    _record(
        engine, kind="bounced", unique="b1", idempotency_key=KEY, status="HardBounce", reason="no such user"
    )
    assert _suppressions(engine) == [("ada", "email", "bounced")]
    assert _message(engine, outbox_id).bounced_at is not None
    assert _events(engine, "email_bounced")[0].properties["type"] == "hard"
    _record(engine, kind="complained", unique="c1", address="BOB@example.com")  # matched by address
    _record(engine, kind="unsubscribed", unique="u1", channel="sms", address="+14155550101")
    assert _suppressions(engine) == [("ada", "email", "bounced"), ("bob", "email", "complained"),
                                     ("ada", "sms", "unsubscribed")]  # fmt: skip


def test_soft_bounces_suppress_after_the_limit_within_the_window(engine: Engine) -> None:
    _setup(engine)
    old = NOW - timedelta(days=40)  # outside the window: does not count
    _record(engine, kind="soft_bounced", unique="s0", idempotency_key=KEY, occurred_at=old)
    for n in range(1, SOFT_BOUNCES):
        _record(engine, kind="soft_bounced", unique=f"s{n}", idempotency_key=KEY)
    assert _suppressions(engine) == []
    _record(engine, kind="soft_bounced", unique="last", idempotency_key=KEY)
    assert _suppressions(engine) == [("ada", "email", "bounced")]
    assert {e.properties["type"] for e in _events(engine, "email_bounced")} == {"soft"}


def test_a_dropped_message_is_failed_with_the_reason(engine: Engine) -> None:
    outbox_id = _setup(engine)
    _record(engine, kind="failed", unique="f1", provider_id="sg-1", status="dropped", reason="Invalid")
    message = _message(engine, outbox_id)
    assert (message.status, message.last_error, message.provider_status) == (
        "failed",
        "generic: Invalid",
        "dropped",
    )


def test_a_report_for_no_message_or_customer_is_unmatched_and_changes_nothing(engine: Engine) -> None:
    _setup(engine)
    assert _record(engine, kind="bounced", unique="x", address="stranger@example.com") == "unmatched"
    assert _record(engine, kind="bounced", unique="x", address="stranger@example.com") == "duplicate"
    assert _suppressions(engine) == [] and _events(engine, "email_bounced") == []


def test_sms_stop_start_and_help(engine: Engine) -> None:
    _setup(engine)
    sms = {"channel": "sms", "kind": "replied", "address": "+14155550101", "source": "twilio"}
    _record(engine, **sms, unique="r1", body=" stop ")
    assert _suppressions(engine) == [("ada", "sms", "unsubscribed")]
    _record(engine, **sms, unique="r2", body="HELP")
    _record(engine, **sms, unique="r3", body="Start")
    assert _suppressions(engine) == []
    keywords = [e.properties.get("keyword") for e in _events(engine, "sms_replied")]
    assert keywords == ["stop", "help", "start"]


def test_status_and_metrics_count_what_happened_per_channel(engine: Engine) -> None:
    from automation.worker.metrics import collect_database, render
    from automation.worker.status import queue_status

    outbox_id = _setup(engine)
    _record(engine, kind="delivered", unique="d", outbox_id=outbox_id)
    _record(engine, kind="opened", unique="o1", outbox_id=outbox_id, machine=True)
    _record(engine, kind="clicked", unique="c1", outbox_id=outbox_id, url="https://example.com")
    _record(engine, kind="clicked", unique="c2", outbox_id=outbox_id, url="https://example.com")
    with engine.connect() as conn:
        facts = queue_status(conn, NOW).engagement
    expected = {"delivered": 1, "bounced": 0, "complained": 0, "opened": 0, "machine_opened": 1, "clicked": 1}
    assert facts == {"email": expected}
    text = render(collect_database(engine, NOW))
    assert 'automation_outbox_engagement_messages{channel="email",fact="clicked"} 1' in text
    assert 'automation_outbox_engagement_messages{channel="email",fact="machine_opened"} 1' in text


def test_explain_shows_what_happened_and_where_a_suppression_came_from(engine: Engine) -> None:
    from automation.authoring.explain import explain, render_text

    outbox_id = _setup(engine)
    _record(engine, kind="clicked", unique="c1", outbox_id=outbox_id, url="https://example.com")
    _record(engine, kind="opened", unique="o1", outbox_id=outbox_id, machine=True)
    _record(engine, kind="bounced", unique="b1", outbox_id=outbox_id, source="sendgrid", status="bounce")
    with engine.connect() as conn:
        result = explain(conn, [], "ada")
    text = render_text(result)
    assert "[opened 0 (+1 machine), clicked 1, bounced]" in text
    assert "email    bounced       since" in text and "(sendgrid: bounced (bounce))" in text
    data = result.as_json()
    assert [(s["channel"], s["reason"], s["note"]) for s in data["suppressions"]] == [
        ("email", "bounced", "sendgrid: bounced (bounce)")
    ]
    assert data["outbox"][0]["clicks"] == 1 and data["outbox"][0]["bounced_at"] is not None
