"""Holdouts and variants: assigned deterministically, recorded on the outbox, never sent, stable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from automation.authoring.validate import check_playbook
from automation.config import Settings
from automation.db.tables import OUTBOX, metadata
from automation.errors import ConfigError, PlaybookError
from automation.messages.store import TemplateStore
from automation.outbox.lease import claim
from automation.plan import assign
from automation.rules.compiled import compile_playbook
from automation.worker.tick import run_tick
from tests.conftest import ROOT

T = metadata.tables
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # 11:00 in Berlin: no quiet hours
TEMPLATES = TemplateStore(ROOT / "templates")
CUSTOMERS = 400

PLAYBOOK = """\
name: trial
holdout: HOLDOUT
segments:
  - name: everyone
    touch: none
stages:
  - name: fresh
    when: orders_count == 0
programs:
  fresh:
    none:
      - email: welcome
        variants: {welcome: 70, getting_started: 30}
"""


def _playbook(tmp_path: Path, holdout: str = "20%", text: str = PLAYBOOK) -> Path:
    path = tmp_path / "trial.yaml"
    path.write_text(text.replace("HOLDOUT", holdout))
    return path


def _customers(engine: Engine) -> None:
    rows: list[dict[str, Any]] = [
        {
            "id": f"c{n:04d}",
            "email": f"c{n}@example.com",
            "timezone": "Europe/Berlin",
            "orders_count": 0,
            "attributes": {},
            "signed_up_at": NOW - timedelta(days=1),
        }
        for n in range(CUSTOMERS)
    ]
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), rows)


def _outbox(engine: Engine) -> dict[str, tuple[str, str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(OUTBOX.c.customer_id, OUTBOX.c.status, OUTBOX.c.template, OUTBOX.c.payload)
        )
        return {r.customer_id: (r.status, r.template, r.payload) for r in rows}


def test_assignment_is_stable_close_to_the_share_and_independent_per_salt() -> None:
    ids = [f"cus_{n}" for n in range(100_000)]
    held = [i for i in ids if assign.in_holdout("lifecycle", i, 0.10)]
    assert 9_400 <= len(held) <= 10_600  # 10% of 100,000, within about 6 standard deviations
    assert held == [i for i in ids if assign.in_holdout("lifecycle", i, 0.10)]  # the same every time
    other = {i for i in ids if assign.in_holdout("onboarding", i, 0.10)}
    overlap = len(other & set(held))
    assert 700 <= overlap <= 1_300  # independent: about 10% of 10%, not the same customers
    control = sum(assign.in_global_control(i, 0.05) for i in ids)
    assert 4_550 <= control <= 5_450
    assert not any(assign.in_holdout("lifecycle", i, 0.0) for i in ids[:1000])
    chosen = [assign.variant("lifecycle", "fresh/none#1", i, {"a": 70, "b": 30}) for i in ids]
    assert 29_300 <= chosen.count("b") <= 30_700
    assert chosen[:500] == [
        assign.variant("lifecycle", "fresh/none#1", i, {"a": 70, "b": 30}) for i in ids[:500]
    ]


def test_held_out_customers_get_recorded_messages_that_are_never_sent(engine: Engine, tmp_path: Path) -> None:
    _customers(engine)
    compiled = compile_playbook(check_playbook(_playbook(tmp_path), TEMPLATES, NOW).loaded, NOW)
    run_tick(engine, compiled)
    first = _outbox(engine)
    assert len(first) == CUSTOMERS
    held = {cid for cid, (status, _t, _p) in first.items() if status == "held_out"}
    expected = {f"c{n:04d}" for n in range(CUSTOMERS) if assign.in_holdout("trial", f"c{n:04d}", 0.2)}
    assert held == expected and 40 <= len(held) <= 120
    assert {status for cid, (status, _t, _p) in first.items() if cid not in held} == {"pending"}
    for cid, (_status, template, payload) in first.items():
        assert template == assign.variant(
            "trial", "fresh/none#1", cid, {"welcome": 70, "getting_started": 30}
        )
        assert payload["variant"] == template
    with engine.begin() as conn:
        claimed = claim(conn, "w1", NOW, timedelta(minutes=5), limit=1000)
    assert len(claimed) == CUSTOMERS - len(held)  # the control group's messages are never picked
    assert not {row.customer_id for row in claimed} & held

    with engine.connect() as conn:
        cohorts = dict(conn.execute(select(T["enrollment"].c.customer_id, T["enrollment"].c.cohort)).all())
    assert {cid for cid, cohort in cohorts.items() if cohort == "holdout"} == held
    assert {cohort for cid, cohort in cohorts.items() if cid not in held} == {"treatment"}

    later = NOW + timedelta(minutes=15)
    run_tick(engine, compile_playbook(check_playbook(_playbook(tmp_path), TEMPLATES, later).loaded, later))
    again = _outbox(engine)
    assert {cid: t for cid, (_s, t, _p) in again.items()} == {cid: t for cid, (_s, t, _p) in first.items()}


def test_global_control_holds_customers_out_of_every_playbook(engine: Engine, tmp_path: Path) -> None:
    _customers(engine)
    compiled = compile_playbook(check_playbook(_playbook(tmp_path, "0%"), TEMPLATES, NOW).loaded, NOW)
    run_tick(engine, compiled, global_control=0.25)
    held = {cid for cid, (status, _t, _p) in _outbox(engine).items() if status == "held_out"}
    assert held == {f"c{n:04d}" for n in range(CUSTOMERS) if assign.in_global_control(f"c{n:04d}", 0.25)}
    with engine.connect() as conn:
        cohorts = dict(conn.execute(select(T["enrollment"].c.customer_id, T["enrollment"].c.cohort)).all())
    assert {cid for cid, cohort in cohorts.items() if cohort == "control"} == held


def test_settings_read_the_global_control_share() -> None:
    assert Settings.from_env({"AUTOMATION_GLOBAL_CONTROL": "5%"}).global_control == pytest.approx(0.05)
    assert Settings.from_env({}).global_control == 0.0
    for bad in ("lots", "60%", "-1%"):
        with pytest.raises(ConfigError, match="AUTOMATION_GLOBAL_CONTROL"):
            Settings.from_env({"AUTOMATION_GLOBAL_CONTROL": bad})


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("holdout: HOLDOUT", "holdout: 60%", ":2:10: holdout: expected 0% to 50%"),
        ("holdout: HOLDOUT", "holdout: some", ":2:10: holdout: expected a percentage such as 10%"),
        ("getting_started: 30", "getting_started: 0", "greater than 0"),
        ("getting_started: 30", "welcom_short: 30", ":13:33: unknown email template 'welcom_short'"),
    ],
)
def test_bad_holdouts_and_variants_are_refused_where_they_are(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = _playbook(tmp_path, "10%", PLAYBOOK.replace(old, new))
    with pytest.raises(PlaybookError) as info:
        check_playbook(path, TEMPLATES, NOW)
    assert expected in "\n".join(p.render() for p in info.value.problems)
