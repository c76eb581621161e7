"""The importer's shorter ways to validate a row give exactly what the long ways give.

Emails (``rows._plain_email``), phone numbers (``rows._plain_phone``), whole customer rows
(``rows._plain_customer_row``) and batches of rows validated column by column (``columns.customer_rows``)
each have a quick path for the common case and fall back to the full validator for anything else.
These tests compare both on wide samples of ordinary and tricky values: the same values accepted,
the same stored forms, the same problems word for word.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email

from automation.ingest import columns, rows, sample_data
from automation.ingest.rows import CUSTOMER_FIELDS, RowError, checked_customer_row, customer_row

EMAIL_MAX = 320


def outcome(convert: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", convert(*args)
    except RowError as exc:
        return "refused", str(exc)


# -- emails ------------------------------------------------------------------------------------------
def reference_email(name: str, value: Any) -> str | None:
    """The email check with email-validator asked about every address (no quicker way)."""
    text = rows._text(name, value, EMAIL_MAX)
    if text is None:
        return None
    try:
        normalized = validate_email(text, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise RowError(f"{name}: invalid email address {text!r}: {exc}") from None
    if len(normalized) > EMAIL_MAX:
        raise RowError(f"{name}: longer than {EMAIL_MAX} characters")
    return normalized


LOCALS = [
    "a", "john.doe", "John.Doe", "JOHN", "x" * 63, "x" * 64, "x" * 65, "x" * 200, "a.", ".a", "a..b",
    "a+tag", "a+", "+", "o'brien", "a!#$%&'*+/=?^_`{|}~-z", "{x}", "a|b", "postmaster", "Postmaster",
    "Info", "SALES", "news", "www", "abuse", "info.x", "jürgen", "j\u00fcrgen", "ju\u0308rgen", "用户",
    "élise", "e\u0301lise", '"quoted"', '"a b"', '"a\\"b"', "a b", "a\tb", "a\\b", "a,b", "a;b", "a:b",
    "a(b)", "a[b]", "a<b>", "-a-", "a_b", "_", "1234", "ä", "\u200ba", "a\u00a0b", "ａ", "a.b.c.d.e",
]  # fmt: skip
DOMAINS = [
    "example.com", "EXAMPLE.COM", "Example.Co.Uk", "sub.domain.example.org", "example.museum",
    "xn--mnchen-3ya.de", "münchen.de", "MÜNCHEN.DE", "mu\u0308nchen.de", "bücher-example.com",
    "xn--bcher-kva.ch", "xn--abc.com", "xn--.com", "xn--zz-zz.com", "例え.テスト", "例子.中国", "пример.рф",
    "localhost", "example", "com", "example.com.", ".example.com", "example..com", "-example.com",
    "example-.com", "ex--ample.com", "exa_mple.com", "_dmarc.example.com", "example.c", "example.123",
    "123.com", "1.2.3.4", "[1.2.3.4]", "[IPv6:::1]", "example.test", "example.invalid", "example.local",
    "x.onion", "example.arpa", "example.example", "a.b", "a" * 63 + ".com", "a" * 64 + ".com",
    "ex ample.com", "exa\u200bmple.com", "ｅxample.com", "example\u3002com", "example.com\u3002",
    "e\u0301xample.com", "ex%ample.com", "ex!ample.com", "example.com:80", "example.com>", "ex'ample.com",
    "ex@mple.com", "example.co\u0000m", "EXAMPLE.xn--p1ai", "ß.de", "ς.gr", "ﬁ.com", "Ⅸ.com", "٣.com",
]  # fmt: skip
WHOLE = [
    "", " ", "@", "a@", "@example.com", "a@b@example.com", "a@@example.com", "Name <a@example.com>",
    "<a@example.com>", "a＠example.com", "a﹫example.com", "  a@example.com  ", "a@example.com\n",
    "no-at-sign.example.com", "a@ example.com", "a @example.com", '"a@b"@example.com', "a\x00@example.com",
    "\ud800@example.com", "a" * 100_000 + "@example.com", "a@" + "b" * 400 + ".com",
]  # fmt: skip


def long_addresses() -> Iterator[str]:
    """Addresses around every length limit: the whole address (254 bytes), a label (63)."""
    for total in range(248, 258):
        for local_length in (1, 10, 64, 65, 100):
            domain_length = total - local_length - 1
            labels, rest = [], domain_length - 4  # ".com"
            while rest > 0:
                size = min(63, rest)
                labels.append("d" * size)
                rest -= size + 1
            if rest < -1 or not labels:
                continue
            domain = ".".join(labels) + ".com"
            yield "l" * local_length + "@" + domain
            yield "l" * (local_length - 1) + "é@" + domain if local_length > 1 else "é@" + domain
            yield "l" * local_length + "@" + domain.replace("d", "ü", 1)


def email_sample() -> list[str]:
    sample = [f"{local}@{domain}" for local in LOCALS for domain in DOMAINS]
    sample += WHOLE + list(long_addresses())
    rng = random.Random(7)
    alphabet = "aZ0.-_+@'\"\\ éü.." + "".join(chr(c) for c in (0x301, 0x200B, 0xFF21, 0x3002))
    for _ in range(3000):
        sample.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30))))
    return sample


def test_the_quick_email_check_gives_what_email_validator_gives() -> None:
    sample = email_sample()
    quick = 0
    for text in sample:
        fast = rows._plain_email(text)
        if fast is not None:
            quick += 1
            assert fast == validate_email(text, check_deliverability=False).normalized, text
    assert quick > 400  # the sample does go through the quick path


@pytest.mark.parametrize("name", ["email", "owner_email"])
def test_email_problems_are_worded_as_before(name: str) -> None:
    for text in email_sample():
        assert outcome(rows._email, name, text) == outcome(reference_email, name, text), text


# -- phone numbers -----------------------------------------------------------------------------------
def reference_phone(value: Any, region: str | None) -> str | None:
    """The phone check with phonenumbers asked about every number (no quicker way)."""
    text = rows._text("phone", value, 64)
    if text is None:
        return None
    if not text.startswith("+") and region is None:
        raise RowError(
            f"phone: {text!r} has no country code; write it in E.164 form (e.g. +14155550123) "
            "or import with --default-region"
        )
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise RowError(f"phone: cannot read {text!r} as a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise RowError(f"phone: {text!r} is not a valid phone number")
    e164: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164


def phone_sample() -> list[str]:
    """Example numbers of every region and type with other last digits, in several formats; every
    country code with random national numbers of every length; random digits; odd texts."""
    rng = random.Random(11)
    formats = phonenumbers.PhoneNumberFormat
    sample = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in phonenumbers.PhoneNumberType.values():
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            base = phonenumbers.format_number(example, formats.E164)
            for _ in range(3):
                digits = list(base[1:])
                for i in range(len(digits) - rng.randrange(1, 5), len(digits)):
                    digits[i] = str(rng.randrange(10))
                e164 = "+" + "".join(digits)
                sample.append(e164)
                number = phonenumbers.parse(e164, None)
                for shown in (formats.INTERNATIONAL, formats.NATIONAL, formats.RFC3966):
                    sample.append(phonenumbers.format_number(number, shown))
                sample.append(phonenumbers.format_number(number, formats.INTERNATIONAL).replace(" ", "-"))
    for code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        for length in range(0, 16):
            national = "".join(str(rng.randrange(10)) for _ in range(length))
            sample += [f"+{code}{national}", f"+{code} {national}", f"+{code}0{national}"]
    for _ in range(5000):
        length = rng.randrange(5, 19)
        sample.append("+" + "".join(str(rng.randrange(10)) for _ in range(length)))
    sample += [
        "+", "+1", "+12", "+123456", "+0123456789", "+00 1 201 555 0123", "+1 201 555 0123 x12",
        "+1 201-555-0123;ext=5", "+1 (201) 555-0123", "+1.201.555.0123", "+1  201 555 0123",
        "+1 201 555 0123 ", "+1-800-FLOWERS", "+١٢٠١٥٥٥٠١٢٣", "＋12015550123", "+1 201 555 0123#",
        "tel:+1-201-555-0123", "+1/201/555/0123", "+44 (0)20 7946 0958", "+39 06 1234 5678",
        "+39 333 123 4567", "+7 800 555 35 35", "+882 345 678 9012", "+800 1234 5678", "+979 123456789",
        "+1 242 357 1234", "+1 684 733 1234", "+262 269 61 1234", "+262 639 12 3456", "+599 9 123 4567",
        "+47 79 12 34 56", "+61 8 9162 1234", "+590 690 00 1234", "+1-201-555-01234567", "2015550123",
        "(201) 555-0123", "020 7946 0958", "+12015550123" + "4" * 50,
    ]  # fmt: skip
    return sample


def test_the_quick_phone_check_gives_what_phonenumbers_gives() -> None:
    quick = 0
    for text in phone_sample():
        fast = rows._plain_phone(text)
        if fast is not None:
            quick += 1
            assert outcome(reference_phone, text, None) == ("ok", fast), text
    assert quick > 2000


@pytest.mark.parametrize("region", [None, "US", "GB", "DE", "IT"])
def test_phone_problems_are_worded_as_before(region: str | None) -> None:
    for text in phone_sample():
        assert outcome(rows._phone, text, region) == outcome(reference_phone, text, region), text


# -- JSON ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    ['{"a": 1}', "\ufeff{}", "[1, 2]", '{"a": NaN}', '{"a": Infinity}', "{", "", '{"a": "\\u0000"}',
     '{"a": "\\ud800"}', "1e999", '{"a":1} x', " {} "],
)  # fmt: skip
def test_json_is_read_as_json_loads_reads_it(text: str) -> None:
    def loads(read: Callable[[str], Any]) -> tuple[str, Any]:
        try:
            return "ok", read(text)
        except ValueError as exc:
            return "refused", str(exc)

    assert loads(rows.json_loads) == loads(lambda t: json.loads(t, parse_constant=rows._reject_constant))


# -- whole rows ---------------------------------------------------------------------------------------
def row_sample() -> Iterator[tuple[dict[str, Any], bool]]:
    """(raw row, from_text): generated customers as a CSV and a JSON Lines file give them, and each
    with one change that a real file may hold."""
    rng = random.Random(3)
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    changes: list[tuple[str, Any]] = [
        ("email", "  Mixed.Case@Example.COM "), ("email", "bad@@example.com"), ("email", "   "),
        ("email", "postmaster@example.com"), ("owner_email", "a" * 321), ("phone", "+1 201-555-0123"),
        ("phone", "2015550123"), ("phone", "+1 555 0100"), ("phone", " "), ("phone", 12015550123),
        ("timezone", "Mars/Olympus"), ("timezone", " Europe/Berlin "), ("locale", "english!"),
        ("clv", "12,5"), ("clv", "nan"), ("clv", 3), ("clv", True), ("orders_count", "-1"),
        ("orders_count", "1.0"), ("orders_count", 2.0), ("nps", "11"), ("nps", "  7 "),
        ("birthday", "1990-02-30"), ("birthday", "19900101"), ("signed_up_at", "yesterday"),
        ("signed_up_at", "2024-05-01T12:30:00+02:00"), ("last_seen_at", 5), ("attributes", "{bad"),
        ("attributes", "[]"), ("attributes", '{"a": "\\u0000"}'), ("attributes", " "), ("id", " "),
        ("id", None), ("id", "a\x01b"), ("id", "i" * 256), ("id", 42), ("first_name", "x" * 256),
        ("first_name", "\x00"), ("plan", "  "), ("clear", "email phone"), ("clear", "id"),
        ("clear", "timezone"), ("clear", " "), ("clear", None), ("clear", ["nps"]), ("clear", "nope"),
        ("unknown", None), ("unknown", "x"), ("emial", "a@example.com"),
    ]  # fmt: skip
    for n in range(1, 400):
        customer = sample_data._customer(rng, f"cus_{n:05d}", n, now)
        text = {name: sample_data._cell(customer[name]) or None for name in CUSTOMER_FIELDS}
        values = {name: customer[name] for name in CUSTOMER_FIELDS}
        values = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in values.items()}
        for base, from_text in ((text, True), (values, False)):
            yield dict(base), from_text
            for name, value in rng.sample(changes, 6):
                changed = dict(base)
                if value is None:
                    changed.pop(name, None) if rng.random() < 0.5 else changed.update({name: None})
                else:
                    changed[name] = json.dumps(value) if from_text and name == "attributes" else value
                    if from_text and not isinstance(value, str):
                        changed[name] = str(value)
                yield changed, from_text


@pytest.mark.parametrize("region", [None, "US"])
def test_the_quick_row_check_gives_what_the_full_check_gives(region: str | None) -> None:
    quick = 0
    for raw, from_text in row_sample():
        want = outcome(checked_customer_row, raw, region, from_text)
        got = outcome(customer_row, raw, region, from_text)
        assert got == want, raw
        if want[0] == "ok":
            assert list(got[1]) == list(want[1]), raw  # the same columns in the same order
        try:
            rows._plain_customer_row(raw, region, from_text)
            quick += 1
        except RowError:
            pass
    assert quick > 500


@pytest.mark.parametrize("region", [None, "US"])
def test_a_batch_checked_column_by_column_gives_what_each_row_gives(
    region: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone: list[dict[str, Any]] = []  # the rows validated one at a time

    def one_row(raw: dict[str, Any], region: str | None, from_text: bool) -> dict[str, Any]:
        alone.append(raw)
        return customer_row(raw, region, from_text)

    monkeypatch.setattr(columns, "customer_row", one_row)
    sample = list(row_sample())
    repeated = [  # the same good and bad values on many rows, the way a file repeats them
        (dict(raw, timezone=zone, attributes=attributes, orders_count=count), from_text)
        for (raw, from_text), zone, attributes, count in zip(
            sample[:300],
            ["Europe/Berlin", "Mars/Olympus", "UTC"] * 100,
            ['{"a": 1}', "{bad", " "] * 100,
            ["3", "-1", ""] * 100,
            strict=True,
        )
    ]
    for rows_of, from_text in ((sample, True), (sample, False), (repeated, True), (repeated, False)):
        raws = [raw for raw, text in rows_of if text is from_text]
        alone.clear()
        refused = 0
        for start in range(0, len(raws), 97):  # batches mixing rows of many column sets
            batch = raws[start : start + 97]
            got = columns.customer_rows(batch, region, from_text)
            for raw, result in zip(batch, got, strict=True):
                want = outcome(checked_customer_row, raw, region, from_text)
                if isinstance(result, RowError):
                    assert ("refused", str(result)) == want, raw
                    refused += 1
                else:
                    assert ("ok", result) == want, raw
                    assert list(result) == list(want[1]), raw  # the same columns in the same order
        assert refused <= len(alone) < refused + len(raws) / 20  # the good rows went column by column
    assert columns.customer_rows([], region, True) == []


# -- stored forms ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_timestamps_and_dates_are_written_as_sqlalchemy_binds_them(backend: str) -> None:
    from datetime import date, timedelta, timezone

    from sqlalchemy.dialects import postgresql, sqlite

    from automation.db.tables import CUSTOMER
    from automation.ingest import writer

    dialect = sqlite.dialect() if backend == "sqlite" else postgresql.psycopg.dialect()

    def reference(name: str) -> Callable[[Any], Any]:
        processor = CUSTOMER.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        assert processor is not None
        return processor

    bound = reference("signed_up_at")
    assert writer._bind_processor(dialect, "signed_up_at") is writer._utc_text
    rng = random.Random(5)
    zones = [None, UTC] + [timezone(timedelta(minutes=m)) for m in (-720, -300, 0, 330, 345, 840)]
    for _ in range(5000):
        seconds = rng.randrange(86_400 * 366, 86_400 * 365 * 9990)
        value = datetime(1, 1, 1) + timedelta(
            seconds=seconds, microseconds=rng.choice([0, rng.randrange(10**6)])
        )
        value = value.replace(tzinfo=rng.choice(zones))
        want = bound(value)
        if isinstance(want, datetime):  # PostgreSQL: the naive UTC value, which COPY reads from its text
            want = want.isoformat(" ", "microseconds")
        assert writer._utc_text(value) == want, value
    if backend == "sqlite":
        bound = reference("birthday")
        assert writer._bind_processor(dialect, "birthday") is writer._iso_date
        for _ in range(5000):
            day = date(1, 1, 1) + timedelta(days=rng.randrange(3_652_059))
            assert writer._iso_date(day) == bound(day), day
