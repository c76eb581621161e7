"""The rules a row is checked against before it is written: field validation and the row rules.

A value is a CSV string, a JSON value, or None. Each field is converted to its stored form or refused
with a ``field: reason`` message; a row reports all its bad fields at once (:class:`RowError`). Text
columns hold at most their ``String(length)`` of :mod:`automation.db.tables`, checked before any other
validation. Ids (customer ``id``, event ``customer_id``) must not contain control characters (Unicode
category Cc, U+2028, U+2029).

Which columns a customer row sets and which it clears is :func:`customer_columns`, shared by every
source of customer rows (files here, other callers such as an HTTP identify API): a value that is not
given -- an empty CSV cell, a whitespace-only text, a JSON null, or a column absent from the row --
keeps what is stored; a new customer gets the column's default (``timezone`` UTC, ``orders_count`` 0,
``attributes`` {}, the others null). A given value replaces the stored one. The pseudo-column
``clear`` sets nullable columns to null: a text listing column names separated by spaces or commas
(``email phone``), or a JSON list (``"clear": ["email", "phone"]``). Clearing ``id``, a column with a
default (write the value instead), an unknown column, or a column the same row gives a value rejects
the row.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache, lru_cache, partial
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from sqlalchemy import String, Table, TypeDecorator

from automation.db.tables import CUSTOMER, EVENT
from automation.errors import InputError

from phonenumbers.phonenumberutil import (  # isort: skip
    ValidationResult as _ValidationResult,
    _maybe_strip_national_prefix_carrier_code as _strip_national_prefix,
    _test_number_length,
)

INT32_MAX = 2_147_483_647
PHONE_INPUT_MAX = 64  # characters of a phone number as written; stored E.164 is at most 16
_SHOWN_MAX = 80  # characters of a bad value quoted in a problem
#: phonenumbers.parse keeps the national prefix when the number without it would have these lengths
_KEEP_NATIONAL_PREFIX = (
    _ValidationResult.TOO_SHORT,
    _ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    _ValidationResult.INVALID_LENGTH,
)


#: Importable customer fields: every column of ``customer`` except the bookkeeping ``updated_at``.
CUSTOMER_FIELDS: tuple[str, ...] = tuple(c.name for c in CUSTOMER.columns if c.name != "updated_at")
#: Importable event fields: the surrogate key ``id`` is generated and ``message_id`` is the HTTP API's
#: idempotency key (files are imported once; a repeated import appends its events again).
EVENT_FIELDS: tuple[str, ...] = tuple(c.name for c in EVENT.columns if c.name not in ("id", "message_id"))
#: The pseudo-column of a customer row naming the columns to set to null.
CLEAR = "clear"
#: What a customer row may hold.
CUSTOMER_INPUT_FIELDS: tuple[str, ...] = (*CUSTOMER_FIELDS, CLEAR)

CUSTOMER_DEFAULTS: dict[str, Any] = {"timezone": "UTC", "orders_count": 0, "attributes": {}}

BAD_CHARS = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates (invalid UTF-8 in the file)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_INT_RE = re.compile(r"[+-]?\d+")
_LOCALE_RE = re.compile(r"[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # Unicode category Cc, line/paragraph separators
_CLEAR_SEPARATORS = re.compile(r"[\s,]+")


class RowError(ValueError):
    """A row cannot be imported; the message says why."""


def unknown_field(name: str, fields: tuple[str, ...]) -> str:
    """The problem of an unknown column: the closest known name as a suggestion, else all of them."""
    text = f"unknown column {_shown(name)}"
    close = difflib.get_close_matches(name.strip().lower(), fields, n=1, cutoff=0.6)
    if close:
        return text + f" (did you mean {close[0]!r}?)"
    return text + "; known columns: " + ", ".join(fields)


def _reject_constant(name: str) -> Any:
    """Refuse ``NaN`` and ``Infinity``, which Python's JSON reader accepts and JSON does not."""
    raise ValueError(f"{name} is not valid JSON")


#: ``json.loads(text, parse_constant=_reject_constant)`` builds a decoder each call; this one is built once.
_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
#: ``json.dumps(value, ensure_ascii=False)``'s encoder, built once.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)


def json_loads(text: str) -> Any:
    """Strict JSON: a JSON text as Python values (ValueError when it is not JSON)."""
    if text.startswith("\ufeff"):  # what json.loads refuses before decoding
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _JSON_DECODER.decode(text)


def json_type(value: Any) -> str:
    """The JSON type of a value, as a problem names it (``a number``, ``an array``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: problems quote bad values without holding long ones."""
    text = repr(value)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."


@cache
def _max_length(table: Table, name: str) -> int | None:
    """The ``String(length)`` of a column (also behind a TypeDecorator such as AutoString)."""
    col_type = table.c[name].type
    if isinstance(col_type, TypeDecorator):
        col_type = col_type.impl_instance
    return col_type.length if isinstance(col_type, String) else None


def _text(name: str, value: Any, max_length: int | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"{name}: expected text, got {json_type(value)}")
    text = value.strip()
    if not text:
        return None
    if max_length is not None and len(text) > max_length:  # before any costlier check
        raise RowError(f"{name}: longer than {max_length} characters")
    if BAD_CHARS.search(text):
        raise RowError(f"{name}: contains a NUL character or invalid UTF-8")
    return text


@lru_cache(maxsize=4096)  # owner emails repeat on many rows
def _normalized_email(text: str) -> str:
    """email-validator's normalized form (syntax only); raises EmailNotValidError.

    Most addresses take a shorter way to the same answer (:func:`_plain_email`); anything else, and
    every address refused, goes through ``validate_email`` itself, whose message the problem quotes.
    """
    fast = _plain_email(text)
    if fast is not None:
        return fast
    return validate_email(text, check_deliverability=False).normalized


#: ``local@domain`` with an ASCII dot-atom local part (email-validator's ``DOT_ATOM_TEXT``: no quotes,
#: no display name, no Unicode) and a domain of word characters, dots and hyphens (no IP literal).
_PLAIN_EMAIL = re.compile(
    r"([A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+(?:\.[A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+)*)@([\w.-]+)"
)
_EMAIL_MAX_BYTES = 254  # email-validator's limit on the whole address (RFC 5321), in UTF-8 bytes
_CASE_INSENSITIVE_MAILBOXES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)  # email-validator lowercases those


def _plain_email(text: str) -> str | None:
    """``validate_email(text).normalized`` for a plain address, or None: ask ``validate_email``.

    For ``local@domain`` with a dot-atom ASCII local part, email-validator keeps the local part as
    written (except the mailbox names it lowercases, left to it), checks the domain on its own, and
    checks the length of the whole address in three forms. So the domain's verdict is taken from
    ``validate_email`` once per domain (:func:`_email_domain`), and the lengths are checked here.
    """
    match = _PLAIN_EMAIL.fullmatch(text)
    if match is None:
        return None
    local, domain = match.groups()
    checked = _email_domain(domain)
    if checked is None or local.lower() in _CASE_INSENSITIVE_MAILBOXES:
        return None
    normalized_domain, longest_domain_bytes = checked
    if len(local) + 1 + longest_domain_bytes > _EMAIL_MAX_BYTES:
        return None
    return f"{local}@{normalized_domain}"


@lru_cache(maxsize=4096)
def _email_domain(domain: str) -> tuple[str, int] | None:
    """The normalized domain email-validator gives the part after the @-sign, and the UTF-8 length of
    the longest of its three forms (as written, normalized, IDNA ASCII); None when it refuses it."""
    try:
        checked = validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    forms = (domain, checked.domain, checked.ascii_domain or "")
    return checked.domain, max(len(form.encode("utf-8")) for form in forms)


def _email(name: str, value: Any) -> str | None:
    limit = _max_length(CUSTOMER, name)
    text = _text(name, value, limit)
    if text is None:
        return None
    try:
        normalized = _normalized_email(text)
    except EmailNotValidError as exc:
        raise RowError(f"{name}: invalid email address {text!r}: {exc}") from None
    if limit is not None and len(normalized) > limit:  # normalizing may lengthen a domain
        raise RowError(f"{name}: longer than {limit} characters")
    return normalized


def _phone(value: Any, region: str | None) -> str | None:
    text = _text("phone", value, PHONE_INPUT_MAX)
    if text is None:
        return None
    if not text.startswith("+") and region is None:
        raise RowError(
            f"phone: {text!r} has no country code; write it in E.164 form (e.g. +14155550123) "
            "or import with --default-region"
        )
    fast = _plain_phone(text)
    if fast is not None:
        return fast
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise RowError(f"phone: cannot read {text!r} as a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise RowError(f"phone: {text!r} is not a valid phone number")
    e164: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164


#: ``+`` and 7 to 17 ASCII digits, single spaces or hyphens between them (``+1 201-555-0123``): what
#: ``phonenumbers.parse`` reads as a country code and a national number with nothing else to strip.
_PLAIN_PHONE = re.compile(r"\+[1-9](?:[ -]?[0-9]){6,16}")


def _plain_phone(text: str) -> str | None:
    """The E.164 form of a valid number written as ``+`` and digits, or None: ask ``phonenumbers``.

    The same steps as ``phonenumbers.parse`` (no default region), ``is_valid_number`` and ``format_number``
    (E.164) take for such a text, with the metadata's patterns compiled once (:func:`_phone_region`).
    An invalid number, a national number with a leading zero, and every other text go the long way,
    which words the problem.
    """
    if _PLAIN_PHONE.fullmatch(text) is None:
        return None
    digits = text[1:].replace(" ", "").replace("-", "")
    for size in (1, 2, 3):  # phonenumbers' _extract_country_code
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    country = _phone_country(code)
    if country is None:
        return None
    metadata, single, regions = country
    national = digits[size:]
    if len(national) < 2:
        return None
    _carrier, stripped, _ = _strip_national_prefix(national, metadata)
    if stripped != national and _test_number_length(stripped, metadata) not in _KEEP_NATIONAL_PREFIX:
        national = stripped
    if not 2 <= len(national) <= 17 or national[0] == "0":  # leading zeros: phonenumbers' own way
        return None
    region: _Checks | None = regions[0] if single else None
    if not single:  # phonenumbers' _region_code_for_number_from_list (regions without metadata left out)
        for candidate in regions:
            leading, valid, _same_code = candidate
            if (leading.match(national) is not None) if leading is not None else valid(national):
                region = candidate
                break
    if region is None or not region[2] or not region[1](national):  # is_valid_number_for_region
        return None
    return f"+{code}{national}"


#: Per region: its leading digits pattern, whether a national number is valid by its metadata, and
#: whether its country code is the number's (is_valid_number_for_region refuses it otherwise).
_Checks = tuple[re.Pattern[str] | None, Callable[[str], bool], bool]


@cache
def _phone_country(code: int) -> tuple[Any, bool, tuple[_Checks, ...]] | None:
    """The metadata ``phonenumbers.parse`` reads a number of country code ``code`` with, whether the code
    has one region, and per region its leading digits pattern and validity check (None: never valid);
    None when phonenumbers has no metadata."""
    from phonenumbers.phonemetadata import PhoneMetadata

    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code]
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, regions[0])
    if metadata is None:
        return None
    checks: list[_Checks] = []
    if len(regions) == 1:  # region_code_for_number takes it as it is; "001" has the code's metadata
        same_code = regions[0] == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY or (
            PhoneMetadata.metadata_for_region(regions[0].upper(), None) is not None
            and phonenumbers.country_code_for_valid_region(regions[0]) == code
        )
        checks.append((None, _number_is_valid(metadata), same_code))
    for region in regions if len(regions) > 1 else ():
        region_metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
        if region_metadata is None:
            continue  # _region_code_for_number_from_list skips it
        leading = region_metadata.leading_digits
        checks.append(
            (
                re.compile(leading) if leading is not None else None,
                _number_is_valid(region_metadata),
                region_metadata.country_code == code,
            )
        )
    return metadata, len(regions) == 1, tuple(checks)


def _number_is_valid(metadata: Any) -> Callable[[str], bool]:
    """``_number_type_helper(national, metadata) != UNKNOWN`` with the patterns compiled once: the
    general description matches, and so does the description of at least one type."""
    # the order of the checks changes nothing (any match will do): the most common types first
    names = ["fixed_line", "mobile"] if not metadata.same_mobile_and_fixed_line_pattern else ["fixed_line"]
    names += ["premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan"]
    names += ["voicemail"]

    def matcher(desc: Any) -> Callable[[str], bool] | None:
        if desc is None or not desc.national_number_pattern:
            return None
        pattern = re.compile(desc.national_number_pattern)
        lengths = frozenset(desc.possible_length)
        if lengths:
            return lambda national: len(national) in lengths and pattern.fullmatch(national) is not None
        return lambda national: pattern.fullmatch(national) is not None

    general = matcher(metadata.general_desc)
    types = [m for m in (matcher(getattr(metadata, name)) for name in names) if m is not None]
    if general is None or not types:
        return lambda national: False

    def valid(national: str) -> bool:
        if not general(national):
            return False
        for match in types:  # noqa: SIM110 (a loop: cheaper than any() over a generator)
            if match(national):
                return True
        return False

    return valid


@lru_cache(maxsize=1024)
def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _timezone(value: Any) -> str | None:
    text = _text("timezone", value, _max_length(CUSTOMER, "timezone"))
    if text is not None and not _zone_ok(text):
        raise RowError(f"timezone: unknown time zone {text!r} (use an IANA name such as Europe/Berlin)")
    return text


def _locale(value: Any) -> str | None:
    text = _text("locale", value, _max_length(CUSTOMER, "locale"))
    if text is not None and not _LOCALE_RE.fullmatch(text):
        raise RowError(f"locale: {text!r} is not a locale tag such as en-US")
    return text


def _number(name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RowError(f"{name}: expected a number, got a boolean")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise RowError(f"{name}: {_shown(value)} is not a number") from None
    else:
        raise RowError(f"{name}: expected a number, got {json_type(value)}")
    if not math.isfinite(result):
        raise RowError(f"{name}: {_shown(value)} is not a finite number")
    return result


def _integer(name: str, value: Any, low: int, high: int) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RowError(f"{name}: expected a whole number, got a boolean")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and len(value) <= 40 and _INT_RE.fullmatch(value.strip()):
        result = int(value.strip())  # at most 40 characters: int() refuses thousands of digits
    else:
        raise RowError(f"{name}: {_shown(value)} is not a whole number")
    if not low <= result <= high:
        raise RowError(f"{name}: {_shown(result)} is out of range ({low} to {high})")
    return result


def _timestamp(name: str, value: Any, required: bool = False) -> datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RowError(f"{name}: missing (required)")
        return None
    if not isinstance(value, str):
        raise RowError(f"{name}: expected an ISO 8601 timestamp, got {json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
        # Naive timestamps are UTC; aware ones are converted.
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise RowError(
            f"{name}: {_shown(value)} is not an ISO 8601 timestamp (e.g. 2024-05-01T12:30:00Z)"
        ) from None


def _date(name: str, value: Any) -> date | None:
    text = _text(name, value, None)
    if text is None:
        return None
    try:
        if not _DATE_RE.fullmatch(text):
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise RowError(f"{name}: {_shown(text)} is not a date in the form YYYY-MM-DD") from None


def _object(name: str, value: Any, from_text: bool) -> dict[str, Any]:
    """A JSON object; ``from_text``: a CSV cell holding its JSON text (bounded by the line limit)."""
    if value is None or (from_text and not value.strip()):
        return {}
    if from_text:
        try:
            value = json_loads(value)
        except (ValueError, RecursionError) as exc:
            raise RowError(f"{name}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RowError(f"{name}: expected a JSON object, got {json_type(value)}")
    try:
        encoded = _JSON_ENCODER.encode(value)
    except (ValueError, RecursionError):
        raise RowError(f"{name}: cannot be stored as JSON") from None
    if BAD_CHARS.search(encoded) or "\\u0000" in encoded:
        raise RowError(f"{name}: contains a NUL character or invalid UTF-8")
    return value


def key_text(name: str, value: Any, max_length: int | None) -> str | None:
    """A key (an id, a message id): text of at most ``max_length`` characters without control
    characters, or None when not given; RowError otherwise."""
    text = _text(name, value, max_length)
    control = _CONTROL.search(text) if text is not None else None
    if control:
        raise RowError(f"{name}: contains a control character (U+{ord(control.group()):04X})")
    return text


def _id(name: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # JSON Lines may carry numeric ids
    text = key_text(name, value, _max_length(CUSTOMER, "id"))
    if text is None:
        raise RowError(f"{name}: missing (required)")
    return text


def _customer_value(name: str, value: Any, region: str | None, from_text: bool) -> Any:
    """The stored form of one given customer field, or RowError."""
    match name:
        case "id":
            return _id(name, value)
        case "email" | "owner_email":
            return _email(name, value)
        case "phone":
            return _phone(value, region)
        case "timezone":
            return _timezone(value)
        case "locale":
            return _locale(value)
        case "clv":
            return _number(name, value)
        case "orders_count":
            return _integer(name, value, 0, INT32_MAX)
        case "nps":
            return _integer(name, value, 0, 10)
        case "birthday":
            return _date(name, value)
        case "attributes":
            return _object(name, value, from_text)
        case "signed_up_at" | "last_order_at" | "last_seen_at":
            return _timestamp(name, value)
        case _:  # plain text columns
            return _text(name, value, _max_length(CUSTOMER, name))


def _collect(fields: Iterable[tuple[str, Callable[[], Any]]], problems: Iterable[str] = ()) -> dict[str, Any]:
    """Convert every field; report all the bad ones of a row at once (after ``problems``, if any)."""
    row: dict[str, Any] = {}
    errors = list(problems)
    for name, convert in fields:
        try:
            row[name] = convert()
        except RowError as exc:
            errors.append(str(exc))
    if errors:
        raise RowError("; ".join(errors))
    return row


def _given(value: Any) -> bool:
    """False for a value that is not given: null, or a text that is empty or only whitespace."""
    return value is not None and not (isinstance(value, str) and not value.strip())


@dataclass(frozen=True)
class CustomerColumns:
    """What one customer row does to the stored columns (see :func:`customer_columns`)."""

    given: dict[str, Any]  # column -> the value as written, not yet validated
    cleared: frozenset[str]  # columns to set to null
    problems: tuple[str, ...]  # ``field: reason`` per bad ``clear`` entry; empty when the row can apply


def customer_columns(row: Mapping[str, Any]) -> CustomerColumns:
    """Which columns a customer row (a mapping of column name to value) sets, and which it clears.

    The same rules hold for every source of customer rows. A value that is not given (null, empty
    or whitespace-only text) sets nothing: a stored customer keeps the stored value, a new one gets
    the column's default. ``row["clear"]`` names the columns to set to null: a text of names
    separated by spaces or commas, or a list of names. An unknown key, and clearing ``id``, a column
    with a default, an unknown column, or a column the row also gives a value, are problems.
    """
    unknown = [name for name in row if name not in CUSTOMER_INPUT_FIELDS]
    given = {name: value for name, value in row.items() if name in CUSTOMER_FIELDS and _given(value)}
    names, problems = _clear_names(row.get(CLEAR))
    problems += [unknown_field(name, CUSTOMER_INPUT_FIELDS) for name in unknown]
    cleared: set[str] = set()
    for name in names:
        problem = _clear_problem(name)
        if problem is None and name in given:
            problem = f"{name}: both given a value and cleared; give one or the other"
        if problem is None:
            cleared.add(name)
        else:
            problems.append(problem)
    return CustomerColumns(given, frozenset(cleared), tuple(problems))


def _clear_names(value: Any) -> tuple[list[str], list[str]]:
    """The column names a ``clear`` value lists, and a problem when it is not a list of names."""
    if not _given(value):
        return [], []
    if isinstance(value, str):
        names = _CLEAR_SEPARATORS.split(value)
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        names = [item.strip() for item in value]
    else:
        return [], [f"{CLEAR}: expected a list of column names, got {json_type(value)} {_shown(value)}"]
    return list(dict.fromkeys(name for name in names if name)), []


def _clear_problem(name: str) -> str | None:
    if name in _NOT_CLEARABLE:
        return f"{CLEAR}: {_NOT_CLEARABLE[name]}"
    if name not in CUSTOMER_FIELDS:
        return f"{CLEAR}: {unknown_field(name, CUSTOMER_FIELDS)}"
    return None


def _default_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


#: Columns ``clear`` refuses, and why.
_NOT_CLEARABLE: dict[str, str] = {"id": "id cannot be cleared (it identifies the customer)"} | {
    name: f"{name} has a default; write the value instead ({name}: write {_default_text(value)})"
    for name, value in CUSTOMER_DEFAULTS.items()
}


def customer_row(raw: Mapping[str, Any], region: str | None, from_text: bool) -> dict[str, Any]:
    """Validate one customer row: the given columns converted, the cleared ones None."""
    try:  # the common case, a good row clearing nothing, without the bookkeeping of every problem
        return _plain_customer_row(raw, region, from_text)
    except RowError:
        pass
    return checked_customer_row(raw, region, from_text)


def checked_customer_row(raw: Mapping[str, Any], region: str | None, from_text: bool) -> dict[str, Any]:
    """:func:`customer_row` the long way, for any row: the columns it sets and clears
    (:func:`customer_columns`), every field converted, every problem reported."""
    columns = customer_columns(raw)
    fields = [("id", partial(_id, "id", columns.given.get("id")))] + [
        (name, partial(_customer_value, name, value, region, from_text))
        for name, value in columns.given.items()
        if name != "id"
    ]
    return _collect(fields, columns.problems) | dict.fromkeys(columns.cleared)


def _plain_customer_row(raw: Mapping[str, Any], region: str | None, from_text: bool) -> dict[str, Any]:
    """What :func:`customer_row` gives a row without problems that clears nothing (the same fields, in
    the same order, converted by the same functions); RowError for any other row, without a message
    worth showing: :func:`customer_row` then takes the row through :func:`customer_columns`."""
    row = {"id": _id("id", raw.get("id"))}
    for name, value in raw.items():
        convert = CUSTOMER_CONVERTERS.get(name)
        if convert is None:  # clear (unless not given), or an unknown column
            if name == CLEAR and not _given(value):
                continue
            raise RowError(name)
        if value is None or name == "id" or (isinstance(value, str) and not value.strip()):
            continue  # not given (as _given says)
        row[name] = convert(value, region, from_text)
    return row


def _convert_as(name: str) -> Callable[[Any, str | None, bool], Any]:
    """The converter of one customer field (what :func:`_customer_value` does for ``name``)."""
    match name:
        case "id":
            return lambda value, _region, _from_text: _id("id", value)
        case "email" | "owner_email":
            return lambda value, _region, _from_text: _email(name, value)
        case "phone":
            return lambda value, region, _from_text: _phone(value, region)
        case "timezone":
            return lambda value, _region, _from_text: _timezone(value)
        case "locale":
            return lambda value, _region, _from_text: _locale(value)
        case "signed_up_at" | "last_order_at" | "last_seen_at":
            return lambda value, _region, _from_text: _timestamp(name, value)
        case "attributes":
            return lambda value, _region, from_text: _object(name, value, from_text)
        case "clv":
            return lambda value, _region, _from_text: _number(name, value)
        case "orders_count":
            return lambda value, _region, _from_text: _integer(name, value, 0, INT32_MAX)
        case "nps":
            return lambda value, _region, _from_text: _integer(name, value, 0, 10)
        case "birthday":
            return lambda value, _region, _from_text: _date(name, value)
        case _:  # plain text columns
            limit = _max_length(CUSTOMER, name)
            return lambda value, _region, _from_text: _text(name, value, limit)


#: Per customer field, its converter: ``convert(value, region, from_text)`` gives the stored form of a
#: given value or raises RowError.
CUSTOMER_CONVERTERS: dict[str, Callable[[Any, str | None, bool], Any]] = {
    name: _convert_as(name) for name in CUSTOMER_FIELDS
}


def _event_name(value: Any) -> str:
    name = _text("name", value, _max_length(EVENT, "name"))
    if name is None:
        raise RowError("name: missing (required)")
    return name


def event_row(raw: Mapping[str, Any], from_text: bool) -> dict[str, Any]:
    """Validate one event row."""
    try:  # the common case, a good row, without the bookkeeping that reports every bad field
        return {
            "customer_id": _id("customer_id", raw.get("customer_id")),
            "name": _event_name(raw.get("name")),
            "occurred_at": _timestamp("occurred_at", raw.get("occurred_at"), True),
            "properties": _object("properties", raw.get("properties"), from_text),
        }
    except RowError:
        pass
    return _collect(
        [
            ("customer_id", partial(_id, "customer_id", raw.get("customer_id"))),
            ("name", partial(_event_name, raw.get("name"))),
            ("occurred_at", partial(_timestamp, "occurred_at", raw.get("occurred_at"), True)),
            ("properties", partial(_object, "properties", raw.get("properties"), from_text)),
        ]
    )


def check_region(region: str | None) -> str | None:
    """The ISO 3166 code phone numbers without a ``+`` are read in (upper case); an unknown one is an
    InputError, raised before the file is read."""
    if region is None:
        return None
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise InputError(f"unknown phone region {region!r}; use a two-letter country code such as US or DE")
    return code
