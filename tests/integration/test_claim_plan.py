"""A claim reads due messages in send order from an index: its cost follows the batch, not the backlog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, event, insert

from automation.db.connect import make_engine, upgrade
from automation.outbox import lease as outbox

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_each_status_is_picked_in_order_from_the_pick_index(tmp_path: Any) -> None:
    engine: Engine = make_engine(f"sqlite:///{tmp_path / 'claim.db'}")
    upgrade(engine)
    rows = [
        {
            "idempotency_key": f"k{i}",
            "playbook": "p",
            "customer_id": f"c{i}",
            "channel": "webhook",
            "template": "t",
            "payload": {},
            "status": ("pending", "retry")[i % 2],
            "due_at": NOW - timedelta(minutes=i),
            "created_at": NOW,
            "attempts": 0,
            "priority": i % 3,
        }
        for i in range(3000)
    ]
    with engine.begin() as conn:
        conn.execute(insert(outbox.OUTBOX), rows)
    statements: list[tuple[str, Any]] = []
    event.listen(engine, "before_cursor_execute", lambda c, cur, s, p, ctx, many: statements.append((s, p)))
    with engine.connect() as conn, conn.begin():
        claimed = outbox.claim(conn, "w", NOW, timedelta(minutes=2), 50)
        sql, params = statements[-1]
        plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
    # highest priority first, then the longest due
    expected = sorted(rows, key=lambda r: (-r["priority"], r["due_at"]))[:50]
    assert {r.idempotency_key for r in claimed} == {r["idempotency_key"] for r in expected}
    picks = [step for step in plan if "outbox USING" in step and "ix_outbox_pick" in step]
    assert len(picks) == 3, "\n".join(plan)  # pending, retry, and claimed with an expired lease
    assert sum("TEMP B-TREE FOR ORDER BY" in step for step in plan) == 1, plan  # only the final 150 rows
