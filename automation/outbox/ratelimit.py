"""Per-channel rate limits (token buckets), e.g. ``AUTOMATION_SMS_RATE=10/s``: providers enforce them."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from automation.errors import ConfigError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Rate:
    count: int
    per_seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.per_seconds

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(self.per_seconds, f"{self.per_seconds}s")
        return f"{self.count}/{unit}"


def parse_rate(text: str, name: str = "rate") -> Rate:
    """``10/s``, ``600/m``, ``5000/h``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*([smh])\s*", text)
    if not match or int(match.group(1)) <= 0:
        raise ConfigError(f"{name}={text!r} is not a rate; use e.g. 10/s, 600/m or 5000/h")
    return Rate(int(match.group(1)), _UNITS[match.group(2)])


class TokenBucket:
    """Allows ``rate.count`` sends per ``rate.per_seconds`` on average, with bursts up to ``rate.count``."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = float(rate.count)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate.per_second)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate.per_second)
