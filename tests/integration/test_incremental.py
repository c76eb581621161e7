"""Incremental ticks decide exactly what a full evaluation would.

A few hundred customers sit on the example playbook's time boundaries (30 days since sign-up, a
referral leaving its 90-day window, birthdays today in zones from UTC-11 to UTC+14, an unknown zone).
The clock walks in uneven steps across local midnights while the data changes; after every
incremental tick, evaluating everyone finds nothing the tick missed, and a full tick at the same
moment plans nothing more.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, insert, select, text, update
from sqlalchemy.dialects import sqlite

from automation.db.tables import metadata
from automation.plan import incremental
from automation.plan.evaluate import transitions
from automation.playbook.models import load_playbook
from automation.rules.compiled import CompiledPlaybook, compile_playbook
from automation.worker.tick import TickResult, run_tick
from tests.conftest import ROOT

T = metadata.tables
START = datetime(2026, 3, 27, 22, 50, tzinfo=UTC)  # the night Europe moves its clocks forward
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Pacific/Kiritimati",  # UTC+14
    "Pacific/Pago_Pago",  # UTC-11
    "Australia/Adelaide",  # +10:30 / +9:30
    "Mars/Olympus_Mons",  # unknown: the playbook's zone applies
]
QUIET = datetime(2026, 3, 28, 10, 20, tzinfo=UTC)
NEVER = timedelta(days=3650)  # no periodic full evaluation during the walk
LIFECYCLE = load_playbook(ROOT / "playbooks" / "lifecycle.yaml")


def compiled_at(now: datetime) -> CompiledPlaybook:
    return compile_playbook(LIFECYCLE, now)


def people(rng: random.Random, count: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        signed_up = START - timedelta(days=rng.choice([29, 30, 31, 5, 400]), minutes=rng.randrange(-600, 600))
        birthday = START.date() + timedelta(days=rng.randrange(-2, 4))
        rows.append(
            {
                "id": f"c{i:04d}",
                "email": f"c{i}@example.com",
                "phone": "+14155550100",
                "timezone": rng.choice(ZONES),
                "owner_email": "owner@example.com",
                "plan": rng.choice(["starter", "starter", "enterprise"]),
                "clv": rng.choice([50.0, 1500.0, 20000.0]),
                "orders_count": rng.choice([0, 0, 0, 1, 2, 3, 10]),
                "signed_up_at": signed_up,
                "birthday": birthday.replace(year=rng.choice([1980, 1992, 2000])),
                "nps": rng.choice([None, 7]),
                "attributes": {},
            }
        )
    return rows


def referrals(rng: random.Random, ids: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "customer_id": cid,
            "name": "referral_sent",
            "occurred_at": START - timedelta(days=90, hours=rng.randrange(-30, 30)),
            "properties": {},
        }
        for cid in rng.sample(ids, len(ids) // 4)
    ]


def assert_nothing_missed(engine: Engine, now: datetime) -> TickResult:
    """Everyone evaluated at ``now`` agrees with the stored state; a full tick plans nothing."""
    compiled = compiled_at(now)
    with engine.connect() as conn:
        missed = [(t.customer_id, t.previous_stage, t.stage) for t in transitions(conn, compiled)]
    assert missed == []
    full = run_tick(engine, compiled, full=True)
    assert full.stats["full"] == 1
    assert (full.stats["transitions"], full.stats["actions"]) == (0, 0), f"a full tick at {now} found more"
    return full


def test_incremental_ticks_match_full_evaluation(engine: Engine) -> None:
    rng = random.Random(20261123)
    rows = people(rng, 240)
    ids = [r["id"] for r in rows]
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), rows)
        conn.execute(insert(T["event"]), referrals(rng, ids))
    first = run_tick(engine, compiled_at(START))
    assert first.stats["full"] == 1 and first.stats["transitions"] == 240

    now, incremental_ticks, transitions_seen, birthday_rewards = START, 0, 0, 0
    steps = [timedelta(minutes=m) for m in (15, 15, 45, 180, 410, 15, 660, 90, 1500, 15, 300, 2000, 15)]
    for step, delta in enumerate(steps):
        now += delta
        with engine.begin() as conn:  # the data moves too: orders, new referrals, a move abroad
            changed = rng.sample(ids, 6)
            conn.execute(
                update(T["customer"])
                .where(T["customer"].c.id.in_(changed[:3]))
                .values(orders_count=T["customer"].c.orders_count + 1)
            )
            conn.execute(
                insert(T["event"]),
                [
                    {"customer_id": cid, "name": "referral_sent", "occurred_at": now, "properties": {}}
                    for cid in changed[3:5]
                ],
            )
            conn.execute(
                update(T["customer"]).where(T["customer"].c.id == changed[5]).values(timezone=ZONES[step % 9])
            )
            if step == 6:  # a removed event: the customer may leave loyalty
                conn.execute(delete(T["event"]).where(T["event"].c.customer_id == changed[3]))
        result = run_tick(engine, compiled_at(now), full_every=NEVER)
        assert result.stats["full"] == 0
        assert 6 <= result.stats["candidates"] < len(ids) or delta > timedelta(hours=12)
        incremental_ticks += 1
        transitions_seen += result.stats["transitions"]
        assert_nothing_missed(engine, now)
    with engine.connect() as conn:
        birthday_rewards = conn.execute(
            select(func.count()).where(T["outbox"].c.template == "birthday_reward")
        ).scalar_one()
    assert incremental_ticks == len(steps)
    assert transitions_seen > 30  # time and data moved customers between stages along the way
    assert birthday_rewards > 10  # and birthdays came round in zone after zone


def test_a_tick_evaluates_everyone_when_it_must(engine: Engine) -> None:
    rows = people(random.Random(5), 20)  # 10:20-10:50 UTC: no time zone's date turns
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), rows)
    assert run_tick(engine, compiled_at(QUIET)).stats["full"] == 1  # first tick
    later = run_tick(engine, compiled_at(QUIET + timedelta(minutes=15)))
    assert later.stats["full"] == 0 and later.stats["candidates"] == 0  # nothing changed
    assert run_tick(engine, compiled_at(QUIET)).stats["full"] == 1  # the clock went back
    assert run_tick(engine, compiled_at(QUIET + timedelta(minutes=30)), full=True).stats["full"] == 1
    assert run_tick(engine, compiled_at(QUIET + timedelta(days=1, minutes=31))).stats["full"] == 1  # daily
    with engine.begin() as conn:  # other rules: the stored fingerprint no longer matches
        conn.execute(update(T["tick_cursor"]).values(fingerprint="an older playbook"))
    assert run_tick(engine, compiled_at(QUIET + timedelta(days=1, minutes=45))).stats["full"] == 1


def test_triggers_log_every_writer_and_ticks_prune_the_log(engine: Engine) -> None:
    rows = people(random.Random(6), 10)
    change = T["customer_change"]
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), rows)
        logged = conn.execute(select(change.c.customer_id)).scalars().all()
    assert sorted(logged) == sorted(r["id"] for r in rows)
    run_tick(engine, compiled_at(QUIET))
    with engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(change)).scalar_one() == 0  # read: pruned
        # hand-written SQL is seen as well as the program's own writes
        conn.execute(text("UPDATE customer SET orders_count = 10 WHERE id = 'c0003'"))
        conn.execute(
            insert(T["event"]).values(customer_id="c0004", name="x", occurred_at=QUIET, properties={})
        )
        conn.execute(text("DELETE FROM event WHERE customer_id = 'c0004'"))
        logged = conn.execute(select(change.c.customer_id).order_by(change.c.seq)).scalars().all()
    assert logged == ["c0003", "c0004", "c0004"]
    result = run_tick(engine, compiled_at(QUIET + timedelta(minutes=15)))
    assert result.stats["full"] == 0 and result.stats["candidates"] == 2
    assert result.stats["transitions"] == 1  # c0003 reached loyalty
    with engine.connect() as conn:
        state = conn.execute(
            select(T["customer_state"].c.stage).where(T["customer_state"].c.customer_id == "c0003")
        ).scalar_one()
    assert state == "loyalty"


@pytest.mark.postgres
def test_postgresql_horizon_waits_for_writers_or_reads_without_one(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg_engine.begin() as conn:
        conn.execute(insert(T["customer"]), people(random.Random(7), 3))
    assert incremental.change_horizon(pg_engine) == 3
    monkeypatch.setattr(incremental, "LOCK_TIMEOUT", "200ms")
    writer = pg_engine.connect()
    try:
        writer.begin()
        writer.execute(update(T["customer"]).where(T["customer"].c.id == "c0000").values(orders_count=5))
        # an uncommitted write holds the log: no horizon, so the cursor will not move past it
        assert incremental.change_horizon(pg_engine) is None
        writer.rollback()
    finally:
        writer.close()
    assert incremental.change_horizon(pg_engine) == 3  # the rolled-back write left nothing


def _sql(selects: list[object]) -> str:
    options = {"literal_binds": True}
    return " ".join(str(s.compile(dialect=sqlite.dialect(), compile_kwargs=options)) for s in selects)  # type: ignore[attr-defined]


def test_birthday_today_is_a_candidate_only_when_the_date_turns() -> None:
    compiled = compiled_at(datetime(2026, 6, 1, 10, 20, tzinfo=UTC))
    since = compiled.now - timedelta(minutes=15)
    sql = _sql(incremental.crossings(compiled.recurring_clock, compiled, since, compiled.now, recurring=True))
    assert "-05-31'" not in sql and "-06-01'" not in sql  # 10:05-10:20 UTC: no zone's date turned
    midnight = compiled_at(datetime(2026, 6, 1, 0, 5, tzinfo=UTC))
    since = midnight.now - timedelta(minutes=15)
    sql = _sql(incremental.crossings(midnight.recurring_clock, midnight, since, midnight.now, recurring=True))
    assert "'1990-05-31'" in sql and "'1990-06-01'" in sql and "IN ('05-31', '06-01')" in sql
    # the birthday rule is a recurring rule: the stage rules do not look at birthdays
    assert "birthday" not in _sql(incremental.crossings(midnight.clock, midnight, since, midnight.now))


DAILY = """\
name: daily
timezone: Europe/Berlin
segments:
  - name: everyone
    touch: none
stages:
  - name: regular
    when: orders_count >= 2
programs: {}
recurring:
  - name: daily_digest
    when: stage == "regular"
    once_per: day
    steps:
      - email: birthday_reward
"""


def test_a_daily_recurring_rule_fires_in_each_zone_as_its_day_turns(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "daily.yaml"
    path.write_text(DAILY)
    loaded = load_playbook(path)
    rows = people(random.Random(8), 60)
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), rows)
    regulars = sum(1 for r in rows if r["orders_count"] >= 2)
    now = QUIET
    run_tick(engine, compile_playbook(loaded, now))
    for _ in range(8):  # three hours at a time: a day turns somewhere on most ticks
        now += timedelta(hours=3)
        result = run_tick(engine, compile_playbook(loaded, now), full_every=NEVER)
        assert result.stats["full"] == 0
        full = run_tick(engine, compile_playbook(loaded, now), full=True)
        assert full.stats["actions"] == 0, f"the incremental tick at {now} missed digests"
    with engine.connect() as conn:
        digests = conn.execute(select(func.count()).select_from(T["outbox"])).scalar_one()
    assert digests >= 2 * regulars  # a day later everyone has had a second digest


@pytest.mark.postgres
def test_a_large_tick_on_postgresql_refreshes_the_planner_statistics(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from automation.outbox import sink as outbox

    monkeypatch.setattr(outbox, "ANALYZE_FROM", 10)  # as if 10 rows were many
    with pg_engine.begin() as conn:
        conn.execute(insert(T["customer"]), people(random.Random(9), 120))
    result = run_tick(pg_engine, compiled_at(QUIET))
    assert result.stats["actions"] >= 20
    with pg_engine.connect() as conn:  # TRUNCATE left -1 (unknown); ANALYZE counted the rows
        counted = dict(
            conn.execute(
                text("SELECT relname, reltuples FROM pg_class WHERE relname IN ('outbox', 'enrollment')")
            ).all()
        )
    assert counted["outbox"] >= 20 and counted["enrollment"] >= 20


def test_the_change_log_is_kept_until_every_playbook_has_read_it(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "daily.yaml"
    path.write_text(DAILY)
    daily = load_playbook(path)
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), people(random.Random(10), 30))
    run_tick(engine, compiled_at(QUIET))
    run_tick(engine, compile_playbook(daily, QUIET))
    with engine.begin() as conn:
        conn.execute(update(T["customer"]).where(T["customer"].c.id == "c0001").values(orders_count=7))
    later = QUIET + timedelta(minutes=15)
    assert run_tick(engine, compiled_at(later)).stats["candidates"] == 1
    with engine.connect() as conn:  # read by lifecycle, not yet by daily: still there
        assert conn.execute(select(func.count()).select_from(T["customer_change"])).scalar_one() == 1
    result = run_tick(engine, compile_playbook(daily, later))
    assert result.stats["full"] == 0 and result.stats["candidates"] == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(T["customer_change"])).scalar_one() == 0
        stage = conn.execute(
            select(T["customer_state"].c.stage).where(
                T["customer_state"].c.playbook == "daily", T["customer_state"].c.customer_id == "c0001"
            )
        ).scalar_one()
    assert stage == "regular"

    # a playbook that has not ticked for over a week no longer holds the log back; it starts over
    week_later = later + timedelta(days=8)
    with engine.begin() as conn:
        conn.execute(update(T["customer"]).where(T["customer"].c.id == "c0002").values(orders_count=9))
    run_tick(engine, compiled_at(week_later))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(T["customer_change"])).scalar_one() == 0
    assert run_tick(engine, compile_playbook(daily, week_later)).stats["full"] == 1
