"""Every email carries the headers the providers' event webhooks echo back: ``X-Automation-Key``,
SendGrid's ``X-SMTPAPI`` unique argument and Postmark's ``X-PM-Metadata-automation-key``, each on one
line and unencoded, in both builders (``build_email`` and ``build_email_bytes``)."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from automation.channels.base import Delivery
from automation.channels.mime import build_email, build_email_bytes
from automation.messages.store import RenderedMessage

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
SENDER = "Shop <news@shop.example>"
# long enough that a folding policy would break it, with the characters JSON has to escape
KEY = "lifecycle_2026-11-22_" + "x" * 90 + '_"quoted"\\back_welcome'


def modern(delivery: Delivery) -> bytes:
    return build_email(delivery, from_address=SENDER, domain="shop.example", now=NOW).as_bytes()


def wire(delivery: Delivery) -> bytes:
    return build_email_bytes(delivery, from_address=SENDER, domain="shop.example", now=NOW)[0]


def mail(key: str) -> Delivery:
    rendered = RenderedMessage("email", "welcome", subject="Hi", text="Hi\n", html="<p>Hi</p>")
    return Delivery(
        message_id=1, idempotency_key=key, channel="email", customer_id="c1", rendered=rendered,
        to="ada@example.com",
    )  # fmt: skip


@pytest.mark.parametrize("build", [modern, wire], ids=["build_email", "build_email_bytes"])
def test_the_key_travels_in_our_header_and_in_each_providers_metadata(
    build: Callable[[Delivery], bytes],
) -> None:
    raw = build(mail(KEY))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["X-Automation-Key"] == KEY
    assert json.loads(str(parsed["X-SMTPAPI"])) == {"unique_args": {"automation_key": KEY}}
    assert parsed["X-PM-Metadata-automation-key"] == KEY
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    for name in (b"x-automation-key:", b"x-smtpapi:", b"x-pm-metadata-automation-key:"):
        [index] = [i for i, line in enumerate(lines) if line.lower().startswith(name)]
        assert lines[index + 1][:1] not in (b" ", b"\t")  # one line: not folded
        assert b"=?" not in lines[index]  # not RFC 2047 encoded
