"""Recurring rules: date-based rules that fire at most once per period for each customer they match.

A rule (``recurring:`` in a playbook, e.g. a birthday reward) is checked on every tick; a customer it
matches gets its steps once per day, week, month or year of their own time zone. The period is part
of each step's idempotency key, so a step already in the outbox for this period is not planned again,
whichever tick planned it. A tick that evaluated its customers into its table reads their matches
from there (``changes_table``'s ``recurring_<i>`` columns) and looks up only the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, union_all

from automation.db.in_list import among
from automation.db.tables import CUSTOMER, OUTBOX
from automation.plan.guards import Checks
from automation.plan.records import BATCH, changes_table
from automation.plan.timeutil import period


class RecurringRules(Checks):
    """The recurring rules of one tick: who each rule matches now, and the actions it plans for them."""

    def recurring_rows(
        self,
        customer_ids: Sequence[str] | None,
        only: Any = None,
        marked: bool = False,
        extra: list[Any] | None = None,
    ) -> list[list[Any]]:
        """Per recurring rule, the customers it matches now (id, time zone, segment, stage), by id.

        ``only``: a SELECT of the customers to look at (None: everyone). ``marked``: the customers the
        tick evaluated carry their matches in its table (``changes_table``); then only the customers
        in ``extra`` (a SELECT of ids to look at, and one of the ids already evaluated) are looked up.
        """
        marks = changes_table(len(self.pb.recurring)) if marked else None
        out = []
        for i, rule in enumerate(self.pb.recurring):
            condition = self.compiled.recurring[rule.name]
            found = select(
                CUSTOMER.c.id,
                CUSTOMER.c.timezone,
                self.compiled.segment.label("segment"),
                self.compiled.stage.label("stage"),
            ).where(condition)
            if customer_ids is not None:
                found = found.where(among(CUSTOMER.c.id, customer_ids, self.dialect))
            if only is not None:
                found = found.where(CUSTOMER.c.id.in_(only))
            query: Any = found.order_by(CUSTOMER.c.id)
            if marks is not None:
                m = marks.c
                matched = select(
                    m.customer_id.label("id"), m.contact_timezone.label("timezone"), m.segment, m.stage
                ).where(m[f"recurring_{i}"])
                if extra is None:
                    query = matched.order_by(m.customer_id)
                else:
                    looked_up = found.where(CUSTOMER.c.id.in_(extra[0]), CUSTOMER.c.id.not_in(extra[1]))
                    both = union_all(matched, looked_up).subquery("matched")
                    query = select(both).order_by(both.c.id)
            out.append(list(self.conn.execute(query)))
        return out

    def recurring(self, found: list[list[Any]]) -> None:
        """Recurring rules that match now fire once per period (day, week, month or year, local time).

        ``found``: the customers each rule matches (``recurring_rows``).
        """
        for rule, rows in zip(self.pb.recurring, found, strict=True):
            for start in range(0, len(rows), BATCH):
                chunk = rows[start : start + BATCH]
                ids = [r.id for r in chunk]
                facts = self.facts(ids, set(), recurring=rule.name)
                periods = {
                    r.id: period(self.now.astimezone(self._zone(r.timezone)), rule.once_per) for r in chunk
                }
                keys = {r.id: f"{self.pb.name}:recurring:{rule.name}:{periods[r.id]}:{r.id}" for r in chunk}
                fired = {
                    k
                    for (k,) in self.conn.execute(
                        select(OUTBOX.c.idempotency_key).where(
                            among(
                                OUTBOX.c.idempotency_key,
                                [f"{k}:{i}" for k in keys.values() for i in range(len(rule.steps))],
                                self.dialect,
                            )
                        )
                    )
                }
                for row in chunk:
                    customer = facts.customers.get(row.id)
                    if customer is None:
                        continue
                    touch = self.pb.touch_of(row.segment) if row.segment else None
                    for index, step in enumerate(rule.steps):
                        key = f"{keys[row.id]}:{index}"
                        if key in fired:
                            continue
                        guard = facts.guards.get((row.id, f"recurring:{rule.name}", "", index), True)
                        guard_text = self.compiled.guards.get((f"recurring:{rule.name}", "", index))
                        self.action(
                            customer,
                            facts,
                            step,
                            f"recurring/{rule.name}#{index + 1}",
                            key,
                            row.segment,
                            touch,
                            row.stage,
                            None if guard else f"step guard: {guard_text.text if guard_text else ''}",
                        )
