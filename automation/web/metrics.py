"""Prometheus metrics of ``automation serve``: ``GET /metrics``, and the middleware that counts requests.

``/metrics`` is on only when ``AUTOMATION_METRICS_TOKEN`` is set (else 404) and wants
``Authorization: Bearer <token>`` (compared in constant time; else 401 with a JSON reason). The text
is written by ``automation.worker.metrics.render``, the renderer of ``automation run``'s metrics.

Counts live in plain dicts of this process, updated in the event loop (no locks, a few dict
operations per request); they start at zero when the process starts. Routes are counted by their
template (``/unsubscribe/{token}``), never by the path a client sent: a path no route matches is
``unmatched``, so a scanner cannot grow the number of series. Metric names (prefixed ``automation_``)::

    http_requests_total{route,method,status}       counter    requests answered
    http_request_duration_seconds{route}           histogram  time to answer (_bucket, _sum, _count)
    http_requests_in_flight                        gauge      requests being handled (this scrape too)
    ingest_events_total{type,outcome}              counter    /v1 calls accepted or rejected, per type
"""

from __future__ import annotations

import asyncio
import bisect
import hmac
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from automation.ingest.segment import CALL_TYPES
from automation.worker.metrics import CONTENT_TYPE, Family, render

#: Upper bounds (seconds) of the duration buckets: Prometheus' default buckets.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "unmatched"
#: Methods counted by name; any other is counted as ``other`` (the label values stay a fixed set).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The ``type`` of a call in a batch that names no known type.
INVALID_TYPE = "invalid"

_MISSING = "missing metrics token: send Authorization: Bearer <token>"


class _Histogram:
    """Observations per bucket (the last: above every bound) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0


class ServeMetrics:
    """The counts of one ``automation serve`` process; ``timer`` measures request durations."""

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self.timer = timer
        self.requests: dict[tuple[str, str, int], int] = {}
        self.durations: dict[str, _Histogram] = {}
        self.in_flight = 0
        self.ingest: dict[tuple[str, str], int] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request."""
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get(route)
        if histogram is None:
            histogram = self.durations[route] = _Histogram()
        histogram.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        histogram.total += seconds

    def calls(self, call_type: str, accepted: int, rejected: int) -> None:
        """``accepted`` and ``rejected`` calls of ``call_type`` (one endpoint's single call)."""
        for outcome, n in (("accepted", accepted), ("rejected", rejected)):
            if n:
                key = (call_type, outcome)
                self.ingest[key] = self.ingest.get(key, 0) + n

    def batch(self, items: Sequence[Any], rejected: Iterable[int]) -> None:
        """The calls of a batch, each by the ``type`` it names (``invalid`` when none it could be),
        rejected when its index is in ``rejected``."""
        refused = set(rejected)
        for index, item in enumerate(items):
            kind = item.get("type") if isinstance(item, dict) else None
            if not isinstance(kind, str) or kind not in CALL_TYPES:
                kind = INVALID_TYPE
            key = (kind, "rejected" if index in refused else "accepted")
            self.ingest[key] = self.ingest.get(key, 0) + 1

    def families(self) -> list[Family]:
        """The metrics as they stand now."""
        requests = Family(
            "http_requests_total", "counter", "Requests answered, by route template, method and status."
        )
        durations = Family(
            "http_request_duration_seconds", "histogram", "Seconds from routing a request to its answer."
        )
        in_flight = Family("http_requests_in_flight", "gauge", "Requests being handled now.")
        ingest = Family("ingest_events_total", "counter", "Calls of the /v1 API, by call type and outcome.")
        for (route, method, status), n in sorted(self.requests.items()):
            requests.add(n, route=route, method=method, status=str(status))
        for route, histogram in sorted(self.durations.items()):
            durations.add_histogram(BUCKETS, histogram.counts, histogram.total, route=route)
        in_flight.add(self.in_flight)
        for (kind, outcome), n in sorted(self.ingest.items()):
            ingest.add(n, type=kind, outcome=outcome)
        return [requests, durations, in_flight, ingest]


def middleware(metrics: ServeMetrics) -> Middleware:
    """An aiohttp middleware that counts every request in ``metrics``: its route template, method,
    status and duration, and the requests in flight. A request cancelled before it was answered (its
    handler stopped at the end of the shutdown timeout) leaves the in-flight gauge and is not counted."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED
        method = request.method if request.method in METHODS else "other"
        started = metrics.timer()
        metrics.in_flight += 1
        status = 500  # what aiohttp answers for an exception that is not an HTTP error
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 0
            raise
        finally:
            metrics.in_flight -= 1
            if status:
                metrics.observe(route, method, status, metrics.timer() - started)

    return count


def handler(metrics: ServeMetrics, token: str) -> Handler:
    """``GET /metrics``: 404 without a token configured, 401 without the right bearer token."""
    expected = token.encode()

    async def scrape(request: web.Request) -> web.StreamResponse:
        if not expected:
            return _error(404, "not found: metrics are off (no AUTOMATION_METRICS_TOKEN configured)")
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _error(401, _MISSING, challenge=True)
        if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected):
            return _error(401, "invalid metrics token", challenge=True)
        return web.Response(body=render(metrics.families()).encode(), headers={"Content-Type": CONTENT_TYPE})

    return scrape


def _error(status: int, reason: str, challenge: bool = False) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="metrics"'} if challenge else None
    return web.json_response({"error": reason}, status=status, headers=headers)
