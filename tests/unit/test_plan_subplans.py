"""Reading EXPLAIN text for subplans that are re-run per row instead of hashed once."""

from __future__ import annotations

from automation.db.explain import hashes_every_subplan

HASHED_PG15 = """\
HashAggregate  (cost=93911.52..93911.62 rows=10 width=64)
  Group Key: CASE WHEN ((hashed SubPlan 1) AND (customer.clv >= 10000)) THEN 'strategic' END
  ->  Seq Scan on customer  (cost=0.00..80161.00 rows=1000000 width=64)
  SubPlan 1
    ->  Index Only Scan using ix_event_name_time on event  (cost=0.43..3313.28 rows=95470 width=9)
          Index Cond: ((name = 'referral_sent') AND (occurred_at >= '2026-08-24 12:00:00+00'))
  SubPlan 2
    ->  Bitmap Heap Scan on event event_1
"""

HASHED_PG17 = """\
HashAggregate
  Group Key: CASE WHEN (ANY (customer.id = (hashed SubPlan 1).col1)) THEN 'a' END
  ->  Seq Scan on customer
  SubPlan 1
    ->  Seq Scan on event
"""

PER_ROW = """\
HashAggregate
  Group Key: CASE WHEN (SubPlan 1) THEN 'a' WHEN (hashed SubPlan 2) THEN 'b' END
  ->  Seq Scan on customer
  SubPlan 1
    ->  Materialize
          ->  Seq Scan on event
  SubPlan 2
    ->  Seq Scan on event event_1
"""


def test_every_subplan_hashed() -> None:
    assert hashes_every_subplan(HASHED_PG15.replace("SubPlan 2", "hashed SubPlan 2", 1))
    assert hashes_every_subplan(HASHED_PG17)


def test_one_subplan_run_per_row() -> None:
    assert not hashes_every_subplan(PER_ROW)
    assert not hashes_every_subplan(HASHED_PG15), "SubPlan 2 is named but never hashed"


def test_a_plan_without_subplans() -> None:
    assert hashes_every_subplan("Seq Scan on customer\n  InitPlan 1 (returns $0)\n")
