"""A small known data set: one customer for each path through the example playbook."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from automation.db.tables import metadata
from automation.messages.store import TemplateStore
from tests.conftest import ROOT

# 12:00 UTC: daytime in Europe and the Americas, 21:00 in Tokyo (quiet hours there)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TEMPLATES = TemplateStore(ROOT / "templates")
T = metadata.tables


def customer(cid: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": cid,
        "email": f"{cid}@example.com",
        "phone": "+14155550100",
        "first_name": cid.title(),
        "last_name": None,
        "timezone": "Europe/Berlin",
        "locale": "en-US",
        "owner_email": "owner@example.com",
        "plan": "starter",
        "clv": 100.0,
        "orders_count": 0,
        "signed_up_at": NOW - timedelta(days=400),
        "last_order_at": None,
        "last_seen_at": None,
        "birthday": None,
        "nps": None,
        "attributes": {},
        "updated_at": NOW,
    }
    row.update(fields)
    return row


CUSTOMERS = [
    customer("newbie", signed_up_at=NOW - timedelta(days=2)),  # acquisition, self_serve: welcome email
    customer("tokyo", signed_up_at=NOW - timedelta(days=5), timezone="Asia/Tokyo"),  # quiet hours
    customer("nomail", signed_up_at=NOW - timedelta(days=5), email=None),  # no address
    customer("unsub", signed_up_at=NOW - timedelta(days=5)),  # suppressed email
    customer("lapsed"),  # orders 0, signed up long ago: no stage
    customer("buyer", orders_count=1),  # conversion: no program
    customer("regular", orders_count=3, birthday=date(1990, 11, 22)),  # retention + birthday
    customer("fan", orders_count=4, clv=2000.0),  # growth, retention: tips email
    customer("referrer", orders_count=1, clv=20000.0),  # strategic; referral event -> loyalty: task
    customer("bigco", orders_count=12, plan="enterprise", owner_email=None),  # strategic loyalty, no owner
    customer("vip", orders_count=15),  # self_serve loyalty: email + webhook
]
