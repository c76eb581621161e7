"""A customer walked through acquisition -> conversion -> retention over simulated weeks.

Every tick and drain runs at an injected time through ``Daemon`` (the worker's own code path): each
message, wait, guard, stage exit and re-entry is asserted.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select, update

from automation.config import Settings
from automation.db.tables import metadata
from automation.outbox.dispatch import DispatchConfig
from automation.worker.daemon import Daemon
from tests.conftest import ROOT
from tests.integration.test_dispatch import Recorder

T = metadata.tables
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, 11:00 in Berlin


def customer(**fields: Any) -> dict[str, Any]:
    row = {
        "id": "ada",
        "email": "ada@example.com",
        "phone": "+4915112345678",
        "first_name": "Ada",
        "timezone": "Europe/Berlin",
        "owner_email": "owner@example.com",
        "plan": "starter",
        "clv": 50.0,
        "orders_count": 0,
        "signed_up_at": START - timedelta(hours=1),
        "nps": None,
        "attributes": {},
    }
    row.update(fields)
    return row


class Journey:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.channels = {name: Recorder(name) for name in ("email", "sms", "webhook", "task")}
        self.daemon = Daemon(
            engine,
            Settings(templates_dir=ROOT / "templates"),
            self.channels,  # type: ignore[arg-type]
            [ROOT / "playbooks" / "lifecycle.yaml"],
            DispatchConfig(worker_id="tt"),
        )
        self.daemon.load()

    def at(self, when: datetime) -> list[tuple[str, str]]:
        """Tick and drain at ``when``; return (channel, template) of what was sent then."""
        before = {name: len(ch.sent) for name, ch in self.channels.items()}
        self.daemon.tick_all(when)
        asyncio.run(self.daemon.drain(lambda: when))
        return [
            (name, d.metadata["template"])
            for name, ch in self.channels.items()
            for d in ch.sent[before[name] :]
        ]

    def set(self, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(T["customer"]).where(T["customer"].c.id == "ada").values(**values))

    def event(self, name: str, when: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(T["event"]).values(customer_id="ada", name=name, occurred_at=when, properties={})
            )

    def history(self) -> list[tuple[str | None, str | None]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(T["stage_history"]).order_by(T["stage_history"].c.id)).all()
        return [(r.from_stage, r.to_stage) for r in rows]


def test_a_customer_journey_over_weeks(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), [customer()])
    j = Journey(engine)

    # day 0: signed up -> acquisition, self-serve: the welcome email now, then a 3-day wait
    assert j.at(START) == [("email", "welcome")]
    assert j.at(START + timedelta(hours=1)) == []  # nothing twice, nothing before the wait is over
    # day 3: the guard (unless activated in the last 3 days) holds getting_started for an active customer
    j.event("activated", START + timedelta(days=2))
    assert j.at(START + timedelta(days=3, hours=1)) == []
    with engine.connect() as conn:
        skipped = conn.execute(select(T["outbox"]).where(T["outbox"].c.template == "getting_started")).one()
    assert skipped.status == "skipped" and "step guard" in skipped.last_error

    # day 5: first order -> conversion (no program); day 9: second order -> retention: tips email
    j.set(orders_count=1, last_order_at=START + timedelta(days=5))
    assert j.at(START + timedelta(days=5)) == []
    j.set(orders_count=2, last_order_at=START + timedelta(days=9))
    assert j.at(START + timedelta(days=9)) == [("email", "tips_and_offers")]
    # day 23: after the 14-day wait, the NPS survey by SMS (nps is null); at 12:00 Berlin, no quiet hours
    assert j.at(START + timedelta(days=23, hours=1)) == [("sms", "feedback_survey")]

    # becomes a VIP (growth segment, low touch) and refers a friend -> loyalty: vip_welcome
    j.set(clv=2500.0)
    j.event("referral_sent", START + timedelta(days=30))
    assert j.at(START + timedelta(days=30, hours=1)) == [("email", "vip_welcome")]

    assert j.history() == [
        (None, "acquisition"),
        ("acquisition", "conversion"),
        ("conversion", "retention"),
        ("retention", "loyalty"),
    ]


def test_leaving_a_stage_cancels_pending_steps_and_reentry_waits_for_the_cooldown(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), [customer(orders_count=2)])
    j = Journey(engine)
    assert j.at(START) == [("email", "tips_and_offers")]  # retention, then 14 days of waiting
    j.set(orders_count=1)  # e.g. an order refunded: back to conversion
    assert j.at(START + timedelta(days=1)) == []
    with engine.connect() as conn:
        enrollment = conn.execute(select(T["enrollment"]).where(T["enrollment"].c.stage == "retention")).one()
    assert (enrollment.status, enrollment.end_reason) == ("exited", "left stage retention")
    # back in retention within the 30-day cooldown: the program does not start again
    j.set(orders_count=2)
    assert j.at(START + timedelta(days=2)) == []
    # past day 14 nothing from the exited run comes due
    assert j.at(START + timedelta(days=15)) == []
    # leaving and coming back after the cooldown starts it again
    j.set(orders_count=1)
    j.at(START + timedelta(days=40))
    j.set(orders_count=2)
    assert j.at(START + timedelta(days=41)) == [("email", "tips_and_offers")]


def test_quiet_hours_across_the_dst_change_defer_to_local_eight(engine: Engine) -> None:
    # Berlin moves to summer time on 2026-03-29 at 02:00; at 01:30 UTC it is 03:30 CEST, inside 21:00-08:00
    night = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), [customer(signed_up_at=night - timedelta(hours=2))])
    j = Journey(engine)
    assert j.at(night) == []
    with engine.connect() as conn:
        row = conn.execute(select(T["outbox"]).where(T["outbox"].c.template == "welcome")).one()
    assert row.status == "pending"
    assert row.due_at.replace(tzinfo=UTC) == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)  # 08:00 CEST
    assert j.at(datetime(2026, 3, 29, 5, 59, tzinfo=UTC)) == []
    assert j.at(datetime(2026, 3, 29, 6, 0, tzinfo=UTC)) == [("email", "welcome")]


def test_frequency_cap_defers_to_the_first_moment_it_fits(engine: Engine) -> None:
    from automation.playbook.models import FrequencyCap

    with engine.begin() as conn:
        conn.execute(
            insert(T["customer"]), [customer(orders_count=3, birthday=START.date().replace(year=1990))]
        )
    j = Journey(engine)
    j.daemon.settings = Settings(
        templates_dir=ROOT / "templates", global_cap=FrequencyCap(count=1, period=timedelta(days=2))
    )
    # retention tips and the birthday reward compete for a global cap of 1 per 2 days
    assert j.at(START) == [("email", "tips_and_offers")]
    with engine.connect() as conn:
        held = conn.execute(select(T["outbox"]).where(T["outbox"].c.template == "birthday_reward")).one()
    assert held.status == "pending" and held.last_error.startswith("global frequency cap 1/1 per 2d")
    assert held.due_at.replace(tzinfo=UTC) == START + timedelta(days=2)
    assert j.at(START + timedelta(days=2)) == [("email", "birthday_reward")]


def test_an_open_high_touch_task_holds_automated_email_until_it_is_done(engine: Engine) -> None:
    from automation.channels.task import complete_task

    birthday = START.date().replace(year=1985)
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), [customer(orders_count=3, clv=25000.0, birthday=birthday)])
        conn.execute(
            insert(T["task"]).values(
                idempotency_key="manual:1",
                playbook="manual",
                customer_id="ada",
                assignee="owner@example.com",
                title="Renewal call",
                status="open",
                created_at=START,
            )
        )
    j = Journey(engine)
    # strategic (high touch), retention: the quarterly review task goes out; the birthday email waits
    assert j.at(START) == [("task", "quarterly_review")]
    with engine.connect() as conn:
        held = conn.execute(select(T["outbox"]).where(T["outbox"].c.template == "birthday_reward")).one()
    assert held.status == "pending" and held.last_error == "held: a high-touch task is open for this customer"
    assert j.at(START + timedelta(hours=7)) == []  # still open: held again at send time
    complete_task(engine, 1, START + timedelta(hours=8))
    # the next day at 11:00 in Berlin (no quiet hours) it goes
    assert j.at(START + timedelta(days=1)) == [("email", "birthday_reward")]


def test_several_customers_leaving_stages_in_one_tick(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(T["customer"]),
            [customer(id=f"c{i}", email=f"c{i}@example.com", orders_count=2) for i in range(3)],
        )
    j = Journey(engine)
    assert sorted(j.at(START)) == [("email", "tips_and_offers")] * 3
    with engine.begin() as conn:
        conn.execute(update(T["customer"]).values(orders_count=1))  # all three back to conversion at once
    j.at(START + timedelta(days=1))
    with engine.connect() as conn:
        ended = conn.execute(select(T["enrollment"].c.status)).scalars().all()
    assert ended == ["exited"] * 3
