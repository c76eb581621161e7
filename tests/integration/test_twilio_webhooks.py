"""Twilio's SMS webhooks of ``automation serve`` over real HTTP on 127.0.0.1, on SQLite and PostgreSQL.

Requests are signed by the official ``twilio`` package's ``RequestValidator``, independent of our
check. The signed URL is the public one (``https://sms.example.com``), not where the test server
listens: the server must rebuild it from ``AUTOMATION_PUBLIC_URL``, never from the ``Host`` header.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine, func, insert, select
from twilio.request_validator import RequestValidator

from automation.db.tables import EVENT, FEEDBACK, OUTBOX, SUPPRESSION
from automation.web.app import make_app
from automation.web.twilio import BODY_MAX, EMPTY_TWIML, INBOUND_PATH, STATUS_PATH
from tests.http_server import fake_twilio, serve
from tests.integration import known
from tests.integration.known import T, customer
from tests.integration.test_delivery import dispatch, env_for, tick

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TOKEN = "twilio-auth-token-0123456789abcdef"
PUBLIC = "https://sms.example.com"
SID = "SM" + "a" * 32
ADA = "+14155550101"
KEY = "lifecycle_2026-11-22_ada_reminder"


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    content_type: str

    def json(self) -> Any:
        return json.loads(self.text)


def _sign(url: str, params: dict[str, str]) -> str:
    signed: str = RequestValidator(TOKEN).compute_signature(url, params)
    return signed


async def _post(
    engine: Engine,
    path: str,
    params: dict[str, str],
    *,
    token: str = TOKEN,
    signed_url: str | None = None,
    signed_params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Answer:
    app = make_app(engine, "secret", clock=lambda: NOW, twilio_auth_token=token, public_url=PUBLIC + "/")
    sign_for = signed_url if signed_url is not None else PUBLIC + path
    all_headers = {"X-Twilio-Signature": _sign(sign_for, signed_params or params)}
    all_headers.update(headers or {})
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        if raw is not None:
            all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
            response = await client.post(path, data=raw, headers=all_headers)
        else:
            response = await client.post(path, data=params, headers=all_headers)
        return Answer(response.status, await response.text(), response.content_type)


def post(engine: Engine, path: str, params: dict[str, str], **kwargs: Any) -> Answer:
    return asyncio.run(_post(engine, path, params, **kwargs))


def _setup(engine: Engine) -> int:
    with engine.begin() as conn:
        conn.execute(
            insert(T["customer"]), [customer("ada", phone=ADA), customer("bob", phone="+14155550102")]
        )
        return int(
            conn.execute(
                insert(OUTBOX)
                .values(
                    idempotency_key=KEY,
                    playbook="lifecycle",
                    customer_id="ada",
                    channel="sms",
                    template="reminder",
                    stage="conversion",
                    step="1",
                    payload={},
                    status="sent",
                    due_at=NOW,
                    created_at=NOW,
                    sent_at=NOW,
                    provider_id=SID,
                )
                .returning(OUTBOX.c.id)
            ).scalar_one()
        )


def _status(status: str, sid: str = SID, **more: str) -> dict[str, str]:
    params = {
        "AccountSid": "AC" + "0" * 32,
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": ADA,
        "From": "+14155550199",
        "ApiVersion": "2010-04-01",
    }
    return params | more


def _inbound(body: str, sender: str = ADA, sid: str = "SM" + "b" * 32, **more: str) -> dict[str, str]:
    params = {
        "AccountSid": "AC" + "0" * 32,
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "From": sender,
        "To": "+14155550199",
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
    }
    return params | more


def _message(engine: Engine, outbox_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(OUTBOX).where(OUTBOX.c.id == outbox_id)).one()


def _events(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(EVENT).order_by(EVENT.c.id)))


def _suppressions(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(SUPPRESSION).order_by(SUPPRESSION.c.customer_id))
        return [(r.customer_id, r.channel, r.reason) for r in rows]


def _feedback_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(FEEDBACK)).scalar_one())


def test_delivered_sets_the_message_delivered_once_and_appends_sms_delivered(engine: Engine) -> None:
    outbox_id = _setup(engine)
    first = post(engine, STATUS_PATH, _status("delivered"))
    again = post(engine, STATUS_PATH, _status("delivered"))  # Twilio sends the same callback again
    assert (first.status, first.text) == (200, "")
    assert (again.status, again.text) == (200, "")
    message = _message(engine, outbox_id)
    assert (message.delivered_at, message.provider_status, message.status) == (NOW, "delivered", "sent")
    events = _events(engine)
    assert [(e.customer_id, e.name) for e in events] == [("ada", "sms_delivered")]
    assert events[0].properties["source"] == "twilio"
    assert events[0].properties["idempotency_key"] == KEY
    assert _feedback_count(engine) == 1


@pytest.mark.parametrize("status", ["undelivered", "failed"])
def test_undelivered_and_failed_fail_the_message_with_the_error_code(engine: Engine, status: str) -> None:
    outbox_id = _setup(engine)
    assert post(engine, STATUS_PATH, _status(status, ErrorCode="30003")).status == 200
    message = _message(engine, outbox_id)
    assert (message.status, message.last_error, message.provider_status) == (
        "failed",
        "twilio: 30003",
        status,
    )
    assert message.delivered_at is None
    [event] = _events(engine)
    assert event.name == "sms_failed"
    assert (event.properties["reason"], event.properties["status"]) == ("30003", status)


def test_other_statuses_update_the_provider_status_only(engine: Engine) -> None:
    outbox_id = _setup(engine)
    for status in ("queued", "sending", "sent"):
        assert post(engine, STATUS_PATH, _status(status)).status == 200
        assert _message(engine, outbox_id).provider_status == status
    message = _message(engine, outbox_id)
    assert (message.status, message.delivered_at) == ("sent", None)
    assert _events(engine) == []
    assert _feedback_count(engine) == 3  # each status once


def test_a_status_for_an_unknown_message_sid_is_answered_200_and_changes_nothing(engine: Engine) -> None:
    outbox_id = _setup(engine)
    before = _message(engine, outbox_id)
    answer = post(engine, STATUS_PATH, _status("failed", sid="SM" + "f" * 32, ErrorCode="30005"))
    assert (answer.status, answer.text) == (200, "")
    # matched by MessageSid only: the same number's sent message is left alone
    assert _message(engine, outbox_id) == before
    assert _events(engine) == [] and _suppressions(engine) == []


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda p: {"headers": {"X-Twilio-Signature": ""}}, id="missing"),
        pytest.param(lambda p: {"headers": {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}}, id="forged"),
        pytest.param(lambda p: {"signed_params": p | {"MessageStatus": "sent"}}, id="altered-param"),
        pytest.param(
            lambda p: {"signed_params": {k: v for k, v in p.items() if k != "To"}}, id="dropped-param"
        ),
        pytest.param(lambda p: {"signed_url": "http://127.0.0.1" + STATUS_PATH}, id="host-url"),
        pytest.param(lambda p: {"signed_url": PUBLIC + INBOUND_PATH}, id="other-path"),
        pytest.param(lambda p: {"token": "another-account-token"}, id="wrong-token"),
    ],
)
def test_a_bad_signature_is_refused_with_403_and_stores_nothing(engine: Engine, tamper: Any) -> None:
    outbox_id = _setup(engine)
    before = _message(engine, outbox_id)
    params = _status("undelivered", ErrorCode="30003")
    answer = post(engine, STATUS_PATH, params, **tamper(params))
    assert answer.status == 403
    assert "X-Twilio-Signature" in answer.json()["error"]
    assert _message(engine, outbox_id) == before
    assert _events(engine) == [] and _feedback_count(engine) == 0


def test_a_forged_inbound_stop_suppresses_nothing(engine: Engine) -> None:
    _setup(engine)
    answer = post(engine, INBOUND_PATH, _inbound("STOP"), signed_params=_inbound("HELP"))
    assert answer.status == 403
    assert _suppressions(engine) == [] and _events(engine) == [] and _feedback_count(engine) == 0


@pytest.mark.parametrize(
    "signed", [PUBLIC + ":443" + STATUS_PATH + "?account=main", PUBLIC + STATUS_PATH + "?account=main"]
)
def test_the_signed_url_includes_the_query_string_with_or_without_the_default_port(
    engine: Engine, signed: str
) -> None:
    outbox_id = _setup(engine)
    path = STATUS_PATH + "?account=main"
    assert post(engine, path, _status("delivered"), signed_url=signed).status == 200
    assert _message(engine, outbox_id).delivered_at == NOW
    unsigned_query = post(engine, path, _status("read"), signed_url=PUBLIC + STATUS_PATH)
    assert unsigned_query.status == 403


def test_a_webhooks_rule_signature_is_refused(engine: Engine) -> None:
    _setup(engine)
    settings = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"}
    answer = post(engine, STATUS_PATH, _status("delivered"), headers=settings)
    assert answer.status == 403 and "shared key" in answer.json()["error"]
    assert _feedback_count(engine) == 0


def test_inbound_stop_start_and_help(engine: Engine) -> None:
    _setup(engine)
    stop = post(engine, INBOUND_PATH, _inbound(" Stop ", sid="SM1"))
    assert (stop.status, stop.content_type, stop.text) == (200, "text/xml", EMPTY_TWIML)
    assert stop.text.endswith("<Response/>")
    assert _suppressions(engine) == [("ada", "sms", "unsubscribed")]
    assert post(engine, INBOUND_PATH, _inbound(" Stop ", sid="SM1")).status == 200  # a retry: once
    assert post(engine, INBOUND_PATH, _inbound("HELP", sid="SM2")).status == 200
    assert _suppressions(engine) == [("ada", "sms", "unsubscribed")]
    assert post(engine, INBOUND_PATH, _inbound("start", sid="SM3")).status == 200
    assert _suppressions(engine) == []
    replies = [e for e in _events(engine) if e.name == "sms_replied"]
    assert [(e.customer_id, e.properties["keyword"], e.properties["body"]) for e in replies] == [
        ("ada", "stop", " Stop "),
        ("ada", "help", "HELP"),
        ("ada", "start", "start"),
    ]
    assert replies[0].properties["idempotency_key"] == KEY  # the newest SMS sent to her
    assert _feedback_count(engine) == 3


def test_an_ordinary_reply_is_recorded_without_changing_consent(engine: Engine) -> None:
    _setup(engine)
    assert post(engine, INBOUND_PATH, _inbound("See you at 5, thanks!")).status == 200
    [event] = _events(engine)
    assert (event.name, event.properties["body"]) == ("sms_replied", "See you at 5, thanks!")
    assert "keyword" not in event.properties
    assert _suppressions(engine) == []


def test_opt_out_type_wins_over_the_word_in_the_body(engine: Engine) -> None:
    _setup(engine)
    post(engine, INBOUND_PATH, _inbound("Arrêt", sid="SM1", OptOutType="STOP"))  # a custom keyword
    assert _suppressions(engine) == [("ada", "sms", "unsubscribed")]
    post(engine, INBOUND_PATH, _inbound("Oui", sid="SM2", OptOutType="START"))
    assert _suppressions(engine) == []
    post(engine, INBOUND_PATH, _inbound("stop", sid="SM3", OptOutType="HELP"))  # Twilio said: help
    assert _suppressions(engine) == []
    replies = [(e.properties["keyword"], e.properties["body"]) for e in _events(engine)]
    assert replies == [("stop", "Arrêt"), ("start", "Oui"), ("help", "stop")]


def test_an_inbound_message_from_an_unknown_number_changes_nothing(engine: Engine) -> None:
    _setup(engine)
    answer = post(engine, INBOUND_PATH, _inbound("STOP", sender="+14155550999"))
    assert (answer.status, answer.text) == (200, EMPTY_TWIML)
    assert _suppressions(engine) == [] and _events(engine) == []


@pytest.mark.parametrize("path", [STATUS_PATH, INBOUND_PATH])
def test_without_an_auth_token_the_webhooks_are_off(engine: Engine, path: str) -> None:
    _setup(engine)
    params = _status("delivered") if path == STATUS_PATH else _inbound("STOP")
    answer = post(engine, path, params, token="")
    assert answer.status == 404
    assert "AUTOMATION_SMS_AUTH_TOKEN" in answer.json()["error"]
    assert _feedback_count(engine) == 0 and _suppressions(engine) == []


def test_a_body_over_the_limit_is_refused_with_413(engine: Engine) -> None:
    _setup(engine)
    raw = b"Body=" + b"x" * BODY_MAX
    answer = post(engine, INBOUND_PATH, {}, raw=raw)
    assert answer.status == 413
    assert _feedback_count(engine) == 0


def test_a_signed_callback_without_message_sid_is_a_bad_request(engine: Engine) -> None:
    _setup(engine)
    params = {k: v for k, v in _status("delivered").items() if k != "MessageSid"}
    answer = post(engine, STATUS_PATH, params)
    assert answer.status == 400 and answer.json()["error"] == "MessageSid: missing"
    assert _feedback_count(engine) == 0


def test_a_message_sent_through_the_sms_channel_is_reported_delivered(data: Engine, tmp_path: Path) -> None:
    """The worker sends with ``StatusCallback``; the callback names the SID Twilio answered with."""
    with serve() as server:
        server.route("/2010-04-01/Accounts/AC123/Messages.json", fake_twilio())
        env = env_for(server.url, tmp_path) | {"AUTOMATION_PUBLIC_URL": PUBLIC}
        later = known.NOW + timedelta(days=14, hours=1)
        tick(data, known.NOW)
        dispatch(data, env, known.NOW)
        tick(data, later)  # regular's retention program: the NPS survey by SMS
        dispatch(data, env, later)
        [sent] = [r for r in server.requests if r.path.endswith("Messages.json")]
    assert sent.form()["StatusCallback"] == PUBLIC + STATUS_PATH
    sid = _sid_of(data)  # what the channel stored from Twilio's answer
    params = _status("delivered", sid=sid, To=sent.form()["To"])
    assert post(data, STATUS_PATH, params, signed_url=sent.form()["StatusCallback"]).status == 200
    with data.connect() as conn:
        row = conn.execute(select(OUTBOX).where(OUTBOX.c.channel == "sms")).one()
        names = conn.execute(select(EVENT.c.name).where(EVENT.c.customer_id == row.customer_id)).scalars()
        assert "sms_delivered" in list(names)
    assert (row.status, row.provider_status, row.delivered_at is not None) == ("sent", "delivered", True)


def _sid_of(engine: Engine) -> str:
    with engine.connect() as conn:
        sid = conn.execute(select(OUTBOX.c.provider_id).where(OUTBOX.c.channel == "sms")).scalar_one()
    assert isinstance(sid, str) and sid.startswith("SM")
    return sid
