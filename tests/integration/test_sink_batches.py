"""A tick writes the same rows whether its sink holds the whole plan or writes it seven rows at a time."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, select, update

from automation.db.tables import metadata
from automation.outbox import sink as outbox
from automation.playbook.models import load_playbook
from automation.rules.compiled import compile_playbook
from automation.worker.tick import run_tick
from tests.conftest import ROOT

T = metadata.tables
START = datetime(2026, 11, 22, 12, tzinfo=UTC)
LIFECYCLE = load_playbook(ROOT / "playbooks" / "lifecycle.yaml")


def customers() -> list[dict[str, Any]]:
    rng = random.Random(11)
    return [
        {
            "id": f"c{i:03d}",
            "email": f"c{i}@example.com" if i % 9 else None,
            "phone": "+14155550100",
            "owner_email": "owner@example.com" if i % 4 else None,
            "timezone": rng.choice(["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]),
            "plan": rng.choice(["free", "pro", "enterprise"]),
            "clv": rng.choice([0, 500, 2000, 20000]),
            "orders_count": rng.choice([0, 1, 2, 5, 12]),
            "signed_up_at": START - timedelta(days=rng.randrange(1, 60)),
            "birthday": date(1990, 11, 22) if i % 7 == 0 else date(1990, 5, 1),
            "attributes": {},
        }
        for i in range(240)
    ]


def walk(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """A first tick, a change of stage for a third of the customers, a tick 15 minutes on, one 3 days on."""
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), customers())
    run_tick(engine, compile_playbook(LIFECYCLE, START))
    with engine.begin() as conn:
        moved = [f"c{i:03d}" for i in range(0, 240, 3)]
        conn.execute(update(T["customer"]).where(T["customer"].c.id.in_(moved)).values(orders_count=3))
    run_tick(engine, compile_playbook(LIFECYCLE, START + timedelta(minutes=15)))
    run_tick(engine, compile_playbook(LIFECYCLE, START + timedelta(days=3)))
    o, e, s, h = T["outbox"].c, T["enrollment"].c, T["customer_state"].c, T["stage_history"].c
    with engine.connect() as conn:
        return {
            "outbox": sorted(
                conn.execute(select(o.idempotency_key, o.status, o.due_at, o.last_error, o.payload)).all(),
                key=repr,
            ),
            "enrollment": sorted(
                conn.execute(
                    select(e.customer_id, e.stage, e.started_at, e.step_index, e.next_step_at, e.status)
                ).all(),
                key=repr,
            ),
            "state": sorted(conn.execute(select(s.customer_id, s.segment, s.stage)).all()),
            "history": sorted(
                conn.execute(select(h.customer_id, h.from_stage, h.to_stage, h.at)).all(), key=repr
            ),
        }


def clear(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(delete(table))


def test_the_plan_written_in_batches_of_seven_is_the_plan_written_at_once(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_once = walk(engine)
    clear(engine)
    monkeypatch.setattr(outbox, "FLUSH_EVERY", 7)
    in_batches = walk(engine)
    assert len(at_once["outbox"]) > 200 and len(at_once["history"]) > 250
    assert any(row[1] == "cancelled" for row in at_once["outbox"])  # exits cancelled deferred messages
    assert in_batches == at_once
