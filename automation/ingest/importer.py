"""Import customers and events from CSV or JSON Lines files.

Files are streamed: rows are read one at a time, validated, and written in batches of
``BATCH_SIZE`` rows, each batch in its own transaction. A bad row is rejected (reported with its
line number) and never stops the good rows. A file-level problem (missing or unreadable file,
unknown format, empty file, unknown, repeated or missing CSV column) raises
:class:`~automation.errors.InputError` before any row is written. JSON Lines has no header, so
there an unknown key rejects its row. Formats are chosen by extension: ``.csv`` (a header row;
JSON columns hold JSON text) or ``.jsonl``/``.ndjson`` (one object a line).

Sizes are bounded in every format: a physical line holds at most ``MAX_LINE_BYTES`` bytes (its
line ending not counted; a longer line is skipped without being read whole and rejects its row),
and so are a JSON Lines row, an ``attributes`` or ``properties`` JSON value and a CSV field (one
spanning lines too: a longer field rejects its row). Text columns hold at most their
``String(length)`` of :mod:`automation.db.tables`, checked before any other validation. Ids
(customer ``id``, event ``customer_id``) must not contain control characters (Unicode category Cc,
U+2028, U+2029).

Customers are upserted by ``id``, rows in file order. A value that is not given -- an empty CSV
cell, a whitespace-only text, a JSON null, or a column absent from the file or the object -- keeps
what is stored; a new customer gets the column's default (``timezone`` UTC, ``orders_count`` 0,
``attributes`` {}, the others null). A given value replaces the stored one. The pseudo-column
``clear`` sets nullable columns to null: a CSV cell listing column names separated by spaces or
commas (``email phone``), or a JSON list (``"clear": ["email", "phone"]``). Clearing ``id``, a
column with a default (write the value instead), an unknown column, or a column the same row gives a
value rejects the row; :func:`customer_columns` holds these rules. Events are appended and must name
a customer that is already stored.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any, BinaryIO, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Engine, Executable, String, Table, TypeDecorator, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from automation.db.in_list import among_param
from automation.db.tables import Customer, Event
from automation.errors import DatabaseError, InputError, Problem

BATCH_SIZE = 2_000
MAX_STORED_PROBLEMS = 1_000
PROGRESS_EVERY = 1_000  # rows between progress callbacks
INT32_MAX = 2_147_483_647
MAX_LINE_BYTES = 131_072  # 128 KiB a physical line, its line ending not counted
_SKIP_CHUNK = 65_536  # bytes read at a time when skipping the rest of a longer line
_PHONE_INPUT_MAX = 64  # characters of a phone number as written; stored E.164 is at most 16
_SHOWN_MAX = 80  # characters of a bad value quoted in a problem

#: ``progress(rows_processed, bytes_read, total_bytes)``
ProgressCallback = Callable[[int, int, int], None]

Kind = Literal["customers", "events"]

CUSTOMER_TABLE: Table = Customer.__table__  # type: ignore[attr-defined]
EVENT_TABLE: Table = Event.__table__  # type: ignore[attr-defined]

#: Importable customer fields: every column of ``customer`` except the bookkeeping ``updated_at``.
CUSTOMER_FIELDS: tuple[str, ...] = tuple(c.name for c in CUSTOMER_TABLE.columns if c.name != "updated_at")
#: Importable event fields (the surrogate key ``id`` is generated).
EVENT_FIELDS: tuple[str, ...] = tuple(c.name for c in EVENT_TABLE.columns if c.name != "id")
#: The pseudo-column of a customer row naming the columns to set to null.
CLEAR = "clear"
#: What a customer row may hold.
CUSTOMER_INPUT_FIELDS: tuple[str, ...] = (*CUSTOMER_FIELDS, CLEAR)

CUSTOMER_DEFAULTS: dict[str, Any] = {"timezone": "UTC", "orders_count": 0, "attributes": {}}

_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates (invalid UTF-8 in the file)
_INVALID_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of undecodable bytes
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_INT_RE = re.compile(r"[+-]?\d+")
_LOCALE_RE = re.compile(r"[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # Unicode category Cc, line/paragraph separators
_CLEAR_SEPARATORS = re.compile(r"[\s,]+")
_LONG_LINE = f"the line is longer than {MAX_LINE_BYTES:,} bytes"


@dataclass
class ImportReport:
    """What an import did: rows read, imported and rejected, and the first rejected rows."""

    path: Path
    kind: Kind
    read: int = 0
    imported: int = 0  # events written, or distinct customers written
    rejected: int = 0
    problems: list[Problem] = field(default_factory=list)  # at most MAX_STORED_PROBLEMS
    repeated: int = 0  # customer ids given by more than one imported row
    _ids: set[str] = field(default_factory=set, repr=False)  # customer ids written
    _repeated: set[str] = field(default_factory=set, repr=False)

    def count_customers(self, ids: Collection[str], repeated: Iterable[str]) -> None:
        """Count the ids of a written batch; ``repeated``: those more than one row of the batch gave."""
        again = {i for i in ids if i in self._ids}.union(repeated) - self._repeated
        self._repeated |= again
        self._ids.update(ids)
        self.imported, self.repeated = len(self._ids), len(self._repeated)

    def reject(self, line: int, message: str) -> None:
        """Count a rejected row; keep its problem while under the cap."""
        self.rejected += 1
        if len(self.problems) < MAX_STORED_PROBLEMS:
            self.problems.append(Problem(self.path, line, 0, message))

    @property
    def ok(self) -> bool:
        """True when no row was rejected."""
        return self.rejected == 0

    def summary(self) -> str:
        """One line, e.g. ``imported 2,998 customers (1 repeated id: the last row wins), rejected 2 rows``."""
        kind = self.kind if self.imported != 1 else self.kind.removesuffix("s")
        rows = "row" if self.rejected == 1 else "rows"
        repeated = ""
        if self.repeated:
            ids = "id" if self.repeated == 1 else "ids"
            repeated = f" ({self.repeated:,} repeated {ids}: the last row wins)"
        return f"imported {self.imported:,} {kind}{repeated}, rejected {self.rejected:,} {rows}"


class RowError(ValueError):
    """A row cannot be imported; the message says why."""


# ---------------------------------------------------------------------------------------------
# Public API


def import_customers(
    engine: Engine,
    path: Path | str,
    progress: ProgressCallback | None = None,
    *,
    default_region: str | None = None,
) -> ImportReport:
    """Upsert customers from a CSV or JSON Lines file into ``customer``.

    ``default_region`` (ISO 3166 code such as ``US``) is used to read phone numbers written
    without a leading ``+``; without it such numbers are rejected.
    """
    region = _check_region(default_region)
    return _run(engine, Path(path), "customers", progress, partial(_customer_row, region=region))


def import_events(engine: Engine, path: Path | str, progress: ProgressCallback | None = None) -> ImportReport:
    """Append events from a CSV or JSON Lines file to ``event``; each must name a stored customer."""
    return _run(engine, Path(path), "events", progress, _event_row)


# ---------------------------------------------------------------------------------------------
# Reading


class _ByteCounter:
    """Yields the decoded lines of a binary file and counts the bytes read so far.

    A line longer than ``MAX_LINE_BYTES`` is never held whole: the rest of it is skipped in chunks,
    an empty line is yielded in its place, and its number is kept for :meth:`take_long_lines`.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.bytes_read = 0
        self.line = 0  # number of the last line yielded
        self._long: list[int] = []

    def take_long_lines(self) -> list[int]:
        """Numbers of the too long lines yielded since the last call."""
        taken, self._long = self._long, []
        return taken

    def __iter__(self) -> Iterator[str]:
        while raw := self._fh.readline(MAX_LINE_BYTES + 2):  # room for a CRLF line ending
            self.bytes_read += len(raw)
            self.line += 1
            if self.line == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # UTF-8 byte order mark
            if _content_length(raw) > MAX_LINE_BYTES:
                if not raw.endswith(b"\n"):
                    self._skip_rest_of_line()
                self._long.append(self.line)
                yield "\n"
                continue
            # Invalid UTF-8 becomes lone surrogates, so the row holding it is rejected, not the file.
            yield raw.decode("utf-8", errors="surrogateescape")

    def _skip_rest_of_line(self) -> None:
        while chunk := self._fh.readline(_SKIP_CHUNK):
            self.bytes_read += len(chunk)
            if chunk.endswith(b"\n"):
                return


def _content_length(raw: bytes) -> int:
    """Bytes of a line without its line ending."""
    if raw.endswith(b"\r\n"):
        return len(raw) - 2
    return len(raw) - raw.endswith(b"\n")


def _format(path: Path) -> Literal["csv", "jsonl"]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    shown = suffix or "(no extension)"
    raise InputError(f"{path}: unknown file format {shown!r}; use .csv, .jsonl or .ndjson")


def _unknown_field(name: str, fields: tuple[str, ...]) -> str:
    text = f"unknown column {_shown(name)}"
    close = difflib.get_close_matches(name.strip().lower(), fields, n=1, cutoff=0.6)
    if close:
        return text + f" (did you mean {close[0]!r}?)"
    return text + "; known columns: " + ", ".join(fields)


def _csv_rows(
    path: Path, lines: _ByteCounter, fields: tuple[str, ...], required: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line, row, error)`` per data row; file-level problems raise InputError."""
    # No field can be longer than a line, unless it spans lines (a quote left open, say).
    previous_limit = csv.field_size_limit(MAX_LINE_BYTES)
    try:
        reader = csv.reader(lines)
        names = _csv_header(path, reader, lines, fields, required)
        yield from _csv_records(path, reader, lines, names)
    finally:
        csv.field_size_limit(previous_limit)


def _csv_header(
    path: Path,
    reader: Iterator[list[str]],
    lines: _ByteCounter,
    fields: tuple[str, ...],
    required: tuple[str, ...],
) -> list[str]:
    """The column names of the header row; a bad header raises InputError."""
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InputError(f"{path}:1: cannot read the CSV header: {exc}") from exc
    if lines.take_long_lines():
        raise InputError(f"{path}:1: the header line is longer than {MAX_LINE_BYTES:,} bytes")
    if header is None:
        raise InputError(f"{path}: the file is empty; expected a header row naming the columns")
    names = [h.strip() for h in header]
    seen: set[str] = set()
    for name in names:
        if _BAD_CHARS.search(name):
            raise InputError(f"{path}:1: the header is not valid UTF-8 text")
        if name not in fields:
            raise InputError(f"{path}:1: {_unknown_field(name, fields)}")
        if name in seen:
            raise InputError(f"{path}:1: column {name!r} appears twice in the header")
        seen.add(name)
    missing = [r for r in required if r not in seen]
    if missing:
        raise InputError(f"{path}:1: missing required column(s): {', '.join(missing)}")
    return names


def _csv_records(
    path: Path, reader: Iterator[list[str]], lines: _ByteCounter, names: list[str]
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line, row, error)`` per data row after the header."""
    last_line = lines.line
    while True:
        error = None
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            cells, error = [], _csv_error(exc)
            if lines.line == last_line:  # nothing was read: do not try again forever
                raise InputError(f"{path}:{last_line + 1}: cannot read the CSV file: {exc}") from exc
        line, last_line = last_line + 1, lines.line
        long_lines = lines.take_long_lines()
        if long_lines:
            yield long_lines[0], None, _LONG_LINE
        elif error is not None:
            yield line, None, error
        elif not cells:  # blank line
            continue
        elif len(cells) != len(names):
            yield line, None, f"has {len(cells)} fields, the header has {len(names)}"
        else:
            yield line, {n: (c if c != "" else None) for n, c in zip(names, cells, strict=True)}, None


def _csv_error(exc: csv.Error) -> str:
    if "field larger than field limit" in str(exc):
        return f"a field is longer than {MAX_LINE_BYTES:,} characters (is a quote left open?)"
    return f"cannot read the CSV row: {exc}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _jsonl_rows(
    lines: _ByteCounter, fields: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line, row, error)`` per non-blank line."""
    for text in lines:
        line = lines.line
        if lines.take_long_lines():
            yield line, None, _LONG_LINE
            continue
        if not text.strip():
            continue
        if _INVALID_UTF8.search(text):
            yield line, None, "not valid UTF-8"
            continue
        try:
            obj = _json_loads(text)
        except (ValueError, RecursionError) as exc:
            yield line, None, f"not valid JSON: {exc}"
            continue
        if not isinstance(obj, dict):
            yield line, None, f"expected a JSON object, got {_json_type(obj)}"
            continue
        unknown = [k for k in obj if k not in fields]
        if unknown:
            # No header in JSON Lines: an unknown key rejects its row, with the same suggestion.
            yield line, None, _unknown_field(unknown[0], fields)
            continue
        yield line, obj, None


# ---------------------------------------------------------------------------------------------
# Field validation (a value is a CSV string, a JSON value, or None)


def _json_type(value: Any) -> str:
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
        raise RowError(f"{name}: expected text, got {_json_type(value)}")
    text = value.strip()
    if not text:
        return None
    if max_length is not None and len(text) > max_length:  # before any costlier check
        raise RowError(f"{name}: longer than {max_length} characters")
    if _BAD_CHARS.search(text):
        raise RowError(f"{name}: contains a NUL character or invalid UTF-8")
    return text


@lru_cache(maxsize=4096)  # owner emails repeat on many rows
def _normalized_email(text: str) -> str:
    """email-validator's normalized form (syntax only); raises EmailNotValidError."""
    return validate_email(text, check_deliverability=False).normalized


def _email(name: str, value: Any) -> str | None:
    limit = _max_length(CUSTOMER_TABLE, name)
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
    text = _text("phone", value, _PHONE_INPUT_MAX)
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


@lru_cache(maxsize=1024)
def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _timezone(value: Any) -> str | None:
    text = _text("timezone", value, _max_length(CUSTOMER_TABLE, "timezone"))
    if text is not None and not _zone_ok(text):
        raise RowError(f"timezone: unknown time zone {text!r} (use an IANA name such as Europe/Berlin)")
    return text


def _locale(value: Any) -> str | None:
    text = _text("locale", value, _max_length(CUSTOMER_TABLE, "locale"))
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
        raise RowError(f"{name}: expected a number, got {_json_type(value)}")
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
        raise RowError(f"{name}: expected an ISO 8601 timestamp, got {_json_type(value)}")
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
            value = _json_loads(value)
        except (ValueError, RecursionError) as exc:
            raise RowError(f"{name}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RowError(f"{name}: expected a JSON object, got {_json_type(value)}")
    try:
        encoded = json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        raise RowError(f"{name}: cannot be stored as JSON") from None
    if _BAD_CHARS.search(encoded) or "\\u0000" in encoded:
        raise RowError(f"{name}: contains a NUL character or invalid UTF-8")
    return value


def _id(name: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # JSON Lines may carry numeric ids
    text = _text(name, value, _max_length(CUSTOMER_TABLE, "id"))
    if text is None:
        raise RowError(f"{name}: missing (required)")
    control = _CONTROL.search(text)
    if control:
        raise RowError(f"{name}: contains a control character (U+{ord(control.group()):04X})")
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
            return _text(name, value, _max_length(CUSTOMER_TABLE, name))


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
    problems += [_unknown_field(name, CUSTOMER_INPUT_FIELDS) for name in unknown]
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
        return [], [f"{CLEAR}: expected a list of column names, got {_json_type(value)} {_shown(value)}"]
    return list(dict.fromkeys(name for name in names if name)), []


def _clear_problem(name: str) -> str | None:
    if name in _NOT_CLEARABLE:
        return f"{CLEAR}: {_NOT_CLEARABLE[name]}"
    if name not in CUSTOMER_FIELDS:
        return f"{CLEAR}: {_unknown_field(name, CUSTOMER_FIELDS)}"
    return None


def _default_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


#: Columns ``clear`` refuses, and why.
_NOT_CLEARABLE: dict[str, str] = {"id": "id cannot be cleared (it identifies the customer)"} | {
    name: f"{name} has a default; write the value instead ({name}: write {_default_text(value)})"
    for name, value in CUSTOMER_DEFAULTS.items()
}


def _customer_row(raw: Mapping[str, Any], region: str | None, from_text: bool) -> dict[str, Any]:
    """Validate one customer row: the given columns converted, the cleared ones None."""
    columns = customer_columns(raw)
    fields = [("id", partial(_id, "id", columns.given.get("id")))] + [
        (name, partial(_customer_value, name, value, region, from_text))
        for name, value in columns.given.items()
        if name != "id"
    ]
    return _collect(fields, columns.problems) | dict.fromkeys(columns.cleared)


def _event_name(value: Any) -> str:
    name = _text("name", value, _max_length(EVENT_TABLE, "name"))
    if name is None:
        raise RowError("name: missing (required)")
    return name


def _event_row(raw: Mapping[str, Any], from_text: bool) -> dict[str, Any]:
    """Validate one event row."""
    return _collect(
        [
            ("customer_id", partial(_id, "customer_id", raw.get("customer_id"))),
            ("name", partial(_event_name, raw.get("name"))),
            ("occurred_at", partial(_timestamp, "occurred_at", raw.get("occurred_at"), True)),
            ("properties", partial(_object, "properties", raw.get("properties"), from_text)),
        ]
    )


def _check_region(region: str | None) -> str | None:
    if region is None:
        return None
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise InputError(f"unknown phone region {region!r}; use a two-letter country code such as US or DE")
    return code


# ---------------------------------------------------------------------------------------------
# Writing


def _dialect_insert(name: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise DatabaseError(f"unsupported database {name!r}")


_CUSTOMER_BLANK: dict[str, Any] = {name: None for name in CUSTOMER_FIELDS} | CUSTOMER_DEFAULTS


def _write_customers(conn: Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Upsert rows (no id twice: PostgreSQL refuses to update a row twice in one statement)."""
    now = datetime.now(UTC)
    # Group rows by the columns they carry: those columns, and only those, replace stored values.
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(_CUSTOMER_BLANK | row | {"updated_at": now})
    for columns, params in groups.items():
        conn.execute(_customer_upsert(conn.dialect.name, columns), params)


@lru_cache(maxsize=512)  # rows without a value for some columns make a few dozen column sets a file
def _customer_upsert(dialect: str, columns: tuple[str, ...]) -> Executable:
    """The upsert that replaces ``columns`` (and ``updated_at``) of a stored customer."""
    insert = _dialect_insert(dialect, CUSTOMER_TABLE)
    updates = {c: insert.excluded[c] for c in (*columns, "updated_at") if c != "id"}
    return insert.on_conflict_do_update(index_elements=[CUSTOMER_TABLE.c.id], set_=updates)


def _write_events(conn: Connection, batch: list[tuple[int, dict[str, Any]]], report: ImportReport) -> int:
    """Append a batch of events; rows naming an unknown customer are rejected. Returns rows written."""
    ids = sorted({row["customer_id"] for _line, row in batch})
    query = select(CUSTOMER_TABLE.c.id).where(among_param(CUSTOMER_TABLE.c.id, "ids", conn.dialect.name))
    known = set(conn.execute(query, {"ids": ids}).scalars())
    rows = []
    for line, row in batch:
        if row["customer_id"] in known:
            rows.append(row)
        else:
            report.reject(line, f"unknown customer {row['customer_id']!r}; import customers first")
    if rows:
        conn.execute(EVENT_TABLE.insert(), rows)
    return len(rows)


# ---------------------------------------------------------------------------------------------
# The loop


def _open(path: Path) -> tuple[BinaryIO, int]:
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return fh, os.fstat(fh.fileno()).st_size


@dataclass
class _Batch:
    """Valid rows waiting for the next write, and the lines they were read from.

    Customers are keyed by id: a later row for an id already in the batch is merged into the earlier
    one, its columns replacing, as writing the two rows one after the other would.
    """

    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    repeated: set[str] = field(default_factory=set)  # ids given by more than one row of the batch
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    rows: int = 0  # valid rows, customers merged by id still counted
    first_line: int = 0
    last_line: int = 0

    def add(self, kind: Kind, line: int, row: dict[str, Any]) -> None:
        self.rows += 1
        self.first_line = self.first_line or line
        self.last_line = line
        if kind == "events":
            self.events.append((line, row))
            return
        earlier = self.customers.pop(row["id"], None)  # added again last: file order
        if earlier is not None:
            self.repeated.add(row["id"])
            row = earlier | row
        self.customers[row["id"]] = row

    def clear(self) -> None:
        self.customers.clear()
        self.repeated.clear()
        self.events.clear()
        self.rows = self.first_line = self.last_line = 0


def _flush(engine: Engine, path: Path, kind: Kind, batch: _Batch, report: ImportReport) -> None:
    """Write the batch in one transaction and count what was written."""
    if not batch.rows:
        return
    try:
        with engine.begin() as conn:
            if kind == "customers":
                _write_customers(conn, batch.customers.values())
            else:
                report.imported += _write_events(conn, batch.events, report)
    except DBAPIError as exc:
        first, last = batch.first_line, batch.last_line
        raise DatabaseError(
            f"{path}: the database refused the rows of lines {first}-{last} "
            f"(rows before line {first} were imported): {exc.orig}"
        ) from exc
    if kind == "customers":
        report.count_customers(batch.customers.keys(), batch.repeated)
    batch.clear()


def _rows(
    path: Path, fmt: Literal["csv", "jsonl"], kind: Kind, lines: _ByteCounter
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    fields: tuple[str, ...] = CUSTOMER_INPUT_FIELDS
    required: tuple[str, ...] = ("id",)
    if kind == "events":
        fields, required = EVENT_FIELDS, ("customer_id", "name", "occurred_at")
    return _csv_rows(path, lines, fields, required) if fmt == "csv" else _jsonl_rows(lines, fields)


def _run(
    engine: Engine,
    path: Path,
    kind: Kind,
    progress: ProgressCallback | None,
    validate: Callable[..., dict[str, Any]],
) -> ImportReport:
    fmt = _format(path)
    fh, total = _open(path)
    report = ImportReport(path=path, kind=kind)
    batch = _Batch()
    with fh:
        lines = _ByteCounter(fh)
        try:
            for line, raw, error in _rows(path, fmt, kind, lines):
                report.read += 1
                if error is None and raw is not None:
                    try:
                        batch.add(kind, line, validate(raw, from_text=fmt == "csv"))
                    except RowError as exc:
                        error = str(exc)
                if error is not None:
                    report.reject(line, error)
                if batch.rows >= BATCH_SIZE:
                    _flush(engine, path, kind, batch, report)
                if progress is not None and report.read % PROGRESS_EVERY == 0:
                    progress(report.read, lines.bytes_read, total)
        except InputError:
            _flush(engine, path, kind, batch, report)  # a CSV file broken mid-way: keep the rows before
            raise
        _flush(engine, path, kind, batch, report)
    if progress is not None:
        progress(report.read, lines.bytes_read, max(total, lines.bytes_read))
    # Unknown customers are found when a batch is written: put the problems back in file order.
    report.problems.sort(key=lambda p: p.line)
    return report
