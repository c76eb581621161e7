"""The variables every template sees, built from one customer and where they are in a playbook.

* ``customer``         mapping with every ``customer`` column (missing ones are None) plus ``attributes``
                       (a mapping, ``{}`` when empty); ``customer.timezone`` defaults to ``"UTC"`` and
                       ``customer.orders_count`` to 0
* ``playbook``         the playbook name
* ``segment``, ``touch``, ``stage``, ``step``   where the customer is in the playbook (None when not set)
* ``now``              the evaluation time (timezone-aware datetime, UTC)
* ``unsubscribe_url``  the customer's unsubscribe link (the email layout prints it in both versions)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from automation.db.tables import Customer

__all__ = ["CONTEXT_NAMES", "CUSTOMER_FIELDS", "build_context"]

CUSTOMER_FIELDS: tuple[str, ...] = tuple(Customer.model_fields)
#: The names of the context, as a hint names them when a template reads one that does not exist.
CONTEXT_NAMES = "customer, playbook, segment, touch, stage, step, now, unsubscribe_url"


def build_context(
    customer: Mapping[str, Any],
    *,
    playbook: str,
    segment: str | None,
    touch: str | None,
    stage: str | None,
    step: str | None,
    now: datetime,
    unsubscribe_url: str,
) -> dict[str, Any]:
    """The variables a template sees. ``customer`` is copied; missing columns become None."""
    fields: dict[str, Any] = dict.fromkeys(CUSTOMER_FIELDS)
    fields.update(customer)
    attributes = fields.get("attributes")
    fields["attributes"] = dict(attributes) if isinstance(attributes, Mapping) else {}
    if not fields.get("timezone"):
        fields["timezone"] = "UTC"
    if fields.get("orders_count") is None:
        fields["orders_count"] = 0
    return {
        "customer": fields,
        "playbook": playbook,
        "segment": segment,
        "touch": touch,
        "stage": stage,
        "step": step,
        "now": now,
        "unsubscribe_url": unsubscribe_url,
    }
