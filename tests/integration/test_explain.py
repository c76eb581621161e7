"""``explain`` on the known data set, on SQLite and PostgreSQL: rules, sub-expressions, program, reasons."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from automation.authoring.explain import Explanation, RuleExplanation, explain, render_text, unparse
from automation.authoring.preview import run_preview
from automation.authoring.validate import check_playbook
from automation.config import Settings
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
