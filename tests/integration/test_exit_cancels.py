"""Leaving a stage cancels exactly that stage's messages still to send, from this playbook."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select, update

from automation.db.tables import metadata
from automation.playbook.models import load_playbook
from automation.rules.compiled import compile_playbook
from automation.worker.tick import run_tick
from tests.conftest import ROOT

T = metadata.tables
START = datetime(2026, 11, 22, 10, tzinfo=UTC)  # 23:00 in Auckland: inside the quiet hours there
LIFECYCLE = load_playbook(ROOT / "playbooks" / "lifecycle.yaml")


def message(
    key: str, customer_id: str, stage: str, status: str, playbook: str = "lifecycle"
) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "playbook": playbook,
        "customer_id": customer_id,
        "channel": "email",
        "template": "tips_and_offers",
        "stage": stage,
        "status": status,
        "due_at": START,
        "created_at": START - timedelta(days=40),
        "payload": {},
    }


def test_an_exit_cancels_its_stages_unsent_messages_and_nothing_else(engine: Engine) -> None:
    people = [
        {
            "id": customer_id,
            "email": f"{customer_id}@example.com",
            "timezone": "Pacific/Auckland",
            "orders_count": 2,  # retention
            "signed_up_at": START - timedelta(days=300),
            "attributes": {},
        }
        for customer_id in ("kiri", "stays")
    ]
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), people)
    run_tick(engine, compile_playbook(LIFECYCLE, START))
    with engine.begin() as conn:
        conn.execute(
            insert(T["outbox"]),
            [
                message("old-sent", "kiri", "retention", "sent"),  # sent: stays sent
                message("old-retry", "kiri", "retention", "retry"),  # still to send: cancelled
                message("other-stage", "kiri", "loyalty", "pending"),  # another stage: untouched
                message("other-playbook", "kiri", "retention", "pending", playbook="winback"),
            ],
        )
        conn.execute(update(T["customer"]).where(T["customer"].c.id == "kiri").values(orders_count=1))
    result = run_tick(engine, compile_playbook(LIFECYCLE, START + timedelta(minutes=15)))
    assert result.stats["exited"] == 1
    o = T["outbox"].c
    with engine.connect() as conn:
        rows = {
            (r.customer_id, r.playbook, r.stage, r.template, r.idempotency_key): (r.status, r.last_error)
            for r in conn.execute(
                select(
                    o.customer_id, o.playbook, o.stage, o.template, o.idempotency_key, o.status, o.last_error
                )
            )
        }
    deferred = {k: v for k, v in rows.items() if k[0] == "kiri" and k[4].startswith("lifecycle:")}
    # the retention email the first tick deferred to the morning, and the retry, are cancelled
    assert {k[2:4]: v for k, v in deferred.items() if k[2] == "retention"} == {
        ("retention", "tips_and_offers"): ("cancelled", "left stage retention")
    }
    assert rows[("kiri", "lifecycle", "retention", "tips_and_offers", "old-retry")] == (
        "cancelled",
        "left stage retention",
    )
    assert rows[("kiri", "lifecycle", "retention", "tips_and_offers", "old-sent")][0] == "sent"
    assert rows[("kiri", "lifecycle", "loyalty", "tips_and_offers", "other-stage")][0] == "pending"
    assert rows[("kiri", "winback", "retention", "tips_and_offers", "other-playbook")][0] == "pending"
    # the customer who stayed keeps the deferred email
    assert {v[0] for k, v in rows.items() if k[0] == "stays"} == {"pending"}
