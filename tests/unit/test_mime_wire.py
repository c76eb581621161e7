"""The wire builder's shortcuts write what the stock compat32 generator writes: headers that fit on their
line are written directly, anything else is folded by compat32 as before, and the multipart boundary is
given up front in the generator's own format instead of being searched for in the parts."""

from __future__ import annotations

import email
import email.policy
import random
import re
from datetime import UTC, datetime

import pytest

from automation.channels import mime
from automation.channels.base import Delivery
from automation.channels.mime import build_email_bytes
from automation.messages.store import RenderedMessage

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
STOCK = email.policy.compat32.clone(linesep="\r\n", max_line_length=998)

VALUES = [
    "plain",
    "two words",
    "two  spaces",
    " leading",
    "trailing ",
    "tab\there",
    "",
    "=?utf-8?q?=41dmin?=",
    "Zoë",
    'multipart/alternative; boundary="===============0123456789012345678=="',
    '{"unique_args": {"automation_key": "lifecycle:c1:welcome#1"}}',
    "<https://shop.example/unsubscribe/" + "a" * 900 + ">",
    "x" * 990,
    "x" * 996,
    "word " * 250,
    "folded\r\n continuation",
]


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("name", ["Subject", "X-SMTPAPI", "List-Unsubscribe"])
def test_a_header_is_written_as_the_stock_compat32_policy_writes_it(name: str, value: str) -> None:
    assert mime._WIRE.fold_binary(name, value) == STOCK.fold_binary(name, value)


def test_random_ascii_headers_are_written_as_the_stock_policy_writes_them() -> None:
    rng = random.Random(7)
    alphabet = "ab =?;,\t\"'<>@"
    for _ in range(2000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 1100)))
        assert mime._WIRE.fold_binary("Subject", value) == STOCK.fold_binary("Subject", value), value


def test_the_boundary_has_the_generators_format_and_is_new_for_every_message() -> None:
    first, second = mime._boundary(), mime._boundary()
    assert re.fullmatch(r"={15}\d{19}==", first)
    assert first != second


def test_a_multipart_message_parses_back_to_its_parts() -> None:
    text = "Hello Zoë,\n\n" + "a line of text " * 20 + "\n-- \n=== not a boundary ===\n"
    html = "<p>Hello Zoë</p>" + "<p>" + "x" * 300 + "</p>"
    rendered = RenderedMessage("email", "welcome", subject="Welcome, Zoë", text=text, html=html)
    delivery = Delivery(1, "lifecycle:c1:welcome#1", "email", "c1", rendered, to="Zoë <zoe@example.com>")
    raw, recipient, ident = build_email_bytes(
        delivery, from_address="Shop <news@shop.example>", domain="shop.example", now=NOW
    )
    assert recipient == "zoe@example.com"
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Message-ID"] == ident
    assert parsed["Subject"] == "Welcome, Zoë"
    assert parsed.get_content_type() == "multipart/alternative"
    boundary = parsed.get_boundary()
    assert boundary is not None and re.fullmatch(r"={15}\d{19}==", boundary)
    plain, rich = parsed.iter_parts()
    assert plain.get_content().replace("\r\n", "\n") == text
    assert rich.get_content().replace("\r\n", "\n") == html + "\n"
