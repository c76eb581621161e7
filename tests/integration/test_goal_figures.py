"""The goal figures of ``automation status`` and ``/metrics`` agree with the same figures counted in
Python from the rows themselves."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import Engine, select, update

from automation.cli import main
from automation.db.tables import CONVERSION, CUSTOMER, ENROLLMENT
from automation.plan import assign
from automation.worker.status import goal_status
from tests.integration.test_goals import NOW, _customers, _loaded, _tick
from tests.integration.test_metrics import family, scrape

LONG_AGO = NOW - timedelta(days=9)  # the first group's entries are outside the status's 7 days
RECENT = NOW - timedelta(days=2)


def _data(engine: Engine, tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, holdout="40%")
    old = [f"o{n:02d}" for n in range(30)]
    new = [f"n{n:02d}" for n in range(60)]
    _customers(engine, old)
    _tick(engine, loaded, LONG_AGO)
    _customers(engine, new)
    with engine.begin() as conn:  # a third of each group orders the next day
        buyers = [cid for cid in old + new if int(cid[1:]) % 3 == 0]
        first = buyers[: len(buyers) // 3]
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.id.in_(first)).values(orders_count=1))
    _tick(engine, loaded, RECENT)  # the new group enters; a few of the old ones convert, in their window
    with engine.begin() as conn:
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.id.in_(buyers)).values(orders_count=1))
    _tick(engine, loaded, RECENT + timedelta(hours=5))


def _expected(engine: Engine) -> dict[str, tuple[int, int]]:
    """cohort -> (entries, conversions) of the playbook goal over entries in the 7 days before NOW."""
    with engine.connect() as conn:
        columns = (ENROLLMENT.c.customer_id, ENROLLMENT.c.cohort, ENROLLMENT.c.started_at)
        entries = conn.execute(select(*columns)).all()
        conversions = {
            (row.customer_id, row.entered_at)
            for row in conn.execute(select(CONVERSION).where(CONVERSION.c.goal == "playbook"))
        }
    figures: dict[str, list[int]] = {}
    for cid, cohort, started in entries:
        if NOW - timedelta(days=7) <= started <= NOW:
            counts = figures.setdefault(cohort, [0, 0])
            counts[0] += 1
            counts[1] += (cid, started) in conversions
    return {cohort: (n, k) for cohort, (n, k) in figures.items()}


def test_status_rates_and_lift_match_the_rows(engine: Engine, tmp_path: Path) -> None:
    _data(engine, tmp_path)
    expected = _expected(engine)
    held = sum(assign.in_holdout("shop", f"n{n:02d}", 0.4) for n in range(60))
    assert expected["holdout"][0] == held and expected["treatment"][0] == 60 - held
    assert expected["holdout"][1] > 0 and expected["treatment"][1] > 0
    with engine.connect() as conn:
        status = {g.goal: g for g in goal_status(conn, NOW)}
    assert set(status) == {"playbook"}  # no one activated: the stage goal has no conversion yet
    goal = status["playbook"]
    got = {cohort: (f.entries, f.conversions) for cohort, f in goal.cohorts.items()}
    assert got == expected
    rates = {cohort: k / n for cohort, (n, k) in expected.items()}
    for cohort, figures in goal.cohorts.items():
        assert abs(figures.rate - rates[cohort]) < 1e-9
    assert goal.lift is not None
    assert abs(goal.lift - (rates["treatment"] / rates["holdout"] - 1)) < 1e-9

    if engine.dialect.name != "sqlite":
        return  # the command's own engine: one database is enough to see the figures printed
    env = {"AUTOMATION_DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    result = CliRunner().invoke(main, ["status", "--format", "json", "--at", NOW.isoformat()], env=env)
    assert result.exit_code == 0, result.output
    [shown] = json.loads(result.output)["goals"]
    assert shown["cohorts"]["holdout"]["conversions"] == expected["holdout"][1]
    assert abs(shown["lift"] - goal.lift) < 1e-9
    table = CliRunner().invoke(main, ["status", "--at", NOW.isoformat()], env=env)
    n, k = expected["treatment"]
    assert f"{k / n:.1%} ({k:,}/{n:,})" in table.output


def test_metrics_count_every_conversion_by_playbook_goal_and_cohort(engine: Engine, tmp_path: Path) -> None:
    _data(engine, tmp_path)
    with engine.connect() as conn:
        rows = conn.execute(select(CONVERSION.c.playbook, CONVERSION.c.goal, CONVERSION.c.cohort)).all()
    counted = Counter(tuple(row) for row in rows)
    assert len(rows) > 0 and {cohort for _p, _g, cohort in counted} == {"treatment", "holdout"}
    samples, types, _body = scrape(engine, at=NOW)
    assert types["automation_conversions"] == "gauge"
    got = {
        tuple(dict(labels)[k] for k in ("playbook", "goal", "cohort")): n
        for labels, n in family(samples, "automation_conversions").items()
    }
    assert got == counted
