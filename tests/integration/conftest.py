"""Fixtures for integration tests."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, insert

from tests.integration.known import CUSTOMERS, NOW, T


@pytest.fixture
def data(engine: Engine) -> Engine:
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), CUSTOMERS)
        conn.execute(
            insert(T["event"]),
            [
                {
                    "customer_id": "referrer",
                    "name": "referral_sent",
                    "occurred_at": NOW - timedelta(days=3),
                    "properties": {},
                }
            ],
        )
        conn.execute(
            insert(T["suppression"]),
            [{"channel": "email", "customer_id": "unsub", "reason": "unsubscribed", "created_at": NOW}],
        )
    return engine
