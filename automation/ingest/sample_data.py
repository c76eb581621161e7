"""Synthetic, deterministic sample data for trying a lifecycle playbook.

``generate_sample_data`` writes ``customers.csv`` and ``events.jsonl`` that import cleanly and
cover the cases lifecycle rules care about: new sign-ups without orders, one-time buyers,
repeat and loyal customers, high-value and enterprise accounts, lapsed customers, birthdays
today, NPS answers, many time zones and locales. The same seed and ``now`` give identical files.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers

from automation.errors import InputError
from automation.ingest.rows import CUSTOMER_FIELDS

# (time zone, locales, phone region)
REGIONS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("America/New_York", ("en-US", "es-US"), "US"),
    ("America/Chicago", ("en-US",), "US"),
    ("America/Los_Angeles", ("en-US",), "US"),
    ("America/Sao_Paulo", ("pt-BR",), "BR"),
    ("Europe/London", ("en-GB",), "GB"),
    ("Europe/Berlin", ("de-DE", "en-GB"), "DE"),
    ("Europe/Paris", ("fr-FR",), "FR"),
    ("Asia/Jakarta", ("id-ID", "en-US"), "ID"),
    ("Asia/Tokyo", ("ja-JP",), "JP"),
    ("Asia/Kolkata", ("en-IN", "hi-IN"), "IN"),
    ("Australia/Sydney", ("en-AU",), "AU"),
    ("UTC", ("en",), "GB"),
)
FIRST_NAMES = (
    "Ada", "Ben", "Chloé", "Dmitri", "Emma", "Farah", "Gus", "Hana", "Ivan", "Jonas", "Keiko", "Liam",
    "Maya", "Noah", "Olga", "Priya", "Quinn", "Rafael", "Sofia", "Tariq", "Uma", "Viktor", "Wen", "Yusuf",
    "Zoë", "José", "Ayu", "Lars",
)  # fmt: skip
LAST_NAMES = (
    "Anders", "Brown", "Castillo", "Dubois", "Evans", "Fischer", "García", "Hughes", "Ito", "Jansen",
    "Kumar", "Lee", "Müller", "Nakamura", "Okafor", "Pratama", "Rossi", "Silva", "Tan", "Walsh",
)  # fmt: skip
OWNERS = ("dana.owner@example.com", "lee.owner@example.com", "sam.owner@example.org", "kim.owner@example.org")
INDUSTRIES = ("retail", "software", "healthcare", "education", "finance", "manufacturing", "media")
PAGES = ("/", "/pricing", "/features", "/blog/onboarding-tips", "/docs/getting-started", "/account")
CAMPAIGNS = ("welcome", "first-order", "win-back", "newsletter", "upgrade")
PLANS = (("free", 45), ("starter", 30), ("pro", 20), ("enterprise", 5))
AVERAGE_ORDER = {"free": 35.0, "starter": 90.0, "pro": 260.0, "enterprise": 1_500.0}
EVENT_WINDOW = timedelta(days=120)


@dataclass(frozen=True)
class SampleSummary:
    """Where the files went and how many rows they hold."""

    customers_path: Path
    events_path: Path
    customers: int
    events: int


def generate_sample_data(
    outdir: Path | str, customers: int = 1_000, seed: int = 42, now: datetime | None = None
) -> SampleSummary:
    """Write ``customers.csv`` and ``events.jsonl`` into ``outdir`` (created if missing).

    Timestamps fall before ``now`` (default: the current time; naive means UTC); events spread
    over the 120 days before it. Deterministic for a given ``seed`` and ``now``.
    """
    if customers < 1:
        raise InputError("the number of customers must be at least 1")
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    out = Path(outdir)
    rng = random.Random(seed)
    width = max(5, len(str(customers)))
    customers_path, events_path = out / "customers.csv", out / "events.jsonl"
    event_count = 0
    try:
        out.mkdir(parents=True, exist_ok=True)
        with (
            customers_path.open("w", newline="", encoding="utf-8") as cfh,
            events_path.open("w", encoding="utf-8") as efh,
        ):
            writer = csv.writer(cfh, lineterminator="\n")
            writer.writerow(CUSTOMER_FIELDS)
            for n in range(1, customers + 1):
                customer = _customer(rng, f"cus_{n:0{width}d}", n, now)
                writer.writerow([_cell(customer[f]) for f in CUSTOMER_FIELDS])
                for event in _events(rng, customer, now):
                    efh.write(json.dumps(event, ensure_ascii=False, sort_keys=True) + "\n")
                    event_count += 1
    except OSError as exc:
        raise InputError(f"{exc.filename or out}: cannot write: {exc.strerror or exc}") from None
    return SampleSummary(customers_path, events_path, customers, event_count)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def _ascii(name: str) -> str:
    table = str.maketrans("éëüíáó", "eeuiao")
    return name.lower().translate(table)


def _phone(rng: random.Random, region: str) -> str:
    """A valid E.164 mobile number for ``region`` (the library's example with varied last digits)."""
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    assert example is not None, f"no example mobile number for {region}"
    digits = str(example.national_number)
    for _ in range(10):
        candidate = digits[:-4] + f"{rng.randrange(10_000):04d}"
        number = phonenumbers.parse(f"+{example.country_code}{candidate}", None)
        if phonenumbers.is_valid_number(number):
            break
    else:
        number = example
    e164: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164


def _birthday(rng: random.Random, tz: str, now: datetime) -> date | None:
    roll = rng.random()
    if roll < 0.25:
        return None
    year = rng.randint(1955, 2004)
    if roll < 0.28:  # about 3 %: today in the customer's own time zone, so a birthday rule fires
        today = now.astimezone(ZoneInfo(tz)).date()
        if (today.month, today.day) == (2, 29):
            year = 1988 + 4 * rng.randrange(4)
        return date(year, today.month, today.day)
    return date(year, 1, 1) + timedelta(days=rng.randrange(365))


def _orders(rng: random.Random, plan: str) -> int:
    roll = rng.random()
    if roll < 0.35:
        return 0
    if roll < 0.55:
        return 1
    if roll < 0.88 or plan == "free":
        return rng.randint(2, 9)
    return rng.randint(10, 60)


def _customer(rng: random.Random, cid: str, n: int, now: datetime) -> dict[str, Any]:
    tz, locales, region = rng.choice(REGIONS)
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    plan = rng.choices([p for p, _ in PLANS], weights=[w for _, w in PLANS])[0]
    orders = _orders(rng, plan)
    if orders == 0 and rng.random() < 0.5:  # new sign-ups, not yet ordered
        signed_up = now - timedelta(days=rng.uniform(0.1, 30))
    else:
        signed_up = now - timedelta(days=rng.uniform(31, 1_100))
    signed_up = signed_up.replace(microsecond=0)

    if plan == "enterprise":
        clv: float | None = round(rng.uniform(10_000, 90_000), 2)
    elif orders == 0:
        clv = None if rng.random() < 0.3 else 0.0
    else:
        # Long-tailed: most customers stay below 1,000, a few loyal pro buyers pass 10,000.
        clv = round(orders * AVERAGE_ORDER[plan] * rng.lognormvariate(0, 0.5), 2)

    last_order = None
    if orders:
        lapsed = rng.random() < 0.25  # a quarter have not ordered for 90+ days
        lo, hi = (
            (signed_up, now - timedelta(days=90))
            if lapsed
            else (max(signed_up, now - timedelta(days=89)), now)
        )
        if hi <= lo:
            lo, hi = signed_up, now
        last_order = (lo + (hi - lo) * rng.random()).replace(microsecond=0)
    seen_from = last_order or signed_up
    last_seen = (
        None if rng.random() < 0.1 else (seen_from + (now - seen_from) * rng.random()).replace(microsecond=0)
    )

    domain = "example.com" if n % 3 else "example.org"
    size = rng.choice(("201-1000", "1000+") if plan == "enterprise" else ("1-10", "11-50", "51-200"))
    return {
        "id": cid,
        "email": f"{_ascii(first)}.{_ascii(last)}.{n}@{domain}",
        "phone": _phone(rng, region) if rng.random() < 0.8 else None,
        "first_name": first,
        "last_name": last,
        "timezone": tz,
        "locale": rng.choice(locales),
        "owner_email": rng.choice(OWNERS) if rng.random() < 0.85 else None,
        "plan": plan,
        "clv": clv,
        "orders_count": orders,
        "signed_up_at": signed_up,
        "last_order_at": last_order,
        "last_seen_at": last_seen,
        "birthday": _birthday(rng, tz, now),
        "nps": None if rng.random() < 0.5 else rng.choices(range(11), weights=[1] * 7 + [3, 4, 5, 5])[0],
        "attributes": {"industry": rng.choice(INDUSTRIES), "company_size": size},
    }


def _events(rng: random.Random, customer: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """About three events per customer, in time order, within the 120 days before ``now``."""
    start = max(customer["signed_up_at"], now - EVENT_WINDOW)
    names = ["page_viewed", "email_clicked", "referral_sent", "activated"]
    weights = [50, 25, 5, 10]
    if customer["orders_count"]:
        names.append("order_placed")
        weights.append(20)
    times = sorted(start + (now - start) * rng.random() for _ in range(rng.randint(0, 6)))
    events = []
    for when in times:
        name = rng.choices(names, weights=weights)[0]
        properties: dict[str, Any] = {}
        if name == "page_viewed":
            properties = {"path": rng.choice(PAGES)}
        elif name == "email_clicked":
            properties = {"campaign": rng.choice(CAMPAIGNS)}
        elif name == "referral_sent":
            properties = {"channel": rng.choice(("email", "link", "sms"))}
        elif name == "order_placed":
            properties = {"amount": round(AVERAGE_ORDER[customer["plan"]] * rng.uniform(0.3, 2.0), 2)}
            properties["currency"] = "USD"
        events.append(
            {
                "customer_id": customer["id"],
                "name": name,
                "occurred_at": _iso(when.replace(microsecond=0)),
                "properties": properties,
            }
        )
    return events
