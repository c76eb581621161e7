"""``automation serve``'s ``/metrics`` over real HTTP on 127.0.0.1: the bearer token, route templates,
status labels, the /v1 call counts and the duration histogram.

The exposition is read by a strict parser written here, independently of the renderer
(``prometheus_client`` is not a dependency): every line must be a HELP, TYPE or sample line, every
sample must belong to the family declared before it, and a histogram must have cumulative buckets
ending in ``+Inf`` that agree with its ``_count``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine

from automation.config import Settings
from automation.web.app import make_app
from automation.web.metrics import BUCKETS, ServeMetrics
from automation.worker.metrics import CONTENT_TYPE, Family, render

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TOKEN = "mt_test_secret"
KEY = "wk_test_metrics"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WRITE = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}

Labels = frozenset[tuple[str, str]]

# -- a strict parser of the text exposition format (0.0.4) ------------------------------------------
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_LABEL = rf"[a-zA-Z_][a-zA-Z0-9_]*={_VALUE}"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{({_LABEL}(?:,{_LABEL})*)\}})? (\S+)$")
_PAIR = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({_VALUE})")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("",), "gauge": ("",)}


@dataclass
class Parsed:
    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def _number(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", text), f"not a number: {text!r}"
    return float(text)


def parse(body: str) -> Parsed:
    """The families and samples of an exposition; fails on any line out of place."""
    assert body.endswith("\n") and not body.endswith("\n\n"), "the body ends with exactly one newline"
    parsed = Parsed()
    current: str | None = None
    helped: set[str] = set()
    for line in body[:-1].split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helped, f"HELP of {name} twice"
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert re.fullmatch(_NAME, name) and kind in _SUFFIXES, line
            assert name not in parsed.types and name in helped, f"TYPE of {name} twice or before its HELP"
            parsed.types[name], current = kind, name
            continue
        match = _SAMPLE.match(line)
        assert match, f"not an exposition line: {line!r}"
        name, inner, value = match.groups()
        assert current is not None, f"a sample before any TYPE line: {line!r}"
        suffix = name[len(current) :]
        assert name.startswith(current) and suffix in _SUFFIXES[parsed.types[current]], (
            f"{name} does not belong to the family {current} declared before it"
        )
        pairs = [(k, json.loads(v)) for k, v in _PAIR.findall(inner or "")]  # the escapes are JSON's
        assert len({k for k, _ in pairs}) == len(pairs), f"a label twice: {line!r}"
        assert (suffix == "_bucket") == any(k == "le" for k, _ in pairs), f"le only on buckets: {line!r}"
        key = (name, frozenset(pairs))
        assert key not in parsed.samples, f"duplicate sample {line!r}"
        parsed.samples[key] = _number(value)
    for name, kind in parsed.types.items():
        if kind == "histogram":
            _check_histogram(parsed, name)
    return parsed


def _check_histogram(parsed: Parsed, name: str) -> None:
    """Buckets cumulative, ending in +Inf, equal to _count; a _sum for every series."""
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for labels, value in parsed.series(name + "_bucket").items():
        le = dict(labels)["le"]
        rest = frozenset((k, v) for k, v in labels if k != "le")
        groups.setdefault(rest, []).append((_number(le), value))
    assert set(groups) == set(parsed.series(name + "_count")) == set(parsed.series(name + "_sum"))
    for rest, buckets in groups.items():
        buckets.sort()
        assert buckets[-1][0] == math.inf, f"{name}{dict(rest)}: no +Inf bucket"
        counts = [n for _le, n in buckets]
        assert counts == sorted(counts), f"{name}{dict(rest)}: buckets not cumulative: {counts}"
        assert counts[-1] == parsed.samples[(name + "_count", rest)]
        assert parsed.samples[(name + "_sum", rest)] >= 0


# -- helpers ------------------------------------------------------------------------------------------
Session = Callable[[TestClient[web.Request, web.Application]], Awaitable[Any]]


def run(app: web.Application, session: Session) -> Any:
    """``session(client)`` against ``app`` served on 127.0.0.1."""

    async def main() -> Any:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await session(client)

    return asyncio.run(main())


async def scrape(client: TestClient[web.Request, web.Application]) -> Parsed:
    response = await client.get("/metrics", headers=AUTH)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == CONTENT_TYPE
    return parse(await response.text())


def app_for(engine: Engine, **kwargs: Any) -> web.Application:
    kwargs.setdefault("metrics_token", TOKEN)
    return make_app(engine, "secret", clock=lambda: NOW, write_keys=(KEY,), **kwargs)


def requests_by_route(parsed: Parsed) -> dict[str, float]:
    totals: dict[str, float] = {}
    for labels, n in parsed.series("automation_http_requests_total").items():
        route = dict(labels)["route"]
        totals[route] = totals.get(route, 0) + n
    return totals


# -- the token ----------------------------------------------------------------------------------------
def test_without_a_token_metrics_answer_404(sqlite_engine: Engine) -> None:
    async def session(client: TestClient[web.Request, web.Application]) -> tuple[int, Any]:
        response = await client.get("/metrics", headers=AUTH)
        return response.status, await response.json()

    status, body = run(app_for(sqlite_engine, metrics_token=""), session)
    assert status == 404
    assert "AUTOMATION_METRICS_TOKEN" in body["error"]


def test_a_missing_or_wrong_token_is_401_and_the_right_one_200(sqlite_engine: Engine) -> None:
    tries = {
        "none": {},
        "wrong": {"Authorization": "Bearer not-the-token"},
        "prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
        "longer": {"Authorization": f"Bearer {TOKEN}x"},
        "basic": {"Authorization": "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()},
        "empty bearer": {"Authorization": "Bearer "},
        "right": AUTH,
        "lowercase scheme": {"Authorization": f"bearer {TOKEN}"},
    }

    async def session(client: TestClient[web.Request, web.Application]) -> dict[str, Any]:
        out = {}
        for name, headers in tries.items():
            response = await client.get("/metrics", headers=headers)
            if response.status == 200:
                out[name] = (200, response.headers["Content-Type"], await response.text())
            else:
                out[name] = (response.status, response.headers.get("WWW-Authenticate"), await response.json())
        return out

    answers = run(app_for(sqlite_engine), session)
    for name in ("none", "wrong", "prefix", "longer", "basic", "empty bearer"):
        status, challenge, body = answers[name]
        assert (status, challenge) == (401, 'Bearer realm="metrics"'), name
        assert set(body) == {"error"}, name
    assert answers["none"][2]["error"].startswith("missing metrics token")
    assert answers["wrong"][2] == {"error": "invalid metrics token"}
    for name in ("right", "lowercase scheme"):
        status, content_type, text = answers[name]
        assert (status, content_type) == (200, CONTENT_TYPE)
        assert parse(text).types["automation_http_requests_total"] == "counter"
    # the refused scrapes are counted as what they were
    parsed = parse(answers["lowercase scheme"][2])
    assert parsed.get("automation_http_requests_total", route="/metrics", method="GET", status="401") == 6


def test_the_token_comes_from_the_environment_and_stays_out_of_repr() -> None:
    settings = Settings.from_env({"AUTOMATION_METRICS_TOKEN": f"  {TOKEN} \n"})
    assert settings.metrics_token == TOKEN
    assert TOKEN not in repr(settings)
    assert Settings.from_env({}).metrics_token == ""


# -- routes, methods and statuses ---------------------------------------------------------------------
def test_requests_are_counted_by_route_template_method_and_status(sqlite_engine: Engine) -> None:
    app = app_for(sqlite_engine)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a defect in a handler")

    app.router.add_get("/boom/{part}", boom)

    async def session(client: TestClient[web.Request, web.Application]) -> tuple[Parsed, str]:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/healthz")).status == 200
        assert (await client.head("/healthz")).status == 200
        assert (await client.get("/unsubscribe/secret-token-1")).status == 404  # not a signed token
        assert (await client.post("/unsubscribe/secret-token-2")).status == 404
        assert (await client.get("/wp-admin/setup.php?x=1")).status == 404
        assert (await client.get("/another/unknown/path")).status == 404
        assert (await client.post("/healthz")).status == 405
        assert (await client.request("PURGE", "/healthz")).status == 405
        assert (await client.post("/v1/unknown-type", data=b"{}", headers=WRITE)).status == 404
        wrong_key = {"Authorization": "Bearer bad"}
        assert (await client.post("/v1/track", data=b"{}", headers=wrong_key)).status == 401
        assert (await client.get("/boom/raw-value")).status == 500
        response = await client.get("/metrics", headers=AUTH)
        return parse(await response.text()), await response.text()

    parsed, text = run(app, session)
    requests = {
        (d["route"], d["method"], d["status"]): n
        for labels, n in parsed.series("automation_http_requests_total").items()
        for d in [dict(labels)]
    }
    assert requests == {
        ("/healthz", "GET", "200"): 2,
        ("/healthz", "HEAD", "200"): 1,
        ("/unsubscribe/{token}", "GET", "404"): 1,
        ("/unsubscribe/{token}", "POST", "404"): 1,
        ("unmatched", "GET", "404"): 2,
        ("unmatched", "POST", "405"): 1,
        ("unmatched", "other", "405"): 1,
        ("/v1/{type}", "POST", "404"): 1,
        ("/v1/track", "POST", "401"): 1,
        ("/boom/{part}", "GET", "500"): 1,
    }
    for raw in ("secret-token", "wp-admin", "unknown/path", "unknown-type", "raw-value", "PURGE"):
        assert raw not in text
    assert parsed.get("automation_http_requests_in_flight") == 1  # this scrape


# -- the /v1 calls ------------------------------------------------------------------------------------
def test_accepted_and_rejected_calls_are_counted_per_type(engine: Engine) -> None:
    batch = [
        {"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com"}},
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "m-1"},
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "m-2"},
        {"type": "track", "userId": "never-identified", "event": "Order Completed"},  # refused when stored
        {"type": "identify", "userId": "u2", "traits": {"email": "not an address"}},
        {"type": "identify", "traits": {"plan": "pro"}},  # no userId
        {"type": "page", "userId": "u1", "name": "Home"},
        {"type": "bogus", "userId": "u1"},
        {"type": ["identify"], "userId": "u1"},
        "not an object",
    ]

    async def session(client: TestClient[web.Request, web.Application]) -> tuple[Any, list[int], Parsed]:
        response = await client.post("/v1/batch", json={"batch": batch}, headers=WRITE)
        answer = await response.json()
        statuses = []
        for path, body, headers in [
            ("/v1/identify", {"userId": "u3", "traits": {"plan": "pro"}}, WRITE),
            ("/v1/track", {"userId": "u3", "event": "Signed In", "messageId": "m-3"}, WRITE),
            ("/v1/track", {"userId": "nobody", "event": "Signed In"}, WRITE),  # unknown customer: 400
            ("/v1/track", {"event": "Signed In"}, WRITE),  # no userId: 400
            ("/v1/identify", {"userId": "u4"}, {"Authorization": "Bearer wrong"}),  # 401: not counted
            ("/v1/screen", {"userId": "u3", "name": "Settings"}, WRITE),
        ]:
            reply = await client.post(path, json=body, headers=headers)
            statuses.append(reply.status)
        broken = await client.post("/v1/track", data=b"{not json", headers=WRITE)
        statuses.append(broken.status)
        whole = await client.post("/v1/batch", json={"batch": "not a list"}, headers=WRITE)
        statuses.append(whole.status)
        return answer, statuses, await scrape(client)

    answer, statuses, parsed = run(app_for(engine), session)
    assert answer["accepted"] == 4
    assert [r["index"] for r in answer["rejected"]] == [3, 4, 5, 7, 8, 9]
    assert statuses == [200, 200, 400, 400, 401, 200, 400, 400]
    ingest = {
        (d["type"], d["outcome"]): n
        for labels, n in parsed.series("automation_ingest_events_total").items()
        for d in [dict(labels)]
    }
    assert ingest == {
        ("identify", "accepted"): 1 + 1,
        ("identify", "rejected"): 2,
        ("track", "accepted"): 2 + 1,
        ("track", "rejected"): 1 + 3,  # the batch's unknown customer; two 400s and the broken JSON
        ("page", "accepted"): 1,
        ("screen", "accepted"): 1,
        ("invalid", "rejected"): 3,
    }
    assert parsed.types["automation_ingest_events_total"] == "counter"
    # the batch refused as a whole is a request, not calls
    assert parsed.get("automation_http_requests_total", route="/v1/batch", method="POST", status="400") == 1


# -- durations ------------------------------------------------------------------------------------------
def test_the_histogram_counts_every_answered_request_of_its_route(sqlite_engine: Engine) -> None:
    async def session(client: TestClient[web.Request, web.Application]) -> Parsed:
        for _ in range(3):
            await client.get("/healthz")
        await client.get("/nowhere")
        await client.post("/v1/identify", json={"userId": "u1"}, headers=WRITE)
        await client.post("/v1/batch", json={"batch": [{"type": "identify", "userId": "u2"}]}, headers=WRITE)
        await client.get("/metrics")  # 401
        return await scrape(client)

    parsed = run(app_for(sqlite_engine), session)
    assert parsed.types["automation_http_request_duration_seconds"] == "histogram"
    name = "automation_http_request_duration_seconds"
    counts = {dict(labels)["route"]: n for labels, n in parsed.series(name + "_count").items()}
    assert counts == requests_by_route(parsed)
    assert counts == {"/healthz": 3, "unmatched": 1, "/v1/identify": 1, "/v1/batch": 1, "/metrics": 1}
    bounds = sorted(_number(dict(labels)["le"]) for labels in parsed.series(name + "_bucket"))
    assert sorted(set(bounds)) == [*BUCKETS, math.inf]


def test_durations_fall_in_their_buckets(sqlite_engine: Engine) -> None:
    ticks = iter(range(1000))

    def timer() -> float:  # every request takes 0.03 s: start, end, start, end, ...
        return next(ticks) * 0.03

    async def session(client: TestClient[web.Request, web.Application]) -> Parsed:
        for _ in range(4):
            await client.get("/healthz")
        return await scrape(client)

    parsed = run(app_for(sqlite_engine, counts=ServeMetrics(timer=timer)), session)
    name = "automation_http_request_duration_seconds"
    series = parsed.series(name + "_bucket").items()
    buckets = {dict(labels)["le"]: n for labels, n in series if ("route", "/healthz") in labels}
    assert buckets["0.025"] == 0 and buckets["0.05"] == 4 and buckets["+Inf"] == 4
    assert parsed.get(name + "_sum", route="/healthz") == pytest.approx(4 * 0.03)
    assert parsed.get(name + "_count", route="/healthz") == 4


def test_a_histogram_renders_cumulative_buckets() -> None:
    fam = Family("took_seconds", "histogram", "How long.").add_histogram(
        (0.1, 1.0), [2, 0, 1], 5.25, route="/a"
    )
    assert render([fam]) == (
        "# HELP automation_took_seconds How long.\n"
        "# TYPE automation_took_seconds histogram\n"
        'automation_took_seconds_bucket{route="/a",le="0.1"} 2\n'
        'automation_took_seconds_bucket{route="/a",le="1.0"} 2\n'
        'automation_took_seconds_bucket{route="/a",le="+Inf"} 3\n'
        'automation_took_seconds_sum{route="/a"} 5.25\n'
        'automation_took_seconds_count{route="/a"} 3\n'
    )
    assert parse(render([fam])).get("automation_took_seconds_count", route="/a") == 3
