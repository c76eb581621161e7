"""Our check of Twilio's request signature against the official ``twilio`` package's validator."""

from __future__ import annotations

import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from automation.web.twilio import signature, signature_valid

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+12349013030"),
    ("Digits", "1234"),
    ("From", "+12349013030"),
    ("To", "+18005551212"),
]


@pytest.mark.parametrize(
    "params",
    [
        PARAMS,
        [],
        [("Body", "Grüße 🎉 & more=yes"), ("From", "+14155550101"), ("ErrorCode", "")],
        [("b", "2"), ("a", "z"), ("a", "y"), ("A", "x")],  # a repeated name; upper case sorts first
    ],
)
def test_our_signature_is_the_official_one(params: list[tuple[str, str]]) -> None:
    official = RequestValidator(TOKEN).compute_signature(URL, MultiDict(params))
    assert signature(TOKEN, URL, params) == official
    assert signature_valid(TOKEN, URL, params, official)


def test_the_documented_example() -> None:
    assert signature(TOKEN, URL, PARAMS) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_a_changed_value_url_or_token_does_not_validate() -> None:
    good = RequestValidator(TOKEN).compute_signature(URL, dict(PARAMS))
    assert signature_valid(TOKEN, URL, PARAMS, good)
    assert not signature_valid(TOKEN, URL, [*PARAMS[:-1], ("To", "+18005551213")], good)
    assert not signature_valid(TOKEN, URL.replace("foo=1", "foo=2"), PARAMS, good)
    assert not signature_valid("54321", URL, PARAMS, good)
    assert not signature_valid(TOKEN, URL, PARAMS, "")


@pytest.mark.parametrize(
    ("signed", "checked"),
    [
        ("https://example.com:443/hook", "https://example.com/hook"),
        ("https://example.com/hook", "https://example.com:443/hook"),
        ("http://example.com:80/hook?x=1", "http://example.com/hook?x=1"),
    ],
)
def test_the_default_port_may_be_signed_or_not(signed: str, checked: str) -> None:
    given = RequestValidator(TOKEN).compute_signature(signed, dict(PARAMS))
    assert signature_valid(TOKEN, checked, PARAMS, given)
    assert RequestValidator(TOKEN).validate(checked, dict(PARAMS), given)  # as Twilio's helper decides


def test_another_port_is_another_url() -> None:
    given = RequestValidator(TOKEN).compute_signature("https://example.com:8443/hook", dict(PARAMS))
    assert not signature_valid(TOKEN, "https://example.com/hook", PARAMS, given)
    assert signature_valid(TOKEN, "https://example.com:8443/hook", PARAMS, given)
