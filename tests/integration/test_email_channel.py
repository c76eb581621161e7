"""SmtpChannel against a real SMTP server (aiosmtpd on 127.0.0.1): content, pooling, error mapping, TLS."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from automation.channels.base import Delivery, DeliveryResult
from automation.channels.email import SmtpChannel, SmtpSettings
from automation.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from automation.messages.store import RenderedMessage
from tests.smtp_server import SmtpTestServer, make_certificate, server_ssl_context

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
FROM = "Café Größe <news@shop.example>"
UNSUBSCRIBE = "https://shop.example/unsubscribe/" + "Y3VzdC0wMDAxMjMfZW1haWw." + "a" * 120


def delivery(
    key: str = "welcome:intro:cust-1",
    *,
    to: str | None = "Jane Dœ <jane@example.com>",
    subject: str = "Willkommen, Jörg — 10 % Rabatt 🎉",
    unsubscribe_url: str | None = UNSUBSCRIBE,
    html: str | None = "<p>Hallo <b>Jörg</b>, schön dass du da bist.</p>",
) -> Delivery:
    rendered = RenderedMessage(
        "email",
        "welcome",
        subject=subject,
        text="Hallo Jörg,\nschön dass du da bist.\n",
        html=html,
    )
    return Delivery(
        message_id=1,
        idempotency_key=key,
        channel="email",
        customer_id="cust-1",
        rendered=rendered,
        to=to,
        unsubscribe_url=unsubscribe_url,
        metadata={"playbook": "welcome"},
    )


def expected_id(key: str) -> str:
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@shop.example>"


def channel(url: str, **kwargs: Any) -> SmtpChannel:
    return SmtpChannel(SmtpSettings.from_url(url), from_address=FROM, clock=lambda: NOW, **kwargs)


def send_all(ch: SmtpChannel, *deliveries: Delivery) -> list[DeliveryResult]:
    async def run() -> list[DeliveryResult]:
        try:
            return [await ch.send(d) for d in deliveries]
        finally:
            await ch.aclose()

    return asyncio.run(run())


def send_one_expecting(ch: SmtpChannel, d: Delivery) -> BaseException:
    async def run() -> BaseException:
        try:
            await ch.send(d)
        except Exception as exc:
            return exc
        finally:
            await ch.aclose()
        raise AssertionError("send() did not raise")

    return asyncio.run(run())


@pytest.fixture
def smtp() -> Iterator[SmtpTestServer]:
    with SmtpTestServer() as server:
        yield server


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


# ------------------------------------------------------------------------------------------ content


def test_marketing_mail_arrives_with_both_parts_and_all_headers(smtp: SmtpTestServer) -> None:
    [result] = send_all(channel(smtp.url), delivery())

    [received] = smtp.messages
    assert received.mail_from == "news@shop.example"
    assert received.rcpt_tos == ["jane@example.com"]
    mail = received.message
    assert mail["Subject"] == "Willkommen, Jörg — 10 % Rabatt 🎉"
    assert mail["From"].addresses[0].display_name == "Café Größe"
    assert mail["From"].addresses[0].addr_spec == "news@shop.example"
    assert mail["To"].addresses[0].display_name == "Jane Dœ"
    assert mail["To"].addresses[0].addr_spec == "jane@example.com"
    assert parsedate_to_datetime(mail["Date"]) == NOW
    assert mail["Message-ID"] == expected_id("welcome:intro:cust-1") == result.provider_id
    assert mail["X-Automation-Key"] == "welcome:intro:cust-1"
    assert mail["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    assert mail.get_content_type() == "multipart/alternative"
    parts = list(mail.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert isinstance(parts[0], EmailMessage) and isinstance(parts[1], EmailMessage)
    assert parts[0].get_content().replace("\r\n", "\n") == "Hallo Jörg,\nschön dass du da bist.\n"
    assert parts[1].get_content().strip() == "<p>Hallo <b>Jörg</b>, schön dass du da bist.</p>"

    raw = received.raw
    assert raw.isascii()  # 7-bit clean: the non-ASCII subject, names and bodies are encoded
    # The long unsubscribe URL is one unencoded line (clients do not decode RFC 2047 words in it).
    assert f"List-Unsubscribe: <{UNSUBSCRIBE}>\r\n".encode() in raw


def test_a_subject_that_looks_like_encoded_words_arrives_as_typed(smtp: SmtpTestServer) -> None:
    typed = "Hallo =?utf-8?q?=41dmin?=, your =?UTF-8?B?QWNjb3VudA==?= — 10 % off"
    ch = channel(smtp.url)
    built = ch.build(delivery(subject=typed))  # the message the file outbox writes, from the same data
    send_all(ch, delivery(subject=typed))

    [received] = smtp.messages
    assert received.message["Subject"] == typed
    assert built["Subject"] == typed
    assert received.raw.isascii()
    assert b"=?utf-8?q?=41dmin?=" not in received.raw


def test_mail_without_unsubscribe_url_has_no_list_headers(smtp: SmtpTestServer) -> None:
    send_all(channel(smtp.url), delivery(unsubscribe_url=None, html=None, subject="Your order"))

    mail = smtp.messages[0].message
    assert "List-Unsubscribe" not in mail
    assert "List-Unsubscribe-Post" not in mail
    assert mail["Subject"] == "Your order"
    assert mail.get_content_type() == "text/plain"  # text only: a single part


def test_one_click_header_needs_an_https_link(smtp: SmtpTestServer) -> None:
    send_all(channel(smtp.url), delivery(unsubscribe_url="http://127.0.0.1:8080/unsubscribe/abc"))

    mail = smtp.messages[0].message
    assert mail["List-Unsubscribe"] == "<http://127.0.0.1:8080/unsubscribe/abc>"
    assert "List-Unsubscribe-Post" not in mail  # RFC 8058 one-click requires an HTTPS URI


def test_message_id_is_the_same_for_a_resend_and_differs_between_messages(smtp: SmtpTestServer) -> None:
    later = SmtpChannel(
        SmtpSettings.from_url(smtp.url), from_address=FROM, clock=lambda: datetime(2030, 1, 1, tzinfo=UTC)
    )
    first = send_all(channel(smtp.url), delivery("k-1"), delivery("k-2"))
    again = send_all(later, delivery("k-1"))

    ids = [m.message["Message-ID"] for m in smtp.messages]
    assert ids == [expected_id("k-1"), expected_id("k-2"), expected_id("k-1")]
    assert [r.provider_id for r in first + again] == ids
    assert smtp.messages[0].message["Date"] != smtp.messages[2].message["Date"]


def test_domain_for_message_id_can_be_given(smtp: SmtpTestServer) -> None:
    [result] = send_all(channel(smtp.url, domain="mail.shop.example"), delivery("k"))

    assert result.provider_id == smtp.messages[0].message["Message-ID"]
    assert str(result.provider_id).endswith("@mail.shop.example>")


def test_delivery_without_address_is_permanent_and_sends_nothing(smtp: SmtpTestServer) -> None:
    for to in (None, "", "not an address"):
        exc = send_one_expecting(channel(smtp.url), delivery(to=to))
        assert isinstance(exc, PermanentDeliveryError)
        if not to:
            assert str(exc) == "no email address"
    assert smtp.messages == []
    assert smtp.sessions == 0


# ------------------------------------------------------------------------------------------ pooling


def test_twenty_messages_over_a_pool_of_two_use_two_sessions(smtp: SmtpTestServer) -> None:
    ch = channel(f"{smtp.url}?pool=2")

    async def run() -> list[DeliveryResult]:
        try:
            return await asyncio.gather(*(ch.send(delivery(f"k-{i}")) for i in range(20)))
        finally:
            await ch.aclose()

    results = asyncio.run(run())

    assert len(smtp.messages) == 20
    assert {m.message["X-Automation-Key"] for m in smtp.messages} == {f"k-{i}" for i in range(20)}
    assert [r.provider_id for r in results] == [expected_id(f"k-{i}") for i in range(20)]
    assert smtp.sessions == 2
    assert smtp.peak_connections == 2
    assert ch.connections_opened == 2
    assert {m.session for m in smtp.messages} == {1, 2}


def test_sequential_messages_reuse_one_connection(smtp: SmtpTestServer) -> None:
    send_all(channel(f"{smtp.url}?pool=3"), *(delivery(f"k-{i}") for i in range(5)))

    assert len(smtp.messages) == 5
    assert smtp.sessions == 1


def test_aclose_quits_the_pooled_connections(smtp: SmtpTestServer) -> None:
    ch = channel(f"{smtp.url}?pool=2")

    async def run() -> int:
        await asyncio.gather(ch.send(delivery("a")), ch.send(delivery("b")))
        open_before = smtp.handler.open_connections
        await ch.aclose()
        return open_before

    assert asyncio.run(run()) == 2
    assert wait_for(lambda: smtp.handler.open_connections == 0)


def test_a_connection_the_server_closed_while_idle_is_replaced(
    smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    ch = channel(smtp.url)
    caplog.set_level(logging.DEBUG, logger="automation.channels.email")

    async def run() -> None:
        try:
            await ch.send(delivery("before"))
            # Blocks this event loop, so the client has not yet noticed the close when it sends.
            assert smtp.drop_connections() == 1
            await ch.send(delivery("after"))
        finally:
            await ch.aclose()

    asyncio.run(run())

    assert [m.message["X-Automation-Key"] for m in smtp.messages] == ["before", "after"]
    assert [m.session for m in smtp.messages] == [1, 2]
    assert ch.connections_opened == 2
    assert "reconnecting" in caplog.text  # the send on the dead connection failed and was retried once


# ----------------------------------------------------------------------------------- error mapping


def test_451_is_transient_and_the_connection_stays_usable(smtp: SmtpTestServer) -> None:
    ch = channel(smtp.url)
    smtp.fail_next(451, stage="data")

    async def run() -> BaseException | None:
        try:
            try:
                await ch.send(delivery("first"))
            except TransientDeliveryError as exc:
                error: BaseException | None = exc
            else:
                error = None
            await ch.send(delivery("second"))
            return error
        finally:
            await ch.aclose()

    error = asyncio.run(run())

    assert isinstance(error, TransientDeliveryError)
    assert "451" in str(error)
    assert [m.message["X-Automation-Key"] for m in smtp.messages] == ["second"]
    assert smtp.sessions == 1


@pytest.mark.parametrize(("code", "stage"), [(450, "rcpt"), (452, "rcpt"), (421, "mail"), (451, "mail")])
def test_4xx_replies_are_transient(smtp: SmtpTestServer, code: int, stage: str) -> None:
    smtp.fail_next(code, stage=stage)

    exc = send_one_expecting(channel(smtp.url), delivery())

    assert type(exc) is TransientDeliveryError
    assert str(code) in str(exc)


@pytest.mark.parametrize(("code", "stage"), [(550, "rcpt"), (553, "rcpt"), (554, "data"), (553, "mail")])
def test_5xx_replies_are_permanent(smtp: SmtpTestServer, code: int, stage: str) -> None:
    smtp.fail_next(code, stage=stage)

    exc = send_one_expecting(channel(smtp.url), delivery())

    assert type(exc) is PermanentDeliveryError
    assert str(code) in str(exc)
    assert smtp.messages == []


def test_refused_recipient_is_masked_and_the_connection_is_reused(smtp: SmtpTestServer) -> None:
    ch = channel(smtp.url)
    smtp.fail_next(550, stage="rcpt", text="5.1.1 <jane.doe@example.com>: Recipient address rejected")

    async def run() -> BaseException:
        try:
            try:
                await ch.send(delivery("refused"))
            except PermanentDeliveryError as exc:
                error = exc
            else:
                raise AssertionError("the refused recipient did not raise")
            await ch.send(delivery("next"))
            return error
        finally:
            await ch.aclose()

    error = asyncio.run(run())

    assert "jane.doe@example.com" not in str(error)
    assert "j***@example.com" in str(error)
    assert [m.message["X-Automation-Key"] for m in smtp.messages] == ["next"]
    assert smtp.sessions == 1


def test_421_closes_the_connection_and_the_next_message_opens_a_new_one(smtp: SmtpTestServer) -> None:
    ch = channel(smtp.url)
    smtp.fail_next(421, stage="data", text="4.3.2 shutting down")

    async def run() -> None:
        try:
            with pytest.raises(TransientDeliveryError):
                await ch.send(delivery("a"))
            await ch.send(delivery("b"))
        finally:
            await ch.aclose()

    asyncio.run(run())

    assert ch.connections_opened == 2
    assert [m.session for m in smtp.messages] == [2]


def test_server_stopped_is_transient() -> None:
    server = SmtpTestServer().start()
    url = server.url
    server.stop()

    exc = send_one_expecting(channel(url + "?timeout=5"), delivery())

    assert type(exc) is TransientDeliveryError
    assert "127.0.0.1" in str(exc)


def test_server_gone_after_a_message_is_transient() -> None:
    server = SmtpTestServer().start()
    ch = channel(server.url)

    async def run() -> BaseException:
        try:
            await ch.send(delivery("ok"))
            server.stop()
            with pytest.raises(TransientDeliveryError) as info:
                await ch.send(delivery("lost"))
            return info.value
        finally:
            await ch.aclose()

    try:
        asyncio.run(run())
    finally:
        server.stop()
    assert [m.message["X-Automation-Key"] for m in server.messages] == ["ok"]


def test_connection_dropped_during_a_message_is_transient(smtp: SmtpTestServer) -> None:
    smtp.drop_next(stage="data")

    exc = send_one_expecting(channel(smtp.url), delivery())

    assert type(exc) is TransientDeliveryError
    assert smtp.messages == []


def test_a_slow_server_times_out_as_transient(smtp: SmtpTestServer) -> None:
    smtp.stall_next(3.0)

    started = time.monotonic()
    exc = send_one_expecting(channel(f"{smtp.url}?timeout=0.5"), delivery())

    assert type(exc) is TransientDeliveryError
    assert "tim" in str(exc).lower()
    assert time.monotonic() - started < 2.5


# ---------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = make_certificate(tmp_path_factory.mktemp("tls"))
    if made is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set and the openssl command is missing: install Debian's openssl package")
        pytest.skip("the openssl command is needed to make a test certificate")
    return made


def test_starttls_with_login(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    context = server_ssl_context(cert, key)
    with SmtpTestServer(
        tls_context=context, require_starttls=True, credentials=("mailer", "s3cret")
    ) as server:
        url = f"smtp://mailer:s3cret@127.0.0.1:{server.port}?starttls=true&cafile={cert}"
        [result] = send_all(channel(url), delivery("tls-1"))

        [received] = server.messages
        assert received.tls
        assert received.login == "mailer"
        assert received.message["Message-ID"] == result.provider_id


def test_login_refused_is_transient(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    context = server_ssl_context(cert, key)
    with SmtpTestServer(tls_context=context, require_starttls=True, credentials=("user", "right")) as server:
        base = f"127.0.0.1:{server.port}?starttls=true&cafile={cert}"
        exc = send_one_expecting(channel(f"smtp://user:wrong@{base}"), delivery())
        good = send_all(channel(f"smtp://user:right@{base}"), delivery("after-login"))

        assert type(exc) is TransientDeliveryError
        assert "login" in str(exc)
        assert "wrong" not in str(exc)
        assert good[0].provider_id == expected_id("after-login")
        assert [m.login for m in server.messages] == ["user"]


def test_starttls_refuses_an_untrusted_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with SmtpTestServer(tls_context=server_ssl_context(cert, key), require_starttls=True) as server:
        exc = send_one_expecting(channel(f"smtp://127.0.0.1:{server.port}?starttls=true"), delivery())

        assert type(exc) is TransientDeliveryError
        assert "certificate" in str(exc).lower()
        assert server.messages == []


def test_plain_connection_to_a_server_that_requires_starttls_is_transient(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    with SmtpTestServer(tls_context=server_ssl_context(cert, key), require_starttls=True) as server:
        exc = send_one_expecting(channel(server.url), delivery())

        assert type(exc) is TransientDeliveryError
        assert "530" in str(exc)


def test_implicit_tls(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with SmtpTestServer(ssl_context=server_ssl_context(cert, key)) as server:
        assert server.url.startswith("smtps://")
        send_all(channel(f"{server.url}?cafile={cert}"), delivery("smtps-1"))

        [received] = server.messages
        assert received.tls
        assert received.message["X-Automation-Key"] == "smtps-1"


# ----------------------------------------------------------------------------------------- settings


def test_settings_from_urls() -> None:
    starttls = SmtpSettings.from_url("smtp://user:p%40ss@smtp.example.com:587?starttls=true")
    assert (starttls.host, starttls.port, starttls.security) == ("smtp.example.com", 587, "starttls")
    assert (starttls.username, starttls.password) == ("user", "p@ss")
    assert "p@ss" not in repr(starttls)

    implicit = SmtpSettings.from_url("smtps://user:pw@smtp.example.com")
    assert (implicit.port, implicit.security) == (465, "tls")

    plain = SmtpSettings.from_url("smtp://127.0.0.1:1025")
    assert (plain.host, plain.port, plain.security, plain.username) == ("127.0.0.1", 1025, "plain", None)
    assert (plain.timeout, plain.pool, plain.from_address) == (30.0, 2, None)

    assert SmtpSettings.from_url("smtp://relay.internal").port == 25
    assert SmtpSettings.from_url("smtp://relay.internal?starttls=yes").port == 587

    tuned = SmtpSettings.from_url(
        "smtp://127.0.0.1:2525?from=Shop%20%3Cnews%40shop.example%3E&timeout=2.5&pool=4&cafile=/etc/ca.pem"
    )
    assert tuned.from_address == "Shop <news@shop.example>"
    assert (tuned.timeout, tuned.pool, str(tuned.cafile)) == (2.5, 4, "/etc/ca.pem")

    explicit_plain = SmtpSettings.from_url("smtp://user:pw@relay.internal?starttls=false")
    assert explicit_plain.security == "plain"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://smtp.example.com", "scheme"),
        ("smtp.example.com:587", "scheme"),
        ("smtp://", "no host"),
        ("smtp://:587", "no host"),
        ("smtp://host:notaport", "port"),
        ("smtp://host:99999", "port"),
        ("smtp://host?starttls=maybe", "starttls"),
        ("smtp://host?stattls=true", "unknown parameter"),
        ("smtp://host?pool=0", "pool"),
        ("smtp://host?pool=two", "pool"),
        ("smtp://host?timeout=-1", "timeout"),
        ("smtp://host?timeout=soon", "timeout"),
        ("smtp://host?from=nobody", "from"),
        ("smtps://host?starttls=true", "smtps"),
        ("smtp://host/path", "path"),
        ("smtp://user:topsecret@smtp.example.com", "unencrypted"),
    ],
)
def test_bad_urls_raise_config_error(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        SmtpSettings.from_url(url)
    assert words in str(info.value)
    assert "topsecret" not in str(info.value)


def test_password_is_not_shown_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        SmtpSettings.from_url("smtp://user:hunter2@smtp.example.com:587?pool=0")
    assert "hunter2" not in str(info.value)
    assert "user:***@smtp.example.com" in str(info.value)


def test_channel_needs_a_sender_address() -> None:
    settings = SmtpSettings.from_url("smtp://127.0.0.1:1025")
    with pytest.raises(ConfigError, match="AUTOMATION_EMAIL_FROM"):
        SmtpChannel(settings)
    with pytest.raises(ConfigError, match="not an email address"):
        SmtpChannel(settings, from_address="shop")
    from_url = SmtpChannel(SmtpSettings.from_url("smtp://127.0.0.1:1025?from=news%40shop.example"))
    assert (from_url.from_address, from_url.domain) == ("news@shop.example", "shop.example")
    explicit = SmtpChannel(
        SmtpSettings.from_url("smtp://127.0.0.1:1025?from=news%40shop.example"),
        from_address="Other <hello@other.example>",
    )
    assert (explicit.from_address, explicit.domain) == ("Other <hello@other.example>", "other.example")
