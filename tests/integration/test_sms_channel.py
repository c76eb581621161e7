"""The SMS channel against a local Twilio stand-in: real client, real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine

from automation.channels.base import Delivery, DeliveryResult
from automation.channels.http import make_client
from automation.channels.registry import build_channels
from automation.channels.sms import TwilioSms, status_callback_url
from automation.config import Settings
from automation.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from automation.messages.store import RenderedMessage
from tests.http_server import LocalServer, Reply, closed_port, fake_twilio, serve

SID = "AC0123456789abcdef"
TOKEN = "secret-token"
SENDER = "+14155550199"
PATH = f"/2010-04-01/Accounts/{SID}/Messages.json"


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with serve(dedupe_header="I-Twilio-Idempotency-Token") as srv:
        srv.route(PATH, fake_twilio())
        yield srv


def sms(
    key: str = "pb:c1:welcome:1", to: str | None = "+14155550100", body: str = "Hi Ann, welcome!"
) -> Delivery:
    rendered = RenderedMessage("sms", "welcome", body=body, encoding="GSM-7", segments=1)
    return Delivery(
        message_id=1, idempotency_key=key, channel="sms", customer_id="c1", rendered=rendered, to=to
    )


async def send(
    base_url: str, *deliveries: Delivery, timeout: float = 5.0, sender: str = SENDER
) -> list[DeliveryResult]:
    async with make_client(timeout=timeout) as client:
        channel = TwilioSms(client, base_url=base_url, account_sid=SID, auth_token=TOKEN, from_number=sender)
        return [await channel.send(d) for d in deliveries]


def send_error(base_url: str, delivery: Delivery, timeout: float = 5.0) -> BaseException:
    with pytest.raises((TransientDeliveryError, PermanentDeliveryError)) as info:
        asyncio.run(send(base_url, delivery, timeout=timeout))
    return info.value


def test_success_returns_the_sid_and_sends_form_auth_and_idempotency_token(server: LocalServer) -> None:
    [result] = asyncio.run(send(server.url + "/", sms()))  # a trailing slash on the base URL is fine

    [request] = server.requests
    assert request.method == "POST"
    assert request.path == PATH
    assert request.header("Content-Type") == "application/x-www-form-urlencoded"
    assert request.form() == {"To": "+14155550100", "From": SENDER, "Body": "Hi Ann, welcome!"}
    assert request.basic_auth() == (SID, TOKEN)
    assert request.header("I-Twilio-Idempotency-Token") == "pb:c1:welcome:1"
    assert result.provider_id == f"SM{1:032x}"  # the first sid fake_twilio hands out


def test_unicode_body_is_sent_intact(server: LocalServer) -> None:
    asyncio.run(send(server.url, sms(body="Grüße 🎉 & more=yes")))
    assert server.requests[0].form()["Body"] == "Grüße 🎉 & more=yes"


def test_a_repeated_delivery_carries_the_same_token_and_gets_the_same_sid(server: LocalServer) -> None:
    first, second = asyncio.run(send(server.url, sms(), sms()))
    other = asyncio.run(send(server.url, sms(key="pb:c1:welcome:2")))[0]

    assert first.provider_id == second.provider_id
    assert other.provider_id != first.provider_id
    assert len(server.requests) == 3
    assert server.unique_deliveries == 2


def test_messaging_service_sid_is_sent_as_messaging_service(server: LocalServer) -> None:
    asyncio.run(send(server.url, sms(), sender="MG9999"))
    form = server.requests[0].form()
    assert form["MessagingServiceSid"] == "MG9999"
    assert "From" not in form


def test_no_phone_number_is_permanent_and_sends_nothing(server: LocalServer) -> None:
    with pytest.raises(PermanentDeliveryError, match="no phone number"):
        asyncio.run(send(server.url, sms(to=None)))
    assert server.requests == []


def test_missing_settings_name_the_environment_variables() -> None:
    async def build() -> None:
        async with make_client() as client:
            TwilioSms(client, base_url="", account_sid=SID, auth_token="", from_number=SENDER)

    with pytest.raises(ConfigError, match="AUTOMATION_SMS_URL, AUTOMATION_SMS_AUTH_TOKEN"):
        asyncio.run(build())


def test_an_accepted_message_without_sid_is_still_a_success(server: LocalServer) -> None:
    server.route(PATH, Reply(201, body=b"queued"))
    [result] = asyncio.run(send(server.url, sms()))
    assert result.provider_id is None


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(500, None, None), (503, "12", 12.0), (429, "7", 7.0), (408, None, None)],
)
def test_transient_statuses(
    server: LocalServer, status: int, retry_after: str | None, expected: float | None
) -> None:
    server.fail_next(status=status, retry_after=retry_after)
    error = send_error(server.url, sms())
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == expected
    assert f"HTTP {status}" in str(error)


def test_rejected_number_is_permanent_with_status_and_masked_excerpt(server: LocalServer) -> None:
    body = b'{"code": 21211, "message": "The \'To\' number +14155550100 is not a valid phone number."}'
    server.fail_next(status=400, body=body)
    error = send_error(server.url, sms())
    assert isinstance(error, PermanentDeliveryError)
    assert "HTTP 400" in str(error)
    assert "21211" in str(error)
    assert "+14155550100" not in str(error)
    assert "+14*******00" in str(error)


def test_wrong_credentials_are_permanent(server: LocalServer) -> None:
    server.fail_next(status=401, body=b'{"code": 20003, "message": "Authenticate"}')
    error = send_error(server.url, sms())
    assert isinstance(error, PermanentDeliveryError)
    assert "HTTP 401" in str(error)


def test_a_hanging_provider_times_out_as_transient(server: LocalServer) -> None:
    server.hang_next(seconds=10)
    error = send_error(server.url, sms(), timeout=0.3)
    assert isinstance(error, TransientDeliveryError)
    assert "timed out" in str(error)


def test_a_dropped_connection_is_transient(server: LocalServer) -> None:
    server.drop_next()
    error = send_error(server.url, sms())
    assert isinstance(error, TransientDeliveryError)
    assert server.requests[0].outcome == "drop"


def test_connection_refused_is_transient() -> None:
    error = send_error(f"http://127.0.0.1:{closed_port()}", sms())
    assert isinstance(error, TransientDeliveryError)
    assert "+14155550100" not in str(error)


def test_retry_after_failure_sends_once_for_the_provider(server: LocalServer) -> None:
    server.fail_next(status=503)

    async def attempt_twice() -> DeliveryResult:
        async with make_client(timeout=5) as client:
            channel = TwilioSms(
                client, base_url=server.url, account_sid=SID, auth_token=TOKEN, from_number=SENDER
            )
            with pytest.raises(TransientDeliveryError):
                await channel.send(sms())
            return await channel.send(sms())

    result = asyncio.run(attempt_twice())
    assert [r.outcome for r in server.requests] == ["failed:503", "ok"]
    assert result.provider_id is not None and result.provider_id.startswith("SM")


def test_a_status_callback_is_sent_with_each_message_when_configured(server: LocalServer) -> None:
    async def send_with_callback() -> None:
        async with make_client(timeout=5) as client:
            channel = TwilioSms(
                client,
                base_url=server.url,
                account_sid=SID,
                auth_token=TOKEN,
                from_number=SENDER,
                status_callback=status_callback_url("https://sms.example.com/"),
            )
            await channel.send(sms())
            await channel.send(sms(key="pb:c1:welcome:2"))

    asyncio.run(send_with_callback())
    asyncio.run(send(server.url, sms(key="pb:c1:welcome:3")))  # no callback configured
    forms = [r.form() for r in server.requests]
    assert [f.get("StatusCallback") for f in forms] == [
        "https://sms.example.com/providers/twilio/status",
        "https://sms.example.com/providers/twilio/status",
        None,
    ]
    assert forms[0]["Body"] == "Hi Ann, welcome!"


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("https://sms.example.com", "https://sms.example.com/providers/twilio/status"),
        (None, None),
        ("  ", None),
    ],
)
def test_the_registry_asks_for_status_callbacks_only_with_a_public_url(
    public_url: str | None, expected: str | None
) -> None:
    env = {
        "AUTOMATION_SMS_URL": "http://127.0.0.1:9",
        "AUTOMATION_SMS_ACCOUNT_SID": SID,
        "AUTOMATION_SMS_AUTH_TOKEN": TOKEN,
        "AUTOMATION_SMS_FROM": SENDER,
        "AUTOMATION_WEBHOOKS": "folder",
    }
    if public_url is not None:
        env["AUTOMATION_PUBLIC_URL"] = public_url

    async def built_callback() -> str | None:
        engine = create_engine("sqlite://")
        built = build_channels(Settings(), engine, env)
        try:
            channel = built.channels["sms"]
            assert isinstance(channel, TwilioSms)
            return channel.status_callback
        finally:
            await built.aclose()
            engine.dispose()

    assert asyncio.run(built_callback()) == expected
