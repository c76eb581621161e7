"""The email providers' event webhooks over real HTTP on 127.0.0.1, on SQLite and PostgreSQL: SendGrid
(signatures made with a P-256 key generated here, exactly as SendGrid signs), Postmark (HTTP Basic)
and the generic JSON format (a bearer token); each report lands on the message, as an event and as
consent, once."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine, func, insert, select

from automation.config import Settings
from automation.db.tables import EVENT, FEEDBACK, OUTBOX, SUPPRESSION
from automation.errors import ConfigError
from automation.web.providers import BODY_MAX, ProviderWebhooks, routes
from tests.integration.known import NOW, T, customer

SIGNING = ec.generate_private_key(ec.SECP256R1())
PUBLIC_DER = base64.b64encode(
    SIGNING.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
).decode()
STAMP = str(int(NOW.timestamp()))
SG_PATH, PM_PATH, GENERIC_PATH = (
    "/providers/sendgrid/events",
    "/providers/postmark/events",
    "/providers/generic/events",
)
PM_USER, PM_PASSWORD, TOKEN = "postmark", "p@ss:word", "feedback-token-1"
PM_AUTH = {"Authorization": "Basic " + base64.b64encode(f"{PM_USER}:{PM_PASSWORD}".encode()).decode()}
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HOOKS = ProviderWebhooks.from_settings(
    Settings(
        sendgrid_webhook_public_key=PUBLIC_DER,
        postmark_webhook_user=PM_USER,
        postmark_webhook_password=PM_PASSWORD,
        feedback_token=TOKEN,
    )
)
AT = int((NOW - timedelta(minutes=3)).timestamp())  # when the events happened


def sign(body: bytes, stamp: str = STAMP, key: ec.EllipticCurvePrivateKey = SIGNING) -> dict[str, str]:
    """SendGrid's headers: ECDSA P-256 / SHA-256 over the timestamp followed by the raw body, base64 DER."""
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        "Content-Type": "application/json",
    }


async def _post(
    hooks: ProviderWebhooks, engine: Engine, path: str, raw: bytes, headers: dict[str, str]
) -> Any:
    app = web.Application()
    app.add_routes(routes(engine, hooks, lambda: NOW))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        data = io.BytesIO(raw) if len(raw) > 512 * 1024 else raw  # aiohttp warns of large bytes bodies
        response = await client.post(path, data=data, headers=headers)
        return response.status, await response.json(), response.headers


def post(
    engine: Engine,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    hooks: ProviderWebhooks = HOOKS,
) -> tuple[int, Any, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    if headers is None:
        headers = sign(data) if path == SG_PATH else PM_AUTH if path == PM_PATH else BEARER
    return asyncio.run(_post(hooks, engine, path, data, headers))


def sendgrid(engine: Engine, events: list[dict[str, Any]]) -> tuple[int, Any]:
    status, body, _headers = post(engine, SG_PATH, events)
    return status, body


def _message(engine: Engine, key: str, customer_id: str, provider_id: str | None = None) -> int:
    with engine.begin() as conn:
        if conn.execute(select(T["customer"].c.id).where(T["customer"].c.id == customer_id)).first() is None:
            conn.execute(insert(T["customer"]), [customer(customer_id)])
        return int(
            conn.execute(
                insert(OUTBOX)
                .values(
                    idempotency_key=key, playbook="lifecycle", customer_id=customer_id, channel="email",
                    template="welcome", stage="acquisition", step="0", payload={}, status="sent", due_at=NOW,
                    created_at=NOW, sent_at=NOW - timedelta(minutes=10), provider_id=provider_id,
                )
                .returning(OUTBOX.c.id)
            ).scalar_one()
        )  # fmt: skip


def _row(engine: Engine, outbox_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(OUTBOX).where(OUTBOX.c.id == outbox_id)).one()


def _events(engine: Engine) -> list[tuple[str, str, dict[str, Any]]]:
    with engine.connect() as conn:
        rows = conn.execute(select(EVENT).order_by(EVENT.c.id))
        return [(r.customer_id, r.name, r.properties) for r in rows]


def _suppressions(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {r.customer_id: r.reason for r in conn.execute(select(SUPPRESSION))}


def _feedback_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(FEEDBACK)).scalar_one())


def sg_event(name: str, key: str | None, event_id: str, **fields: Any) -> dict[str, Any]:
    event = {"event": name, "email": "ada@example.com", "timestamp": AT, "sg_event_id": event_id,
             "sg_message_id": "sgmsg1.filterdrecv-1.0", "smtp-id": "<nothing@ismtpd>"}  # fmt: skip
    if key is not None:
        event["automation_key"] = key
    return event | fields


# ------------------------------------------------------------------------------------------- SendGrid


def test_sendgrid_accepts_its_signature_and_refuses_anything_else(engine: Engine) -> None:
    outbox_id = _message(engine, "k-ada", "ada")
    raw = json.dumps([sg_event("delivered", "k-ada", "ev-1")]).encode()
    other = ec.generate_private_key(ec.SECP256R1())
    old = str(int(NOW.timestamp()) - 11 * 60)
    ahead = str(int(NOW.timestamp()) + 11 * 60)
    refused = {
        "altered body": (raw.replace(b"delivered", b"bounce"), sign(raw)),
        "altered timestamp": (
            raw,
            sign(raw) | {"X-Twilio-Email-Event-Webhook-Timestamp": str(int(STAMP) + 1)},
        ),
        "another key": (raw, sign(raw, key=other)),
        "older than the tolerance": (raw, sign(raw, stamp=old)),
        "too far ahead": (raw, sign(raw, stamp=ahead)),
        "no signature": (raw, {"X-Twilio-Email-Event-Webhook-Timestamp": STAMP}),
        "no timestamp": (raw, {k: v for k, v in sign(raw).items() if "Timestamp" not in k}),
        "not base64": (raw, sign(raw) | {"X-Twilio-Email-Event-Webhook-Signature": "%%%"}),
    }
    for case, (body, headers) in refused.items():
        status, answer, _ = post(engine, SG_PATH, raw=body, headers=headers)
        assert status == 403, case
        assert answer["error"].startswith("not signed by SendGrid"), case
    assert _feedback_count(engine) == 0 and _row(engine, outbox_id).delivered_at is None  # nothing changed
    status, answer, _ = post(engine, SG_PATH, raw=raw, headers=sign(raw))
    assert (status, answer["recorded"]) == (200, 1)
    assert _row(engine, outbox_id).delivered_at == NOW - timedelta(minutes=3)


def test_every_sendgrid_event_lands_on_its_message_and_a_bad_one_fails_alone(engine: Engine) -> None:
    ada, bob, cy, dee, _eve = (_message(engine, f"k-{c}", c) for c in ("ada", "bob", "cy", "dee", "eve"))
    events = [
        sg_event("processed", "k-ada", "e1"),
        sg_event("deferred", "k-ada", "e2", response="421 try again later", attempt="2"),
        sg_event("delivered", "k-ada", "e3", response="250 OK"),
        sg_event("open", "k-ada", "e4", sg_machine_open=True),
        sg_event("open", "k-ada", "e5", sg_machine_open=False),
        sg_event("click", "k-ada", "e6", url="https://shop.example/a?b=1"),
        {"email": "ada@example.com", "timestamp": AT},  # no event: refused alone
        sg_event("bounce", "k-bob", "e7", type="bounce", reason="550 5.1.1 no such user", status="5.1.1"),
        sg_event("dropped", "k-cy", "e8", reason="Invalid SMTPAPI header"),
        sg_event("spamreport", "k-dee", "e9"),
        sg_event("group_unsubscribe", "k-eve", "e10", asm_group_id=7),
        "not an event",
    ]
    status, answer = sendgrid(engine, events)
    assert status == 200
    assert answer == {
        "success": False, "accepted": 10, "recorded": 10, "duplicate": 0, "unmatched": 0,
        "rejected": [{"index": 6, "reason": "event: missing (required)"},
                     {"index": 11, "reason": "expected an event object"}],
    }  # fmt: skip
    row = _row(engine, ada)
    assert (row.opens, row.machine_opens, row.clicks) == (1, 1, 1)
    assert row.delivered_at == row.opened_at == row.clicked_at == NOW - timedelta(minutes=3)
    assert row.provider_status == "click" and row.status == "sent"
    assert _row(engine, bob).bounced_at is not None
    assert (_row(engine, cy).status, _row(engine, cy).last_error) == (
        "failed",
        "sendgrid: Invalid SMTPAPI header",
    )
    assert _row(engine, dee).complained_at is not None
    assert _suppressions(engine) == {"bob": "bounced", "dee": "complained", "eve": "unsubscribed"}
    names = [(c, n) for c, n, _p in _events(engine)]
    assert names == [
        ("ada", "email_delivered"),
        ("ada", "email_opened"),
        ("ada", "email_opened"),
        ("ada", "email_clicked"),
        ("bob", "email_bounced"),
        ("cy", "email_failed"),
        ("dee", "email_complained"),
        ("eve", "email_unsubscribed"),
    ]  # fmt: skip  (processed and deferred are a status only)
    props = {n: p for _c, n, p in _events(engine)}
    assert props["email_clicked"]["url"] == "https://shop.example/a?b=1"
    assert (
        props["email_bounced"]["type"] == "hard"
        and props["email_bounced"]["reason"] == "550 5.1.1 no such user"
    )
    assert (
        props["email_bounced"]["idempotency_key"] == "k-bob"
        and props["email_bounced"]["source"] == "sendgrid"
    )

    again = sendgrid(engine, events)  # SendGrid's retry of the same batch
    assert again[1]["duplicate"] == 10 and again[1]["recorded"] == 0
    assert (_row(engine, ada).opens, len(_events(engine))) == (1, 8)


def test_sendgrid_matches_by_key_then_message_id_then_address(engine: Engine) -> None:
    by_key = _message(engine, "k-1", "ada")
    by_smtp_id = _message(engine, "k-2", "bob", provider_id="<0123abcd@shop.example>")
    by_sg_id = _message(engine, "k-3", "cy", provider_id="sgapi42")
    by_address = _message(engine, "k-4", "dee")
    events = [
        sg_event("delivered", "k-1", "m1", email="someone@else.example"),
        sg_event(
            "delivered", None, "m2", **{"smtp-id": "<0123abcd@shop.example>", "email": "x@else.example"}
        ),
        sg_event("delivered", None, "m3", sg_message_id="sgapi42.filterdrecv-5.0", email="x@else.example"),
        sg_event("delivered", None, "m4", email="DEE@example.com"),
        sg_event("delivered", None, "m5", unique_args={"automation_key": "k-1"}, email="x@else.example"),
    ]
    status, answer = sendgrid(engine, events)
    assert (status, answer["recorded"], answer["unmatched"]) == (200, 5, 0)
    for outbox_id in (by_key, by_smtp_id, by_sg_id, by_address):
        assert _row(engine, outbox_id).delivered_at is not None
    with engine.connect() as conn:
        matched = conn.execute(select(FEEDBACK.c.outbox_id).order_by(FEEDBACK.c.id)).scalars().all()
    assert matched == [by_key, by_smtp_id, by_sg_id, by_address, by_key]


def test_three_blocked_bounces_suppress_and_deferrals_do_not_count(engine: Engine) -> None:
    _message(engine, "k-ada", "ada")
    blocked = [sg_event("bounce", "k-ada", f"b{i}", type="blocked", reason="554 blocked") for i in range(2)]
    deferred = [sg_event("deferred", "k-ada", f"d{i}", response="421 later") for i in range(3)]
    assert sendgrid(engine, blocked + deferred)[1]["recorded"] == 5
    assert _suppressions(engine) == {}  # two soft bounces and three deferrals: still sending
    assert [p["type"] for _c, n, p in _events(engine) if n == "email_bounced"] == ["soft", "soft"]
    sendgrid(engine, [sg_event("bounce", "k-ada", "b2", type="blocked")])
    assert _suppressions(engine) == {"ada": "bounced"}


def test_a_report_for_no_message_of_ours_is_answered_200_and_changes_nothing(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    outbox_id = _message(engine, "k-ada", "ada")
    caplog.set_level("INFO", "automation.feedback")
    status, answer = sendgrid(
        engine, [sg_event("bounce", "k-unknown", "u1", email="stranger@nowhere.example")]
    )
    assert (status, answer["unmatched"], answer["recorded"]) == (200, 1, 0)
    assert _events(engine) == [] and _suppressions(engine) == {}
    assert _row(engine, outbox_id).bounced_at is None
    assert "s***@nowhere.example" in caplog.text and "stranger@" not in caplog.text


def test_sendgrid_bodies_over_the_limit_or_not_json_are_refused(engine: Engine) -> None:
    big = b"[" + b" " * BODY_MAX + b"]"
    status, answer, _ = post(engine, SG_PATH, raw=big, headers=sign(big))
    assert (status, answer) == (413, {"error": "body: larger than 1024 KB"})
    for raw, reason in (
        (b"[{]", "body: not valid JSON"),
        (b'{"event": "open"}', "body: expected a JSON array"),
    ):
        status, answer, _ = post(engine, SG_PATH, raw=raw, headers=sign(raw))
        assert status == 400 and answer["error"].startswith(reason)
    assert _feedback_count(engine) == 0


def test_each_webhook_is_off_until_its_secret_is_configured(engine: Engine) -> None:
    off = ProviderWebhooks(postmark_user=PM_USER)  # a user without a password: never open to "user:"
    for path, variable in ((SG_PATH, "AUTOMATION_SENDGRID_WEBHOOK_PUBLIC_KEY"),
                           (PM_PATH, "AUTOMATION_POSTMARK_WEBHOOK_USER"),
                           (GENERIC_PATH, "AUTOMATION_FEEDBACK_TOKEN")):  # fmt: skip
        status, answer, _ = post(engine, path, [], hooks=off)
        assert (status, answer) == (
            404,
            {"error": f"not found: this webhook is off (no {variable} configured)"},
        )


def test_webhook_secrets_are_checked_at_start_up() -> None:
    pem = SIGNING.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    assert ProviderWebhooks.from_settings(Settings(sendgrid_webhook_public_key=pem)).sendgrid_key is not None
    rsa_like = base64.b64encode(b"not a key").decode()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    p384_der = base64.b64encode(p384.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()
    for value, problem in ((rsa_like, "base64 DER or PEM"), (p384_der, "P-256")):
        with pytest.raises(ConfigError, match=problem):
            ProviderWebhooks.from_settings(Settings(sendgrid_webhook_public_key=value))
    with pytest.raises(ConfigError, match="set both or neither"):
        ProviderWebhooks.from_settings(Settings(postmark_webhook_user="u"))
    env = {"AUTOMATION_FEEDBACK_TOKEN": " token-9 ", "AUTOMATION_POSTMARK_WEBHOOK_USER": "u",
           "AUTOMATION_POSTMARK_WEBHOOK_PASSWORD": "secret-8"}  # fmt: skip
    settings = Settings.from_env(env)
    hooks = ProviderWebhooks.from_settings(settings)
    assert hooks.served() == ["/providers/postmark/events", "/providers/generic/events"]
    assert (hooks.feedback_token, hooks.postmark_password) == ("token-9", "secret-8")
    for shown in (repr(hooks), repr(settings)):
        assert "token-9" not in shown and "secret-8" not in shown


# ------------------------------------------------------------------------------------------- Postmark


def pm(record_type: str, **fields: Any) -> dict[str, Any]:
    return {"RecordType": record_type, "MessageID": "pm-0", "Metadata": {"automation-key": "k-ada"}} | fields


def test_postmark_wants_its_basic_credentials(engine: Engine) -> None:
    _message(engine, "k-ada", "ada")
    body = pm("Delivery", Recipient="ada@example.com", DeliveredAt="2026-11-22T11:57:00Z")
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{PM_USER}:nope".encode()).decode()}
    for headers in ({}, wrong, {"Authorization": "Basic %%%"}, BEARER):
        status, answer, response_headers = post(engine, PM_PATH, body, headers=headers)
        assert status == 401 and "error" in answer
        assert response_headers["WWW-Authenticate"].startswith("Basic realm=")
    assert _feedback_count(engine) == 0
    status, answer, _ = post(engine, PM_PATH, body)
    assert (status, answer["recorded"]) == (200, 1)


def test_every_postmark_record_lands_on_its_message(engine: Engine) -> None:
    ada, bob, cy, dee = (
        _message(engine, f"k-{c}", c, provider_id=f"pm-{c}") for c in ("ada", "bob", "cy", "dee")
    )
    records = [
        pm("Delivery", Recipient="ada@example.com", DeliveredAt="2026-11-22T11:57:00Z"),
        pm("Open", Recipient="ada@example.com", ReceivedAt="2026-11-22T11:58:00.1234567Z", FirstOpen=True),
        pm("Click", Recipient="ada@example.com", ReceivedAt="2026-11-22T11:59:00Z",
           OriginalLink="https://shop.example/p"),
        pm("Bounce", ID=42, Type="HardBounce", TypeCode=1, MessageID="pm-bob", Metadata={},
           Email="bob@example.com", BouncedAt="2026-11-22T06:58:00-05:00", Details="smtp;550 5.1.1 unknown"),
        pm("SpamComplaint", ID=43, Type="SpamComplaint", Metadata={"automation-key": "k-cy"},
           Email="cy@example.com", BouncedAt="2026-11-22T11:58:00Z"),
        pm("SubscriptionChange", Metadata={"automation-key": "k-dee"}, Recipient="dee@example.com",
           ChangedAt="2026-11-22T11:58:00Z", SuppressSending=True, SuppressionReason="ManualSuppression"),
        pm("Bounce", ID=44, Type="AutoResponder", Metadata={"automation-key": "k-dee"},
           Email="dee@example.com"),
    ]  # fmt: skip
    for body in records:
        status, answer, _ = post(engine, PM_PATH, body)
        assert (status, answer["recorded"]) == (200, 1), body
    row = _row(engine, ada)
    assert row.delivered_at == NOW - timedelta(minutes=3)
    assert (row.opens, row.clicks, row.opened_at) == (
        1,
        1,
        NOW - timedelta(minutes=2) + timedelta(microseconds=123456),
    )
    bounced = _row(engine, bob)  # matched by MessageID: its Metadata is empty
    assert (bounced.bounced_at, bounced.provider_status) == (NOW - timedelta(minutes=2), "HardBounce")
    assert _row(engine, cy).complained_at is not None
    assert _row(engine, dee).provider_status == "AutoResponder"  # a status only
    assert _suppressions(engine) == {"bob": "bounced", "cy": "complained", "dee": "unsubscribed"}
    names = [(c, n) for c, n, _p in _events(engine)]
    assert names == [
        ("ada", "email_delivered"), ("ada", "email_opened"), ("ada", "email_clicked"),
        ("bob", "email_bounced"), ("cy", "email_complained"), ("dee", "email_unsubscribed"),
    ]  # fmt: skip
    assert _events(engine)[3][2]["reason"] == "smtp;550 5.1.1 unknown"
    for body in records:  # Postmark's retries
        assert post(engine, PM_PATH, body)[1]["duplicate"] == 1
    assert len(_events(engine)) == 6 and _row(engine, ada).opens == 1
    second_open = records[1] | {"ReceivedAt": "2026-11-22T11:59:30Z", "FirstOpen": False}
    assert post(engine, PM_PATH, second_open)[1]["recorded"] == 1 and _row(engine, ada).opens == 2


def test_postmark_soft_bounces_add_up_and_bad_bodies_are_400(engine: Engine) -> None:
    _message(engine, "k-ada", "ada")
    for i, kind in enumerate(("SoftBounce", "Transient", "DnsError")):
        body = pm("Bounce", ID=100 + i, Type=kind, Email="ada@example.com", BouncedAt="2026-11-22T11:00:00Z")
        post(engine, PM_PATH, body)
        assert _suppressions(engine) == ({"ada": "bounced"} if i == 2 else {})
    bad = [
        (b"{nope", "body: not valid JSON: "),
        (b"[]", "expected a JSON object with a RecordType"),
        (b'{"Type": "HardBounce"}', "RecordType: missing (required)"),
    ]
    for raw, reason in bad:
        status, answer, _ = post(engine, PM_PATH, raw=raw, headers=PM_AUTH)
        assert status == 400 and answer["error"].startswith(reason), answer
    status, answer, _ = post(engine, PM_PATH, raw=b"{" + b" " * BODY_MAX + b"}", headers=PM_AUTH)
    assert status == 413


# --------------------------------------------------------------------------------------- generic JSON


def test_generic_events_need_the_bearer_token(engine: Engine) -> None:
    body = {"events": []}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}, PM_AUTH):
        status, answer, response_headers = post(engine, GENERIC_PATH, body, headers=headers)
        assert answer["error"] in ("missing Authorization: Bearer <token>", "wrong token")
        assert status == 401 and response_headers["WWW-Authenticate"] == "Bearer"
    assert post(engine, GENERIC_PATH, body)[:2] == (
        200, {"success": True, "accepted": 0, "recorded": 0, "duplicate": 0, "unmatched": 0, "rejected": []},
    )  # fmt: skip


def test_generic_events_are_recorded_and_bad_ones_refused_by_index(engine: Engine) -> None:
    ada = _message(engine, "k-ada", "ada", provider_id="esp-9")
    bob = _message(engine, "k-bob", "bob")
    events: list[Any] = [
        {"type": "delivered", "id": "g1", "key": "k-ada", "occurred_at": "2026-11-22T11:57:00Z"},
        {"type": "opened", "id": "g2", "provider_id": "esp-9", "machine": True},
        {"type": "clicked", "id": "g3", "key": "k-ada", "url": "https://shop.example/x"},
        {"type": "exploded", "id": "g4", "key": "k-ada"},
        {"type": "bounced", "key": "k-ada"},
        {"type": "opened", "id": "g5"},
        {"type": "opened", "id": "g6", "key": "k-ada", "colour": "red"},
        {"type": "opened", "id": "g7", "key": "k-ada", "occurred_at": "yesterday"},
        7,
        {"type": "complained", "id": "g8", "email": "BOB@example.com", "reason": "abuse report"},
        {"type": "failed", "id": "g9", "key": "k-bob", "reason": "rejected by the provider"},
        {"type": "unsubscribed", "id": "g10", "key": "k-nobody", "email": "nobody@nowhere.example"},
    ]
    status, answer, _ = post(engine, GENERIC_PATH, {"events": events})
    assert status == 200
    assert (answer["accepted"], answer["recorded"], answer["unmatched"], answer["success"]) == (
        6,
        5,
        1,
        False,
    )
    types = "delivered, opened, clicked, bounced, soft_bounced, complained, unsubscribed, failed"
    fields = "type, id, key, provider_id, email, occurred_at, url, reason, status, machine"
    assert answer["rejected"] == [
        {"index": 3, "reason": f"type: 'exploded' is not one of {types}"},
        {"index": 4, "reason": "id: missing (required)"},
        {"index": 5, "reason": "key, provider_id, email: one of them is required to find the message"},
        {"index": 6, "reason": f"colour: unknown field (known: {fields})"},
        {
            "index": 7,
            "reason": "occurred_at: 'yesterday' is not an ISO 8601 timestamp (e.g. 2026-11-22T12:30:00Z)",
        },
        {"index": 8, "reason": "expected an event object, got a number"},
    ]
    row = _row(engine, ada)
    assert (row.delivered_at, row.machine_opens, row.opens, row.clicks) == (
        NOW - timedelta(minutes=3),
        1,
        0,
        1,
    )
    assert row.clicked_at == NOW  # no occurred_at: when it was received
    assert (_row(engine, bob).status, _row(engine, bob).complained_at) == ("failed", NOW)
    assert _suppressions(engine) == {"bob": "complained"}
    assert post(engine, GENERIC_PATH, {"events": events})[1]["duplicate"] == 6


def test_generic_soft_bounces_suppress_on_the_third_and_bad_requests_store_nothing(engine: Engine) -> None:
    outbox_id = _message(engine, "k-ada", "ada")
    for i in range(3):
        assert _suppressions(engine) == {}
        event = {
            "type": "soft_bounced",
            "id": f"s{i}",
            "key": "k-ada",
            "occurred_at": f"2026-11-2{i}T10:00:00Z",
        }
        assert post(engine, GENERIC_PATH, {"events": [event]})[1]["recorded"] == 1
    assert _suppressions(engine) == {"ada": "bounced"}
    for raw in (b"not json", b"[]", b'{"events": {}}'):
        status, answer, _ = post(engine, GENERIC_PATH, raw=raw, headers=BEARER)
        assert status == 400 and answer["error"].startswith("body: ")
    many = [{"type": "opened", "id": f"m{i}", "key": "k-ada"} for i in range(1001)]
    status, answer, _ = post(engine, GENERIC_PATH, {"events": many})
    assert (status, answer) == (413, {"error": "events: more than 1000 in one request"})
    assert _row(engine, outbox_id).opens == 0


# ------------------------------------------------------------------------------------------- serving


def test_the_serve_app_routes_the_webhooks_with_the_configured_secrets(engine: Engine) -> None:
    from automation.web.app import make_app

    async def run(hooks: ProviderWebhooks | None) -> tuple[int, int]:
        app = make_app(engine, "secret", clock=lambda: NOW, provider_webhooks=hooks)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            generic_answer = await client.post(GENERIC_PATH, json={"events": []}, headers=BEARER)
            sendgrid_answer = await client.post(SG_PATH, data=b"[]", headers=sign(b"[]"))
            return generic_answer.status, sendgrid_answer.status

    assert asyncio.run(run(HOOKS)) == (200, 200)
    assert asyncio.run(run(None)) == (404, 404)


def test_serve_refuses_to_start_with_a_key_that_does_not_load(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from automation.cli import main

    env = {"AUTOMATION_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}",
           "AUTOMATION_SENDGRID_WEBHOOK_PUBLIC_KEY": "bm90IGEga2V5"}  # fmt: skip
    result = CliRunner().invoke(main, ["serve", "--port", "0"], env=env)
    assert result.exit_code == 2
    assert (
        "AUTOMATION_SENDGRID_WEBHOOK_PUBLIC_KEY: not a public key in base64 DER or PEM form" in result.output
    )


def test_the_headers_we_send_are_what_finds_the_message_again(engine: Engine) -> None:
    """The round trip: SendGrid echoes the X-SMTPAPI unique arguments as fields of each event and the
    Message-ID as ``smtp-id``; Postmark echoes X-PM-Metadata-* as ``Metadata``."""
    import email
    import email.policy

    from automation.channels.base import Delivery
    from automation.channels.mime import build_email_bytes
    from automation.messages.store import RenderedMessage

    key = "lifecycle_2026-11-22_ada_welcome"
    rendered = RenderedMessage("email", "welcome", subject="Hi", text="Hi\n", html=None)
    delivery = Delivery(message_id=1, idempotency_key=key, channel="email", customer_id="ada",
                        rendered=rendered, to="ada@example.com")  # fmt: skip
    raw, _recipient, message_id = build_email_bytes(
        delivery, from_address="news@shop.example", domain="shop.example", now=NOW
    )
    sent = email.message_from_bytes(raw, policy=email.policy.default)
    outbox_id = _message(engine, key, "ada", provider_id=message_id)
    unique_args = json.loads(str(sent["X-SMTPAPI"]))["unique_args"]
    stranger = {"email": "someone@else.example"}
    events = [
        sg_event("open", None, "r1", **stranger) | unique_args,
        sg_event("click", None, "r2", url="https://shop.example/", **stranger)
        | {"smtp-id": sent["Message-ID"]},
    ]
    assert sendgrid(engine, events)[1]["recorded"] == 2
    metadata = {"automation-key": str(sent["X-PM-Metadata-automation-key"])}
    postmark_open = pm("Open", MessageID="pm-x", Metadata=metadata, Recipient="someone@else.example")
    assert post(engine, PM_PATH, postmark_open)[1]["recorded"] == 1
    row = _row(engine, outbox_id)
    assert (row.opens, row.clicks) == (2, 1)
