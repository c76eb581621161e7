"""Goals: conversions detected by the tick inside their window only, attributed to the last message sent,
recorded once, with the cohort of the entry (holdouts included), across time zones and a change of clocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update

from automation.authoring.validate import check_playbook
from automation.db.tables import CONVERSION, CUSTOMER, ENROLLMENT, EVENT, OUTBOX
from automation.messages.store import TemplateStore
from automation.outbox.lease import claim, mark_sent
from automation.plan import assign
from automation.playbook.models import LoadedPlaybook
from automation.rules.compiled import compile_playbook
from automation.worker.tick import TickResult, run_tick
from tests.conftest import ROOT

TEMPLATES = TemplateStore(ROOT / "templates")
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # 11:00 in Berlin, 05:00 in New York

PLAYBOOK = """\
name: shop
holdout: HOLDOUT
segments:
  - name: everyone
    touch: none
stages:
  - name: fresh
    when: orders_count == 0
  - name: buyer
    when: orders_count >= 1
programs:
  fresh:
    none:
      - email: welcome
      - wait: 1d
      - email: getting_started
goal:
  when: orders_count >= 1
  within: WITHIN
goals:
  fresh:
    when: events("activated") > 0
    within: 3d
"""


def _loaded(tmp_path: Path, holdout: str = "0%", within: str = "7d") -> LoadedPlaybook:
    path = tmp_path / "shop.yaml"
    path.write_text(PLAYBOOK.replace("HOLDOUT", holdout).replace("WITHIN", within))
    return check_playbook(path, TEMPLATES, NOW).loaded


def _tick(engine: Engine, loaded: LoadedPlaybook, at: datetime) -> TickResult:
    # incremental ticks only (no daily full tick): the candidates of each tick are what is tested
    return run_tick(engine, compile_playbook(loaded, at), full_every=timedelta(days=365))


def _customers(engine: Engine, ids: list[str], timezone: str = "UTC", **values: Any) -> None:
    rows = [
        {"id": cid, "email": f"{cid}@example.com", "timezone": timezone, "orders_count": 0, "attributes": {}}
        | values
        for cid in ids
    ]
    with engine.begin() as conn:
        conn.execute(insert(CUSTOMER), rows)


def _order(engine: Engine, cid: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == cid).values(orders_count=1))


def _send_due(engine: Engine, at: datetime) -> dict[str, list[int]]:
    """Claim and mark sent every message due at ``at``, as the dispatcher would: customer -> outbox ids."""
    with engine.begin() as conn:
        rows = claim(conn, "w1", at, timedelta(minutes=5), limit=1000)
        mark_sent(conn, "w1", [(row.id, f"p-{row.id}") for row in rows], at)
    sent: dict[str, list[int]] = {}
    for row in rows:
        sent.setdefault(row.customer_id, []).append(row.id)
    return sent


def _conversions(engine: Engine) -> dict[tuple[str, str], Any]:
    with engine.connect() as conn:
        rows = conn.execute(select(CONVERSION)).all()
    found = {(row.goal, row.customer_id): row for row in rows}
    assert len(found) == len(rows)  # one row per goal and customer in these tests (one entry each)
    return found


def test_a_goal_converts_inside_its_window_only_and_once(engine: Engine, tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    _customers(engine, ["early", "late", "never"])
    first = _tick(engine, loaded, NOW)
    assert first.stats["conversions"] == 0 and first.stats["enrolled"] == 3
    _order(engine, "early")
    at = NOW + timedelta(days=2)
    second = _tick(engine, loaded, at)
    assert second.stats["full"] == 0 and second.stats["conversions"] == 1
    again = _tick(engine, loaded, at)  # the same moment again: nothing new
    assert again.stats["conversions"] == 0
    _tick(engine, loaded, at + timedelta(hours=1))
    found = _conversions(engine)
    assert list(found) == [("playbook", "early")]
    row = found[("playbook", "early")]
    assert (row.playbook, row.cohort, row.entered_at, row.converted_at) == ("shop", "treatment", NOW, at)
    with engine.connect() as conn:
        enrollment = conn.execute(select(ENROLLMENT.c.id).where(ENROLLMENT.c.customer_id == "early")).scalar()
    assert row.enrollment_id == enrollment
    assert row.outbox_id is None and row.template is None  # nothing was sent

    _order(engine, "late")  # 7 days and 1 hour after entering: the window has closed
    late = _tick(engine, loaded, NOW + timedelta(days=7, hours=1))
    assert late.stats["conversions"] == 0
    full = run_tick(engine, compile_playbook(loaded, NOW + timedelta(days=7, hours=2)), full=True)
    assert full.stats["full"] == 1 and full.stats["conversions"] == 0
    assert set(_conversions(engine)) == {("playbook", "early")}


def test_the_window_edge_is_inclusive(engine: Engine, tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, within="2d")
    _customers(engine, ["edge", "after"])
    _tick(engine, loaded, NOW)
    _order(engine, "edge")
    _tick(engine, loaded, NOW + timedelta(days=2))  # exactly `within` after entry
    _order(engine, "after")
    _tick(engine, loaded, NOW + timedelta(days=2, seconds=1))
    assert set(_conversions(engine)) == {("playbook", "edge")}


def test_attribution_is_the_last_message_sent_before_the_conversion(engine: Engine, tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    _customers(engine, ["two_sent", "one_sent"])
    _tick(engine, loaded, NOW)
    welcome = _send_due(engine, NOW + timedelta(minutes=1))
    assert set(welcome) == {"two_sent", "one_sent"}
    day = NOW + timedelta(days=1)
    _tick(engine, loaded, day)  # plans getting_started for both
    with engine.connect() as conn:
        planned = dict(
            conn.execute(
                select(OUTBOX.c.customer_id, OUTBOX.c.id).where(OUTBOX.c.template == "getting_started")
            ).all()
        )
    assert set(planned) == {"two_sent", "one_sent"}
    # getting_started goes out to two_sent only; one_sent's is still pending when it converts
    with engine.begin() as conn:
        rows = claim(conn, "w1", day + timedelta(minutes=1), timedelta(minutes=5), limit=10)
        mine = [row for row in rows if row.customer_id == "two_sent"]
        mark_sent(conn, "w1", [(row.id, "p") for row in mine], day + timedelta(minutes=1))
    _order(engine, "two_sent")
    _order(engine, "one_sent")
    _tick(engine, loaded, day + timedelta(hours=1))
    found = _conversions(engine)
    assert found[("playbook", "two_sent")].outbox_id == planned["two_sent"]
    assert found[("playbook", "two_sent")].template == "getting_started"
    assert found[("playbook", "one_sent")].outbox_id == welcome["one_sent"][0]
    assert found[("playbook", "one_sent")].template == "welcome"


def test_stage_goal_counts_entries_of_its_stage(engine: Engine, tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    _customers(engine, ["activates", "buys_first"])
    _customers(engine, ["bought"], orders_count=1)  # enters buyer, whose program has no goal
    _tick(engine, loaded, NOW)
    at = NOW + timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(
            insert(EVENT),
            [
                {"customer_id": cid, "name": "activated", "occurred_at": at, "properties": {}}
                for cid in ("activates", "bought")
            ],
        )
    _tick(engine, loaded, NOW + timedelta(hours=2))
    found = _conversions(engine)
    assert set(found) == {("fresh", "activates")}
    assert found[("fresh", "activates")].entered_at == NOW


def test_holdout_conversions_carry_their_cohort_and_no_attribution(engine: Engine, tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, holdout="50%")
    ids = [f"c{n:02d}" for n in range(40)]
    held = {cid for cid in ids if assign.in_holdout("shop", cid, 0.5)}
    assert 5 <= len(held) <= 35
    _customers(engine, ids)
    _tick(engine, loaded, NOW)
    sent = _send_due(engine, NOW + timedelta(minutes=1))
    assert set(sent) == set(ids) - held  # the held-out customers' messages are never sent
    for cid in ids:
        _order(engine, cid)
    _tick(engine, loaded, NOW + timedelta(hours=3))
    found = _conversions(engine)
    assert {cid for (goal, cid) in found} == set(ids)
    for cid in ids:
        row = found[("playbook", cid)]
        if cid in held:
            assert (row.cohort, row.outbox_id, row.template) == ("holdout", None, None)
        else:
            assert (row.cohort, row.outbox_id, row.template) == ("treatment", sent[cid][0], "welcome")


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Pacific/Auckland"])
def test_windows_are_absolute_across_a_change_of_clocks(engine: Engine, tmp_path: Path, zone: str) -> None:
    # Europe/Berlin moves to summer time on 29 March 2026 (01:00 UTC): an entry at 11:00 local time on the
    # 28th closes a 2-day window at 12:00 local time (10:00 UTC) on the 30th, not at 11:00 local time
    entered = datetime(2026, 3, 28, 10, 0, tzinfo=UTC)
    path = tmp_path / "shop.yaml"
    path.write_text(PLAYBOOK.replace("HOLDOUT", "0%").replace("WITHIN", "2d"))
    loaded = check_playbook(path, TEMPLATES, entered).loaded
    loaded = LoadedPlaybook(loaded.playbook.model_copy(update={"timezone": zone}), loaded.source)
    _customers(engine, ["wall_clock", "too_late"], timezone=zone)
    _tick(engine, loaded, entered)
    _order(engine, "wall_clock")  # past 11:00 local time two days on, still inside 48 hours
    _tick(engine, loaded, datetime(2026, 3, 30, 9, 45, tzinfo=UTC))
    _order(engine, "too_late")
    _tick(engine, loaded, datetime(2026, 3, 30, 10, 15, tzinfo=UTC))
    found = _conversions(engine)
    assert set(found) == {("playbook", "wall_clock")}
    row = found[("playbook", "wall_clock")]
    assert row.converted_at - row.entered_at == timedelta(hours=47, minutes=45)


def test_a_goal_turning_true_with_time_alone_is_found_incrementally(engine: Engine, tmp_path: Path) -> None:
    text = PLAYBOOK.replace("HOLDOUT", "0%").replace("WITHIN", "5d")
    text = text.replace("when: orders_count >= 1\n  within", "when: days_since(signed_up_at) >= 3\n  within")
    path = tmp_path / "shop.yaml"
    path.write_text(text)
    loaded = check_playbook(path, TEMPLATES, NOW).loaded
    _customers(engine, ["stays"], signed_up_at=NOW - timedelta(days=1))
    _tick(engine, loaded, NOW)
    at = NOW
    for _ in range(12):  # every 6 hours for three days, no data written
        at += timedelta(hours=6)
        result = _tick(engine, loaded, at)
        assert result.stats["full"] == 0
        if result.stats["conversions"]:
            break
    found = _conversions(engine)
    assert set(found) == {("playbook", "stays")}
    assert found[("playbook", "stays")].converted_at == NOW + timedelta(days=2)


def test_a_new_goal_looks_at_everyone_once(engine: Engine, tmp_path: Path) -> None:
    without = tmp_path / "plain" / "shop.yaml"
    without.parent.mkdir()
    without.write_text(PLAYBOOK.replace("HOLDOUT", "0%").split("goal:\n")[0])
    plain = check_playbook(without, TEMPLATES, NOW).loaded
    _customers(engine, ["already"])
    _tick(engine, plain, NOW)
    assert compile_playbook(plain, NOW).goals == ()
    with engine.begin() as conn:  # activated before the goal existed; no write after it
        conn.execute(
            insert(EVENT).values(customer_id="already", name="activated", occurred_at=NOW, properties={})
        )
    _tick(engine, plain, NOW + timedelta(hours=1))
    result = _tick(engine, _loaded(tmp_path), NOW + timedelta(hours=2))
    assert result.stats["full"] == 1 and result.stats["conversions"] == 1
    assert set(_conversions(engine)) == {("fresh", "already")}
