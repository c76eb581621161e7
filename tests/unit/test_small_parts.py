"""Masking, rates, backoff and durations: small pure pieces the rest relies on."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest

from automation.errors import ConfigError
from automation.masking import mask_email, mask_phone, mask_text
from automation.outbox.dispatch import DispatchConfig
from automation.outbox.ratelimit import Rate, TokenBucket, parse_rate
from automation.rules.ast import format_duration, parse_duration


def test_masking_hides_addresses_and_numbers() -> None:
    assert mask_email("jane.doe@example.com") == "j***@example.com"
    assert mask_phone("+14155550123") == "+14*******23"
    text = mask_text("failed for jane.doe@example.com and +4915112345678: 550")
    assert "jane" not in text and "12345" not in text and "j***@example.com" in text and ": 550" in text


def test_parse_rate() -> None:
    assert parse_rate("10/s") == Rate(10, 1.0)
    assert parse_rate("600/m").per_second == 10
    with pytest.raises(ConfigError, match="not a rate"):
        parse_rate("fast", "AUTOMATION_SMS_RATE")


def test_token_bucket_paces_sends() -> None:
    clock = [0.0]
    slept: list[float] = []

    async def run() -> None:
        bucket = TokenBucket(Rate(2, 1.0), clock=lambda: clock[0])
        original = asyncio.sleep

        async def fake_sleep(seconds: float) -> None:
            slept.append(seconds)
            clock[0] += seconds
            await original(0)

        asyncio.sleep = fake_sleep  # type: ignore[assignment]
        try:
            for _ in range(5):
                await bucket.acquire()
        finally:
            asyncio.sleep = original  # type: ignore[assignment]

    asyncio.run(run())
    assert clock[0] == pytest.approx(1.5)  # 2 at once, then one every 0.5 s
    assert len(slept) == 3


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    config = DispatchConfig(worker_id="w", backoff_base=30, backoff_max=600)
    rng = random.Random(3)
    delays = [config.backoff(attempt, None, rng) for attempt in range(1, 8)]
    ceilings = [30, 60, 120, 240, 480, 600, 600]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert config.backoff(1, 7.0, rng) == 7.0


def test_durations() -> None:
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(days=14)
    assert parse_duration("3 days") is None and parse_duration("-1d") is None
    assert format_duration(timedelta(days=7)) == "7d" and format_duration(timedelta(hours=36)) == "36h"
