"""The Segment-compatible /v1 API over real HTTP on 127.0.0.1: identify, track, batch, auth, limits."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine, func, select

from automation.config import Settings
from automation.db.tables import CHANGE, CUSTOMER, EVENT
from automation.web.app import make_app

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KEY = "wk_test_123"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}


async def _send(
    engine: Engine,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    keys: tuple[str, ...] = (KEY,),
) -> tuple[int, Any]:
    app = make_app(engine, "secret", clock=lambda: NOW, write_keys=keys)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        data = raw if raw is not None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} | (BASIC if headers is None else headers)
        response = await client.post(path, data=data, headers=all_headers)
        return response.status, await response.json()


def send(engine: Engine, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
    return asyncio.run(_send(engine, path, body, **kwargs))


def _customer(engine: Engine, customer_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(CUSTOMER).where(CUSTOMER.c.id == customer_id)).one_or_none()


def _events(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(EVENT).order_by(EVENT.c.id)))


def _identify(engine: Engine, user_id: str = "u1", **traits: Any) -> None:
    status, body = send(engine, "/v1/identify", {"userId": user_id, "traits": traits})
    assert (status, body) == (200, {"success": True})


def test_identify_maps_traits_to_columns_and_the_rest_to_attributes(engine: Engine) -> None:
    _identify(
        engine,
        email="Ada@Example.com",
        firstName="Ada",
        last_name="Lovelace",
        plan="pro",
        ordersCount=3,
        nps=9,
        clv="12.5",
        birthday="1990-05-01",
        company="Analytical",
        empty="",
        nothing=None,
    )
    row = _customer(engine, "u1")
    assert (row.email, row.first_name, row.last_name, row.plan) == (
        "Ada@example.com",
        "Ada",
        "Lovelace",
        "pro",
    )
    assert (row.orders_count, row.nps, row.clv, str(row.birthday)) == (3, 9, 12.5, "1990-05-01")
    assert row.timezone == "UTC" and row.attributes == {"company": "Analytical"}


def test_identify_changes_only_the_given_traits_and_merges_attributes(engine: Engine) -> None:
    _identify(engine, email="a@example.com", plan="free", company="A", size=3)
    status, _ = send(
        engine,
        "/v1/identify",
        {"userId": "u1", "traits": {"plan": "pro", "size": 4}, "context": {"timezone": "Europe/Berlin"}},
    )
    assert status == 200
    row = _customer(engine, "u1")
    assert (row.email, row.plan, row.timezone) == ("a@example.com", "pro", "Europe/Berlin")
    assert row.attributes == {"company": "A", "size": 4}


def test_track_stores_the_event_once_per_message_id_and_logs_a_change(engine: Engine) -> None:
    _identify(engine)
    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(CHANGE)).scalar_one()
    call = {
        "userId": "u1",
        "event": "Order Completed",
        "properties": {"total": 30},
        "timestamp": "2026-11-20T08:00:00+01:00",
        "messageId": "m-1",
    }
    assert send(engine, "/v1/track", call) == (200, {"success": True})
    assert send(engine, "/v1/track", call) == (200, {"success": True})  # a retry: stored once
    events = _events(engine)
    assert [(e.customer_id, e.name, e.properties, e.message_id) for e in events] == [
        ("u1", "Order Completed", {"total": 30}, "m-1")
    ]
    assert events[0].occurred_at == datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
    with engine.connect() as conn:
        changes = conn.execute(select(CHANGE.c.customer_id).where(CHANGE.c.seq > before)).scalars().all()
    assert "u1" in changes


def test_track_without_timestamp_takes_the_received_time(engine: Engine) -> None:
    _identify(engine)
    assert send(engine, "/v1/track", {"userId": "u1", "event": "Login"})[0] == 200
    assert _events(engine)[0].occurred_at == NOW


@pytest.mark.parametrize(
    ("path", "call", "field"),
    [
        ("/v1/identify", {"anonymousId": "anon-1", "traits": {}}, "anonymousId"),
        ("/v1/identify", {"traits": {}}, "userId: missing"),
        ("/v1/identify", {"userId": "u\x01", "traits": {}}, "userId: contains a control character"),
        ("/v1/identify", {"userId": "u1", "traits": []}, "traits: expected a JSON object"),
        ("/v1/identify", {"userId": "u1", "traits": {"email": "nope"}}, "traits.email: invalid email"),
        ("/v1/identify", {"userId": "u1", "traits": {"nps": 11}}, "traits.nps:"),
        ("/v1/identify", {"userId": "u1", "traits": {"firstName": "A", "first_name": "B"}}, "both given"),
        ("/v1/identify", {"userId": "u1", "context": {"timezone": "Mars/Base"}}, "context.timezone:"),
        ("/v1/identify", {"userId": "u1", "context": "x"}, "context: expected a JSON object"),
        ("/v1/track", {"userId": "known"}, "event: missing"),
        ("/v1/track", {"userId": "known", "event": 3}, "event: expected text"),
        ("/v1/track", {"userId": "known", "event": "E", "properties": [1]}, "properties: expected a JSON"),
        ("/v1/track", {"userId": "known", "event": "E", "timestamp": "yesterday"}, "timestamp:"),
        ("/v1/track", {"userId": "known", "event": "E", "messageId": 5}, "messageId: expected text"),
        ("/v1/track", {"userId": "stranger", "event": "E"}, "unknown customer 'stranger'"),
    ],
)
def test_bad_calls_are_refused_with_a_reason_naming_the_field(
    engine: Engine, path: str, call: dict[str, Any], field: str
) -> None:
    _identify(engine, "known")
    status, body = send(engine, path, call)
    assert status == 400 and field in body["error"], body
    assert _customer(engine, "u1") is None and _events(engine) == []


@pytest.mark.parametrize(
    ("raw", "field"),
    [(b"{not json", "body: not valid JSON"), (b"[1, 2]", "body: expected a JSON object"), (b"\xff", "JSON")],
)
def test_malformed_bodies_are_400(engine: Engine, raw: bytes, field: str) -> None:
    status, body = send(engine, "/v1/identify", raw=raw)
    assert status == 400 and field in body["error"]


def test_ignored_call_types_are_accepted(engine: Engine) -> None:
    for name in ("page", "screen", "group", "alias"):
        assert send(engine, f"/v1/{name}", {"userId": "u1", "name": "Home"}) == (200, {"success": True})
    assert _customer(engine, "u1") is None


def test_authentication_by_basic_bearer_and_body_write_key(engine: Engine) -> None:
    call = {"userId": "u1", "traits": {"plan": "a"}}
    assert send(engine, "/v1/identify", call, headers={"Authorization": f"Bearer {KEY}"})[0] == 200
    assert send(engine, "/v1/identify", call | {"writeKey": KEY}, headers={})[0] == 200
    assert send(engine, "/v1/identify", call, keys=("other", KEY))[0] == 200
    wrong = "Basic " + base64.b64encode(b"wrong:").decode()
    for headers, body in [
        ({"Authorization": wrong}, call),
        ({"Authorization": "Bearer nope"}, call),
        ({"Authorization": "Basic !!!"}, call),
        ({"Authorization": "Digest x"}, call),
        ({}, call),
        ({}, call | {"writeKey": "nope"}),
    ]:
        status, answer = send(engine, "/v1/identify", body, headers=headers)
        assert status == 401 and ("key" in answer["error"] or "Authorization" in answer["error"]), answer
    status, answer = send(engine, "/v1/identify", raw=b"{oops", headers={})
    assert status == 401


def test_without_write_keys_the_api_is_off(engine: Engine) -> None:
    for path in ("/v1/identify", "/v1/track", "/v1/batch"):
        status, body = send(engine, path, {"userId": "u1", "writeKey": ""}, keys=())
        assert status == 404 and "off" in body["error"]
    assert _customer(engine, "u1") is None


def test_bodies_over_the_limits_are_413(engine: Engine) -> None:
    big = {"userId": "u1", "traits": {"blob": "x" * (33 * 1024)}}
    status, body = send(engine, "/v1/identify", big)
    assert status == 413 and "32 KB" in body["error"]
    huge = {
        "batch": [{"type": "identify", "userId": f"u{i}", "traits": {"b": "x" * 20_000}} for i in range(30)]
    }
    status, body = send(engine, "/v1/batch", huge)
    assert status == 413 and "500 KB" in body["error"]
    bomb = gzip.compress(b"{" + b" " * (20 * 1024 * 1024) + b"}")
    status, body = send(engine, "/v1/batch", raw=bomb, headers=BASIC | {"Content-Encoding": "gzip"})
    assert status == 413
    assert _customer(engine, "u1") is None


def test_gzip_bodies_are_accepted(engine: Engine) -> None:
    raw = gzip.compress(json.dumps({"userId": "u1", "traits": {"plan": "gz"}}).encode())
    status, _ = send(engine, "/v1/identify", raw=raw, headers=BASIC | {"Content-Encoding": "gzip"})
    assert status == 200 and _customer(engine, "u1").plan == "gz"
    status, body = send(engine, "/v1/identify", raw=b"not gzip", headers=BASIC | {"Content-Encoding": "gzip"})
    assert status == 400 and "error" in body
    status, body = send(engine, "/v1/identify", raw=b"{}", headers=BASIC | {"Content-Encoding": "compress"})
    assert status == 415 and "Content-Encoding" in body["error"]


def test_a_mixed_batch_stores_the_good_calls_and_reports_the_bad(engine: Engine) -> None:
    batch = [
        {"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com", "a": 1}},
        {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "b-1"},
        {"type": "track", "userId": "ghost", "event": "Signed Up"},
        {"type": "identify", "userId": "u2", "traits": {"email": "bad"}},
        {"type": "page", "userId": "u1"},
        {"type": "launch", "userId": "u1"},
        {"type": "identify", "anonymousId": "anon"},
        {"type": "identify", "userId": "u1", "traits": {"plan": "pro", "b": 2}},
        {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "b-1"},
        "not a call",
        {"type": "identify", "userId": "u3", "traits": {"blob": "x" * (33 * 1024)}},
    ]
    status, body = send(engine, "/v1/batch", {"batch": batch})
    assert status == 200 and body["success"] is False and body["accepted"] == 5
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert sorted(reasons) == [2, 3, 5, 6, 9, 10]
    assert "unknown customer 'ghost'" in reasons[2] and "traits.email" in reasons[3]
    assert "type:" in reasons[5] and "anonymousId" in reasons[6] and "32 KB" in reasons[10]
    row = _customer(engine, "u1")
    assert (row.email, row.plan, row.attributes) == ("u1@example.com", "pro", {"a": 1, "b": 2})
    assert _customer(engine, "u2") is None
    assert [(e.customer_id, e.message_id) for e in _events(engine)] == [("u1", "b-1")]


def test_a_good_batch_answers_success(engine: Engine) -> None:
    batch = [{"type": "identify", "userId": "u1"}, {"type": "track", "userId": "u1", "event": "E"}]
    status, body = send(engine, "/v1/batch", {"batch": batch, "writeKey": KEY}, headers={})
    assert (status, body) == (200, {"success": True, "accepted": 2, "rejected": []})
    status, body = send(engine, "/v1/batch", {"batch": {}})
    assert status == 400 and "batch:" in body["error"]


def test_write_keys_come_from_the_environment_and_stay_out_of_repr() -> None:
    settings = Settings.from_env({"AUTOMATION_WRITE_KEYS": " wk_a, ,wk_b "})
    assert settings.write_keys == ("wk_a", "wk_b") and "wk_a" not in repr(settings)
    assert Settings.from_env({}).write_keys == ()


def test_a_numeric_user_id_and_a_batch_that_identifies_twice(engine: Engine) -> None:
    batch = [
        {"type": "identify", "userId": 42, "traits": {"plan": "free", "a": 1}},
        {"type": "identify", "userId": "42", "traits": {"plan": "pro", "b": 2}},
        {"type": "track", "userId": 42, "event": "Upgraded"},
    ]
    status, body = send(engine, "/v1/batch", {"batch": batch})
    assert (status, body["accepted"], body["rejected"]) == (200, 3, [])
    row = _customer(engine, "42")
    assert (row.plan, row.attributes, row.orders_count) == ("pro", {"a": 1, "b": 2}, 0)
    assert [(e.customer_id, e.name) for e in _events(engine)] == [("42", "Upgraded")]


def test_the_event_writer_counts_only_new_rows_and_rejects_unknown_customers(engine: Engine) -> None:
    from automation.ingest.writer import prepare_events_once, write_prepared_events

    _identify(engine, "u1")
    when = datetime(2026, 11, 20, 9, 30, 15, 250, tzinfo=UTC)

    def event(message_id: str | None, customer: str = "u1") -> dict[str, Any]:
        return {
            "customer_id": customer,
            "name": "E",
            "occurred_at": when,
            "properties": {"n": 1},
            "message_id": message_id,
        }

    rejected: list[tuple[int, str]] = []
    batches = [
        [(0, event("w-1")), (1, event("w-2")), (2, event("w-1")), (3, event("w-3", "ghost"))],
        [(0, event("w-2")), (1, event("w-4")), (2, event(None)), (3, event(None))],
    ]
    new = []
    for batch in batches:
        prepared = prepare_events_once(engine.dialect, batch)
        with engine.begin() as conn:
            new.append(write_prepared_events(conn, prepared, lambda i, r: rejected.append((i, r))))
    assert new == [2, 3]
    assert [index for index, _reason in rejected] == [3] and "unknown customer 'ghost'" in rejected[0][1]
    stored = _events(engine)
    assert [e.message_id for e in stored] == ["w-1", "w-2", "w-4", None, None]
    assert {(e.occurred_at, e.properties["n"]) for e in stored} == {(when, 1)}
