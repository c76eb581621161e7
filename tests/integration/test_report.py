"""``automation.report`` on SQLite and PostgreSQL: every figure against the same figure computed in Python."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from automation.errors import InputError
from automation.report import build_report, queries
from automation.report.stats import compare
from tests import report_data as rd


@pytest.fixture
def data(engine: Engine) -> rd.Data:
    generated = rd.generate(seed=11, customers=400)
    rd.insert_data(engine, generated)
    return generated


def test_steps_match_python(engine: Engine, data: rd.Data) -> None:
    with engine.connect() as conn:
        rows = queries.steps(conn, rd.PLAYBOOK, rd.SINCE, rd.UNTIL)
    got = {(r.stage, r.step, r.template, r.channel): r.counts for r in rows}
    expected = rd.expected_steps(data)
    assert set(got) == set(expected)
    for key, counts in expected.items():
        assert got[key] == {k: counts.get(k, 0) for k in queries.STEP_COUNTS}, key
    total = {k: sum(c[k] for c in got.values()) for k in queries.STEP_COUNTS}
    # the data exercises every count
    assert all(total[k] > 0 for k in queries.STEP_COUNTS), total


def test_entries_funnel_conversions_daily_match_python(engine: Engine, data: rd.Data) -> None:
    with engine.connect() as conn:
        entries = queries.entries(conn, rd.PLAYBOOK, rd.SINCE, rd.UNTIL)
        funnel = queries.funnel(conn, rd.PLAYBOOK, rd.SINCE, rd.UNTIL)
        conversions = queries.conversions(conn, rd.PLAYBOOK, rd.SINCE, rd.UNTIL)
        daily = queries.daily_conversions(conn, rd.PLAYBOOK, rd.SINCE, rd.UNTIL)
    assert entries == dict(rd.expected_entries(data))
    assert {(a, b): n for a, b, n in funnel} == dict(rd.expected_funnel(data))
    assert [n for _, _, n in funnel] == sorted((n for _, _, n in funnel), reverse=True)
    assert conversions == dict(rd.expected_conversions(data))
    assert {(d, g, k): n for d, g, k, n in daily} == dict(rd.expected_daily(data))


def test_median_time_to_convert_matches_python(engine: Engine, data: rd.Data) -> None:
    with engine.connect() as conn:
        medians = queries.median_time_to_convert(conn, rd.PLAYBOOK, rd.SINCE, rd.UNTIL)
    expected = rd.expected_medians(data)
    assert set(medians) == set(expected)
    for key, value in expected.items():
        assert medians[key] == pytest.approx(value, abs=0.01), key


def test_report_goals_and_variants(engine: Engine, data: rd.Data) -> None:
    with engine.connect() as conn:
        report = build_report(conn, rd.PLAYBOOK, rd.SINCE, rd.UNTIL)
    out = report.as_json()
    assert set(out) >= {"playbook", "period", "steps", "goals", "holdout", "variants", "funnel"}
    entries = rd.expected_entries(data)
    conversions = rd.expected_conversions(data)
    goals = {g["goal"]: g for g in out["goals"]}
    assert set(goals) == {"acquisition", "conversion", "playbook"}
    # a stage's goal counts that stage's entries; the playbook's goal every entry
    for stage in rd.STAGES:
        assert goals[stage]["entries"]["holdout"] == entries[(stage, "holdout")]
    assert goals["playbook"]["entries"]["treatment"] == sum(
        n for (_, k), n in entries.items() if k == "treatment"
    )
    holdout = {g["goal"]: g for g in out["holdout"]["goals"]}
    for name in goals:
        n_t, n_h = goals[name]["entries"]["treatment"], goals[name]["entries"]["holdout"]
        x_t, x_h = conversions[(name, "treatment")], conversions[(name, "holdout")]
        expected = compare(x_t, n_t, x_h, n_h).as_json()
        assert holdout[name]["vs_holdout"] == expected
        assert holdout[name]["vs_holdout"]["lift"] == pytest.approx(x_t / n_t - x_h / n_h, abs=1e-6)
    variants = {(v["step"], v["template"]): v for v in out["variants"]}
    steps = rd.expected_steps(data)
    for stage in rd.STAGES:
        step = f"{stage}/none#0"
        sent = {
            t: sum(c.get("sent", 0) for (s, st, t2, _), c in steps.items() if st == step and t2 == t)
            for t in ("welcome", "welcome_short")
        }
        conv = {
            t: sum(c.get("converted", 0) for (s, st, t2, _), c in steps.items() if st == step and t2 == t)
            for t in ("welcome", "welcome_short")
        }
        a = variants[(step, "welcome")]
        assert (a["sent"], a["converted"]) == (sent["welcome"], conv["welcome"])
        rest = a["vs_other_variants"]
        assert (rest["baseline_entries"], rest["baseline_converted"]) == (
            sent["welcome_short"],
            conv["welcome_short"],
        )
    assert out["holdout"]["messages_held_out"] == sum(c.get("held_out", 0) for c in steps.values())


def test_unknown_playbook_and_bad_period(engine: Engine, data: rd.Data) -> None:
    with engine.connect() as conn:
        with pytest.raises(InputError, match="unknown playbook 'nope'"):
            build_report(conn, "nope", rd.SINCE, rd.UNTIL)
        with pytest.raises(InputError, match="not after"):
            build_report(conn, rd.PLAYBOOK, rd.UNTIL, rd.SINCE)
        assert queries.known_playbook(conn, "other")
