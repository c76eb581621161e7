"""``explain`` on the known data set, on SQLite and PostgreSQL: rules, sub-expressions, program, reasons."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from automation.authoring.explain import Explanation, RuleExplanation, explain, render_text, unparse
from automation.authoring.preview import run_preview
from automation.authoring.validate import check_playbook
from automation.config import Settings
from automation.db.tables import EVENT
from automation.errors import InputError
from automation.rules.parser import parse
from automation.worker.tick import run_tick
from tests.conftest import ROOT
from tests.integration.known import CUSTOMERS, NOW, TEMPLATES

PLAYBOOK = ROOT / "playbooks" / "lifecycle.yaml"


def run(engine: Engine, customer_id: str, at: datetime = NOW) -> Explanation:
    compiled = check_playbook(PLAYBOOK, TEMPLATES, at)
    with engine.connect() as conn:
        return explain(conn, [compiled], customer_id)


def rules(result: Explanation, kind: str) -> dict[str, RuleExplanation]:
    return {r.name: r for r in result.playbooks[0].rules if r.kind == kind}


def test_winning_rules_and_each_side_of_an_or(data: Engine) -> None:
    result = run(data, "referrer")
    pb = result.playbooks[0]
    assert (pb.segment, pb.touch, pb.stage) == ("strategic", "high", "loyalty")
    segments = rules(result, "segment")
    assert [name for name, r in segments.items() if r.chosen] == ["strategic"]
    growth = segments["growth"]
    assert growth.value is True and not growth.considered and not growth.chosen

    loyalty = rules(result, "stage")["loyalty"]
    assert loyalty.chosen
    parts = {p.expr: (p.value, p.depth) for p in loyalty.parts}
    assert parts == {
        'orders_count >= 10 or events("referral_sent", within="90d") > 0': (True, 0),
        "orders_count >= 10": (False, 1),
        'events("referral_sent", within="90d") > 0': (True, 1),
    }
    assert loyalty.values == {"orders_count": 1, 'events("referral_sent", within="90d")': 1}
    conversion = rules(result, "stage")["conversion"]
    assert conversion.value is True and not conversion.considered
    assert pb.program == "not ticked yet; would enter loyalty program high"

    vip = run(data, "vip").playbooks[0]
    loyal = next(r for r in vip.rules if r.name == "loyalty")
    assert [p.value for p in loyal.parts] == [True, True, False]
    assert loyal.values == {"orders_count": 15, 'events("referral_sent", within="90d")': 0}


def test_unknown_values_and_functions(data: Engine) -> None:
    result = run(data, "newbie")
    acquisition = rules(result, "stage")["acquisition"]
    assert acquisition.chosen
    assert acquisition.values["days_since(signed_up_at)"] == 2
    birthday = rules(result, "recurring")["birthday_reward"]
    # no birthday: anniversary(birthday) is unknown; "unknown and false" is false
    assert birthday.value is False
    assert birthday.parts[1].expr == "anniversary(birthday)" and birthday.parts[1].value is None
    regular = rules(run(data, "regular"), "recurring")["birthday_reward"]
    assert regular.value is True
    text = render_text(result)
    assert "-> acquisition: true" in text and "unknown  anniversary(birthday)" in text


@pytest.mark.parametrize("cid", [c["id"] for c in CUSTOMERS])
def test_reasons_are_the_previews(data: Engine, cid: str) -> None:
    compiled = check_playbook(PLAYBOOK, TEMPLATES, NOW)
    with data.connect() as conn:
        preview = run_preview(conn, compiled, TEMPLATES, Settings(), customer_id=cid)
        result = explain(conn, [compiled], cid)
    expected = [(a.step, a.channel, a.status, a.reason, a.until) for a in preview.sink.actions]
    got = [(a.step, a.channel, a.status, a.reason, a.until) for a in result.playbooks[0].actions]
    assert got == expected


def test_known_reasons_in_the_text(data: Engine) -> None:
    assert "held: quiet hours until 08:00 Asia/Tokyo" in render_text(run(data, "tokyo"))
    assert "held: consent: email suppressed (unsubscribed)" in render_text(run(data, "unsub"))
    assert "held: no account owner: owner_email is empty" in render_text(run(data, "bigco"))
    assert "nothing to send" in render_text(run(data, "lapsed"))


def test_after_a_tick_the_program_step_and_the_outbox(data: Engine) -> None:
    run_tick(data, check_playbook(PLAYBOOK, TEMPLATES, NOW))
    result = run(data, "newbie", NOW + timedelta(hours=1))
    pb = result.playbooks[0]
    assert pb.program.startswith("acquisition program none, step 2 of 3 (wait 3d)") or pb.program.startswith(
        "acquisition program none, step 3 of 3 (email: getting_started) due"
    )
    assert pb.actions == []  # nothing due an hour later
    assert [(r["template"], r["status"]) for r in result.outbox] == [("welcome", "pending")]
    # the guard of the pending step is traced for the customer
    guard = next(r for r in pb.rules if r.kind == "guard")
    assert guard.name == "acquisition/none#3 unless" and guard.value is False and guard.chosen
    later = run(data, "newbie", NOW + timedelta(days=3, hours=1)).playbooks[0]
    assert [(a.step, a.status) for a in later.actions] == [("acquisition/none#3", "planned")]


def test_unknown_customer(data: Engine) -> None:
    with pytest.raises(InputError, match="no customer with id 'nobody'"):
        run(data, "nobody")


def test_unparse_round_trips() -> None:
    for text in (
        'orders_count >= 10 or events("referral_sent", within="90d") > 0',
        "not (clv >= 1 and nps is not null)",
        'plan in ["a", "b"] and (x == 1 or y != 2)',
    ):
        assert unparse(parse(text)) == text


# -- the customer's latest events ---------------------------------------------------------------------
def _add_events(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(EVENT), [{"properties": {}, "message_id": None} | row for row in rows])


def test_latest_events_newest_first_limited_and_counted(data: Engine) -> None:
    day = NOW - timedelta(days=1)
    # stored out of time order; two at the same moment (the one stored later is listed first)
    _add_events(
        data,
        [
            {"customer_id": "newbie", "name": "b", "occurred_at": day - timedelta(hours=2)},
            {"customer_id": "newbie", "name": "d", "occurred_at": day, "message_id": "m-d"},
            {"customer_id": "newbie", "name": "a", "occurred_at": day - timedelta(hours=3)},
            {"customer_id": "newbie", "name": "e", "occurred_at": day, "message_id": "m-e"},
            {"customer_id": "newbie", "name": "c", "occurred_at": day - timedelta(hours=1)},
            {"customer_id": "newbie", "name": "future", "occurred_at": NOW + timedelta(hours=1)},
            {"customer_id": "vip", "name": "other", "occurred_at": day + timedelta(hours=1)},
        ],
    )
    compiled = check_playbook(PLAYBOOK, TEMPLATES, NOW)
    with data.connect() as conn:
        everything = explain(conn, [compiled], "newbie", events=50).events
        three = explain(conn, [compiled], "newbie", events=3).events
    assert everything is not None and three is not None
    assert [e["name"] for e in everything.events] == ["e", "d", "c", "b", "a"]
    assert (everything.total, everything.later) == (5, 1)
    assert [e["name"] for e in three.events] == ["e", "d", "c"]
    assert (three.total, three.later) == (5, 1)
    assert three.events[0] == {"occurred_at": day, "name": "e", "message_id": "m-e", "properties": {}}

    result = run(data, "newbie")  # the default: 10
    text = render_text(result)
    assert text.endswith(
        "last events (5 of 5 events; 1 later, after 2026-11-22 12:00 UTC, not shown):\n"
        "  2026-11-21 12:00:00 UTC  e  m-e\n"
        "  2026-11-21 12:00:00 UTC  d  m-d\n"
        "  2026-11-21 11:00:00 UTC  c  -\n"
        "  2026-11-21 10:00:00 UTC  b  -\n"
        "  2026-11-21 09:00:00 UTC  a  -"
    )
    data_json = result.as_json()
    assert data_json["events_total"] == 5 and data_json["events_later"] == 1
    assert data_json["events"][0] == {
        "occurred_at": "2026-11-21T12:00:00+00:00",
        "name": "e",
        "message_id": "m-e",
        "properties": {},
    }
    assert [e["name"] for e in data_json["events"]] == ["e", "d", "c", "b", "a"]
    # as of an earlier moment, the events after it are counted as later, as the rules would not see them
    earlier = run(data, "newbie", day - timedelta(minutes=90)).events
    assert earlier is not None
    assert [e["name"] for e in earlier.events] == ["b", "a"] and (earlier.total, earlier.later) == (2, 4)


def test_zero_events_leaves_the_section_out_and_the_rest_unchanged(data: Engine) -> None:
    compiled = check_playbook(PLAYBOOK, TEMPLATES, NOW)
    with data.connect() as conn:
        without = explain(conn, [compiled], "referrer", events=0)
        with_events = explain(conn, [compiled], "referrer")
        with pytest.raises(InputError, match="events: expected 0 or more, got -1"):
            explain(conn, [compiled], "referrer", events=-1)
    assert without.events is None
    assert "last events" not in render_text(without)
    assert not {"events", "events_total", "events_later"} & set(without.as_json())
    text = render_text(with_events)
    assert text.startswith(render_text(without) + "\n\nlast events (1 of 1 events):\n")
    assert text.endswith("  2026-11-19 12:00:00 UTC  referral_sent  -")
    assert {k: v for k, v in with_events.as_json().items() if not k.startswith("events")} == without.as_json()


def test_a_customer_without_events(data: Engine) -> None:
    result = run(data, "lapsed")
    assert result.events is not None and result.events.events == []
    assert render_text(result).endswith("\n\nlast events: none")
    assert (result.as_json()["events"], result.as_json()["events_total"]) == ([], 0)
    _add_events(data, [{"customer_id": "lapsed", "name": "late", "occurred_at": NOW + timedelta(days=1)}])
    assert render_text(run(data, "lapsed")).endswith(
        "\n\nlast events: none; 1 later, after 2026-11-22 12:00 UTC, not shown"
    )


def test_event_lines_are_masked_one_line_and_cut(data: Engine) -> None:
    long_note = "x" * 200
    _add_events(
        data,
        [
            {
                "customer_id": "fan",
                "name": "Order\nCompleted\x1b[2J",
                "occurred_at": NOW - timedelta(hours=1),
                "message_id": "order-1001",
                # cut before masking, the line would end in "grace.hopper@exam": masked first, it does not
                "properties": {"more": long_note, "contact": "grace.hopper@example.com", "a_note": "n" * 35},
            },
            {
                "customer_id": "fan",
                "name": "Called",
                "occurred_at": NOW - timedelta(hours=2),
                "properties": {"phone": "+14155550199", "text": "line one\u2028line two\x85"},
            },
        ],
    )
    result = run(data, "fan")
    lines = render_text(result).split("\n")
    start = lines.index("last events (2 of 2 events):")
    order, called = lines[start + 1 :]
    assert order.startswith(r"  2026-11-22 11:00:00 UTC  Order\u000aCompleted\u001b[2J  order-1001  {")
    assert order.endswith('"contact": "g***@example.com"…') and "grace.hopper" not in order
    assert len(order.split("order-1001  ", 1)[1]) == 80  # the properties, cut to 80 characters
    assert called.endswith(
        r'{"phone": "+14*******99", "text": "line one\u2028line two\u0085"}'
    )  # keys sorted
    assert "\x1b" not in "\n".join(lines) and "\u2028" not in "\n".join(lines)
    # JSON carries the stored values, like the customer's own fields in the same document
    assert result.as_json()["events"][0]["properties"]["contact"] == "grace.hopper@example.com"
