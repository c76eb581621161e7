"""The preview on a known data set, on SQLite and PostgreSQL: counts, actions, reasons, and no writes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, insert, select

from automation.authoring.preview import PreviewSink, run_preview
from automation.authoring.validate import check_playbook
from automation.config import Settings
from automation.db.tables import CUSTOMER
from automation.plan.evaluate import evaluate, transitions
from automation.plan.planner import plan
from tests.conftest import ROOT
from tests.integration.known import CUSTOMERS, NOW, TEMPLATES, T


def table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: conn.execute(select(func.count()).select_from(t)).scalar_one() for name, t in T.items()}


def preview(engine: Engine, **kwargs: Any) -> dict[str, Any]:
    compiled = check_playbook(ROOT / "playbooks" / "lifecycle.yaml", TEMPLATES, NOW)
    with engine.connect() as conn:
        result = run_preview(conn, compiled, TEMPLATES, Settings(), **kwargs)
    data: dict[str, Any] = result.as_json()
    return data


def test_counts_matrix_and_actions(data: Engine) -> None:
    before = table_counts(data)
    out = preview(data, limit=0)
    assert table_counts(data) == before, "the preview must not write"

    assert out["customers"] == 11
    assert {k: v["customers"] for k, v in out["segments"].items()} == {
        "strategic": 2,
        "growth": 1,
        "self_serve": 8,
    }
    assert out["stages"] == {"loyalty": 3, "retention": 2, "conversion": 1, "acquisition": 4, "(none)": 1}
    assert out["matrix"] == {
        "growth": {"retention": 1},
        "self_serve": {"acquisition": 4, "conversion": 1, "loyalty": 1, "retention": 1, "(none)": 1},
        "strategic": {"loyalty": 2},
    }

    actions = {(a["customer_id"], a["step"]): a for a in out["actions"]}
    assert set(actions) == {
        ("newbie", "acquisition/none#1"),
        ("tokyo", "acquisition/none#1"),
        ("nomail", "acquisition/none#1"),
        ("unsub", "acquisition/none#1"),
        ("regular", "retention/none#1"),
        ("regular", "recurring/birthday_reward#1"),
        ("fan", "retention/low#1"),
        ("referrer", "loyalty/high#1"),
        ("bigco", "loyalty/high#1"),
        ("vip", "loyalty/none#1"),
        ("vip", "loyalty/none#2"),
    }
    assert actions[("newbie", "acquisition/none#1")]["status"] == "planned"
    assert actions[("newbie", "acquisition/none#1")]["template"] == "welcome"
    tokyo = actions[("tokyo", "acquisition/none#1")]
    assert (tokyo["status"], tokyo["reason"]) == ("suppressed", "quiet hours until 08:00 Asia/Tokyo")
    assert tokyo["until"] == "2026-11-22T23:00:00+00:00"
    assert actions[("nomail", "acquisition/none#1")]["reason"] == "no email address"
    assert actions[("unsub", "acquisition/none#1")]["reason"] == "consent: email suppressed (unsubscribed)"
    assert actions[("bigco", "loyalty/high#1")]["reason"] == "no account owner: owner_email is empty"
    task = actions[("referrer", "loyalty/high#1")]
    assert (task["channel"], task["assignee"], task["status"]) == ("task", "owner@example.com", "planned")
    hook = actions[("vip", "loyalty/none#2")]
    assert (hook["channel"], hook["url"], hook["status"]) == ("webhook", "${LOYALTY_WEBHOOK_URL}", "planned")
    assert actions[("regular", "recurring/birthday_reward#1")]["status"] == "planned"
    assert out["summary"]["planned"] + out["summary"]["suppressed"] == out["summary"]["actions"] == 11
    assert out["summary"]["reasons"] == {
        "quiet hours": 1,
        "no email address": 1,
        "consent": 1,
        "no account owner: owner_email is empty": 1,
    }


def full_count_statements(engine: Engine, conn: Any, compiled: Any) -> tuple[Any, list[str]]:
    """The counts of a full evaluation, and the statements it sent."""
    statements: list[str] = []

    def seen(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        counts = evaluate(conn, compiled)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    return counts, statements


def test_a_full_count_asks_each_event_test_once_for_everyone(data: Engine) -> None:
    """Counting everyone, event tests are one set each (IN (SELECT ...), which PostgreSQL is asked to
    plan first), not one probe per customer; the counts are those of the per-customer form."""
    compiled = check_playbook(ROOT / "playbooks" / "lifecycle.yaml", TEMPLATES, NOW)
    with data.connect() as conn:
        ids = list(conn.execute(select(CUSTOMER.c.id)).scalars())
        everyone, statements = full_count_statements(data, conn, compiled)
        listed = evaluate(conn, compiled, ids)
    assert everyone.matrix == listed.matrix
    assert "loyalty" in {stage for _, stage in everyone.matrix}, "the fixture has a referrer in loyalty"
    if data.dialect.name == "postgresql":
        explained, statement = statements
        assert explained == f"EXPLAIN {statement}"
    else:
        (statement,) = statements
    assert "EXISTS" not in statement
    assert "IN (SELECT event.customer_id" in statement


@pytest.mark.postgres
def test_postgresql_joins_the_event_sets_when_one_would_not_be_hashed(pg_engine: Engine) -> None:
    """When the planner expects an event set not to fit hash_mem (it would then re-run the subquery for
    every customer), a full count joins the sets instead, with the same counts."""
    with pg_engine.begin() as conn:
        conn.execute(insert(T["customer"]), CUSTOMERS)
        conn.execute(
            insert(T["event"]),
            [
                {
                    "customer_id": "referrer",
                    "name": "referral_sent",
                    "occurred_at": NOW - timedelta(days=3, seconds=i),
                    "properties": {},
                }
                for i in range(5000)
            ],
        )
        conn.exec_driver_sql("ANALYZE event")
    compiled = check_playbook(ROOT / "playbooks" / "lifecycle.yaml", TEMPLATES, NOW)
    with pg_engine.connect() as conn:
        ids = list(conn.execute(select(CUSTOMER.c.id)).scalars())
        hashed, statements = full_count_statements(pg_engine, conn, compiled)
        assert "IN (SELECT event.customer_id" in statements[-1]
        conn.exec_driver_sql("SET work_mem = '64kB'")
        conn.exec_driver_sql("SET hash_mem_multiplier = 1")
        joined, statements = full_count_statements(pg_engine, conn, compiled)
        listed = evaluate(conn, compiled, ids)
    explained, statement = statements
    assert explained.startswith("EXPLAIN ")
    assert "LEFT OUTER JOIN (SELECT DISTINCT" in statement
    assert "customer.id IN (SELECT" not in statement
    assert joined.matrix == hashed.matrix == listed.matrix
    assert ("strategic", "loyalty") in joined.matrix


def test_limit_keeps_counts_whole(data: Engine) -> None:
    out = preview(data, limit=3)
    assert len(out["actions"]) == 3
    assert out["summary"]["actions"] == 11


def test_one_customer_trace_and_rendered_messages(data: Engine) -> None:
    out = preview(data, customer_id="regular")
    assert out["customers"] == 1
    chosen = [(t["kind"], t["name"]) for t in out["trace"] if t["chosen"]]
    assert chosen == [("segment", "self_serve"), ("stage", "retention")]
    loyalty = next(t for t in out["trace"] if t["name"] == "loyalty")
    assert loyalty["matched"] is False
    conversion = next(t for t in out["trace"] if t["name"] == "conversion")
    assert conversion["matched"] is None  # an earlier stage won
    rendered = {r["template"]: r for r in out["rendered"]}
    assert set(rendered) == {"tips_and_offers", "birthday_reward"}
    message = rendered["tips_and_offers"]["message"]
    assert "Regular" in message["text"] and "/unsubscribe/" in message["text"]


def test_unknown_customer_is_bad_input(data: Engine) -> None:
    from automation.errors import InputError

    with pytest.raises(InputError, match="no customer with id 'ghost'"):
        preview(data, customer_id="ghost")


def test_stored_state_makes_the_plan_incremental(data: Engine) -> None:
    """With state stored for everyone, only a customer whose stage changed is planned again."""
    compiled = check_playbook(ROOT / "playbooks" / "lifecycle.yaml", TEMPLATES, NOW)
    with data.connect() as conn:
        first = PreviewSink(limit=0)
        plan(conn, compiled, first)
    # store exactly what the rules say now, except for "fan", who is recorded as still converting
    rows = []
    with data.connect() as conn:
        for t in transitions(conn, compiled):
            rows.append(
                {
                    "playbook": "lifecycle",
                    "customer_id": t.customer_id,
                    "segment": t.segment,
                    "touch": t.touch,
                    "stage": "conversion" if t.customer_id == "fan" else t.stage,
                }
            )
    with data.begin() as conn:
        conn.execute(insert(T["customer_state"]), rows)
    with data.connect() as conn:
        sink = PreviewSink(limit=0)
        plan(conn, compiled, sink)
    assert sink.transitions == 1
    assert [(a.customer_id, a.step) for a in sink.actions] == [
        ("fan", "retention/low#1"),
        ("regular", "recurring/birthday_reward#1"),  # recurring rules do not depend on transitions
    ]
    assert first.total_actions == 11


def test_due_enrollment_runs_its_next_steps(data: Engine) -> None:
    """An enrollment whose wait is over continues: the guard is checked when the step comes due."""
    compiled = check_playbook(ROOT / "playbooks" / "lifecycle.yaml", TEMPLATES, NOW)
    with data.connect() as conn:
        rows = [
            {
                "playbook": "lifecycle",
                "customer_id": t.customer_id,
                "segment": t.segment,
                "touch": t.touch,
                "stage": t.stage,
            }
            for t in transitions(conn, compiled)
        ]
    started = NOW - timedelta(days=3, hours=1)
    with data.begin() as conn:
        conn.execute(insert(T["customer_state"]), rows)
        conn.execute(
            insert(T["event"]),
            [
                {
                    "customer_id": "tokyo",
                    "name": "activated",
                    "occurred_at": NOW - timedelta(days=1),
                    "properties": {},
                }
            ],
        )
        conn.execute(
            insert(T["enrollment"]),
            [
                {
                    "playbook": "lifecycle",
                    "customer_id": cid,
                    "stage": "acquisition",
                    "segment": "self_serve",
                    "touch": "none",
                    "started_at": started,
                    "step_index": 2,
                    "next_step_at": started + timedelta(days=3),
                    "status": "active",
                }
                for cid in ("newbie", "tokyo")
            ],
        )
    with data.connect() as conn:
        sink = PreviewSink(limit=0)
        plan(conn, compiled, sink)
    steps = {(a.customer_id, a.step): a for a in sink.actions}
    assert steps[("newbie", "acquisition/none#3")].status == "planned"
    guarded = steps[("tokyo", "acquisition/none#3")]
    assert guarded.status == "suppressed"
    assert guarded.reason == 'step guard: unless events("activated", within="3d") > 0'
    assert sink.enrollments == {"completed": 2}
