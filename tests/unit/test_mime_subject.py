"""A Subject made from customer data shows as typed: text that looks like an RFC 2047 encoded word is
encoded itself, so a standard parser (and a mail client) does not turn ``=?utf-8?q?=41dmin?=`` into "Admin".

Both builders are checked: ``build_email`` (the file outbox, ``SmtpChannel.build``) and
``build_email_bytes`` (what ``SmtpChannel.send`` puts on the wire)."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from automation.channels.base import Delivery
from automation.channels.mime import build_email, build_email_bytes
from automation.errors import PermanentDeliveryError
from automation.messages.store import RenderedMessage

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
SENDER = "Shop <news@shop.example>"

Builder = Callable[[Delivery], bytes]


def modern(delivery: Delivery) -> bytes:
    return build_email(delivery, from_address=SENDER, domain="shop.example", now=NOW).as_bytes()


def wire(delivery: Delivery) -> bytes:
    return build_email_bytes(delivery, from_address=SENDER, domain="shop.example", now=NOW)[0]


BUILDERS = pytest.mark.parametrize("build", [modern, wire], ids=["build_email", "build_email_bytes"])


def mail(subject: str) -> Delivery:
    rendered = RenderedMessage("email", "welcome", subject=subject, text="Hi\n", html="<p>Hi</p>")
    return Delivery(
        message_id=1,
        idempotency_key="pb:c1:welcome:1",
        channel="email",
        customer_id="c1",
        rendered=rendered,
        to="ada@example.com",
    )


def parsed_subject(raw: bytes) -> str:
    return str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])


def subject_lines(raw: bytes) -> str:
    """The raw Subject header with its continuation lines."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    start = next(i for i, line in enumerate(lines) if line.lower().startswith(b"subject:"))
    end = start + 1
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    return b"\n".join(lines[start:end]).decode("ascii")


LOOKALIKES = [
    "=?utf-8?q?=41dmin?=",
    "Welcome, =?utf-8?q?=41dmin?=!",
    "=?UTF-8?B?QWRtaW4=?= needs your password",
    "Zoë =?iso-8859-1?q?=E9?= and more",
    "half an encoded word =? here",
    "=?utf-8?q?=41?= " + "long subject text " * 12 + "=?utf-8?q?=42?=",
]


@BUILDERS
@pytest.mark.parametrize("subject", LOOKALIKES)
def test_encoded_word_lookalikes_read_back_exactly_as_typed(build: Builder, subject: str) -> None:
    raw = build(mail(subject))
    assert raw.isascii()
    assert parsed_subject(raw) == subject
    header = subject_lines(raw)
    assert "=?utf-8?q?=41dmin?=" not in header  # the typed look-alike is not on the wire as it is
    assert all(len(line) <= 78 for line in header.split("\n"))


@BUILDERS
@pytest.mark.parametrize("subject", ["Welcome, Ada", "Grüße, Jörg — 10 % Rabatt 🎉", "a = b? yes", "x" * 120])
def test_other_subjects_are_unchanged(build: Builder, subject: str) -> None:
    raw = build(mail(subject))
    assert parsed_subject(raw) == subject


@BUILDERS
def test_plain_ascii_subjects_stay_readable_on_the_wire(build: Builder) -> None:
    assert subject_lines(build(mail("Welcome, Ada"))) == "Subject: Welcome, Ada"


@BUILDERS
def test_a_line_break_in_the_subject_is_refused(build: Builder) -> None:
    with pytest.raises(PermanentDeliveryError, match="the Subject contains a line break"):
        build(mail("Hi\r\nBcc: someone@example.com"))
