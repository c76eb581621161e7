"""Customer rows validated a batch at a time, column by column, with the answers of
:func:`~automation.ingest.rows.customer_row` row by row.

The rows of a batch that have the same columns (every row of a CSV file) are taken together, and each
column is converted at once: texts are stripped, and their lengths and characters checked, for the whole
column in one pass of the builtins; values that repeat (time zones, locales, owner emails, small numbers,
attributes) are converted once per distinct value; emails, phone numbers, timestamps and numbers go
through their quick paths. A value a quick check does not clear is converted by the field's own converter
(:data:`~automation.ingest.rows.CUSTOMER_CONVERTERS`), and a row with a value that converter refuses (or
a ``clear``, or an unknown column) is validated alone by ``customer_row``, which words its problems. So
every row comes out as ``customer_row`` gives it: the same values, the same columns in the same order,
the same problems.

A value converted once for many rows is one object shared by them (an ``attributes`` dict too): the
rows are read, not changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from math import isfinite
from typing import Any

from email_validator import EmailNotValidError

from automation.db.tables import CUSTOMER
from automation.ingest.rows import (
    _CONTROL,
    _DATE_RE,
    BAD_CHARS,
    CLEAR,
    CUSTOMER_CONVERTERS,
    CUSTOMER_FIELDS,
    PHONE_INPUT_MAX,
    RowError,
    _max_length,
    _normalized_email,
    _plain_phone,
    customer_row,
)

#: ``(values, refused)``: per row its converted value (None: not given), and the rows whose value the
#: field's converter refuses.
Converted = tuple[list[Any], set[int]]
#: A field's column converter: the column's raw values, the phone region, whether values are CSV text.
ColumnConverter = Callable[[Sequence[Any], "str | None", bool], Converted]


def customer_rows(
    raws: Sequence[Mapping[str, Any]], region: str | None, from_text: bool
) -> list[dict[str, Any] | RowError]:
    """Validate a batch of customer rows: per row, in order, what ``customer_row`` returns or raises."""
    results: list[dict[str, Any] | RowError | None] = [None] * len(raws)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, raw in enumerate(raws):
        groups.setdefault(tuple(raw), []).append(i)
    for names, indexes in groups.items():
        if "id" in names and all(name in _COLUMNS for name in names):
            rows = _by_columns(names, [raws[i] for i in indexes], region, from_text)
            for i, row in zip(indexes, rows, strict=True):
                results[i] = row
    for i, result in enumerate(results):
        if result is None:  # a refused value, a clear or an unknown column: the row alone, the long way
            try:
                results[i] = customer_row(raws[i], region, from_text)
            except RowError as exc:
                results[i] = exc
    return results  # type: ignore[return-value]  # every None was replaced


def _by_columns(
    names: tuple[str, ...], raws: list[Mapping[str, Any]], region: str | None, from_text: bool
) -> list[dict[str, Any] | None]:
    """The rows (all with the columns ``names``, in that order) converted column by column; None for
    a row any converter refused."""
    order = ("id", *(name for name in names if name != "id"))  # customer_row's order: id first
    columns = dict(zip(names, zip(*(raw.values() for raw in raws), strict=True), strict=True))
    converted = [_COLUMNS[name](columns[name], region, from_text) for name in order]
    refused: set[int] = set().union(*(bad for _values, bad in converted))
    ids = converted[0][0]
    refused.update(i for i, value in enumerate(ids) if value is None)  # id: missing (required)
    kept = [name for name in order if name != CLEAR]
    value_lists = [values for name, (values, _bad) in zip(order, converted, strict=True) if name != CLEAR]
    out: list[dict[str, Any] | None] = []
    for i, values in enumerate(zip(*value_lists, strict=True)):
        if i in refused:
            out.append(None)
        else:
            out.append({name: value for name, value in zip(kept, values, strict=True) if value is not None})
    return out


# -- the general ways ------------------------------------------------------------------------------
def _each(name: str, column: Sequence[Any], region: str | None, from_text: bool, repeats: bool) -> Converted:
    """Every value by the field's converter; ``repeats``: texts converted once per distinct text."""
    convert = CUSTOMER_CONVERTERS[name]
    seen: dict[str, Any] = {}
    values: list[Any] = []
    refused: set[int] = set()
    for i, raw in enumerate(column):
        if raw is None:
            values.append(None)
            continue
        if repeats and type(raw) is str and raw in seen:
            value = seen[raw]
        else:
            try:
                value = None if isinstance(raw, str) and not raw.strip() else convert(raw, region, from_text)
            except RowError:
                value = _REFUSED
            if repeats and type(raw) is str:
                seen[raw] = value
        if value is _REFUSED:
            refused.add(i)
            value = None
        values.append(value)
    return values, refused


_REFUSED = object()  # what _each keeps for a text the converter refused


def _repeating(name: str) -> ColumnConverter:
    """A column whose values repeat: each distinct text converted once."""
    return lambda column, region, from_text: _each(name, column, region, from_text, True)


def _texts(column: Sequence[Any]) -> list[str | None] | None:
    """Every value stripped (None: not given, as for the row), or None when a value is not text."""
    try:
        return [raw if raw is None else (raw.strip() or None) for raw in column]
    except AttributeError:  # a number, a list, an object (JSON Lines)
        return None


def _clean_texts(column: Sequence[Any], limit: int | None) -> list[str | None] | None:
    """The stripped texts when every one is within ``limit`` characters and holds no NUL or invalid
    UTF-8 (what ``_text`` checks), else None."""
    texts = _texts(column)
    if texts is None:
        return None
    present = [text for text in texts if text is not None]
    if not present:
        return texts
    if limit is not None and max(map(len, present)) > limit:
        return None
    if BAD_CHARS.search("\n".join(present)):
        return None
    return texts


# -- the quick ways --------------------------------------------------------------------------------
def _text_column(name: str) -> ColumnConverter:
    """A plain text column: the stripped texts, checked all at once."""
    limit = _max_length(CUSTOMER, name)

    def convert(column: Sequence[Any], region: str | None, from_text: bool) -> Converted:
        texts = _clean_texts(column, limit)
        if texts is None:
            return _each(name, column, region, from_text, False)
        return texts, set()

    return convert


def _id_column(column: Sequence[Any], region: str | None, from_text: bool) -> Converted:
    """Ids: texts without control characters (a missing one is refused by :func:`_by_columns`)."""
    texts = _clean_texts(column, _max_length(CUSTOMER, "id"))
    if texts is None or _CONTROL.search("".join(text for text in texts if text is not None)):
        return _each("id", column, region, from_text, False)
    return texts, set()


def _email_column(name: str) -> ColumnConverter:
    """Emails: the texts checked at once, each address normalized (repeated ones once)."""
    limit = _max_length(CUSTOMER, name)

    def convert(column: Sequence[Any], region: str | None, from_text: bool) -> Converted:
        texts = _clean_texts(column, limit)
        if texts is None:
            return _each(name, column, region, from_text, True)
        refused: set[int] = set()
        seen: dict[str, str | None] = {}
        values: list[Any] = []
        for i, text in enumerate(texts):
            if text is None:
                values.append(None)
                continue
            normalized = seen.get(text, "")
            if normalized == "":
                try:
                    normalized = _normalized_email(text)
                    if limit is not None and len(normalized) > limit:
                        normalized = None
                except EmailNotValidError:
                    normalized = None
                seen[text] = normalized
            if normalized is None:  # the converter's verdict too (the same steps): the row goes alone
                refused.add(i)
            values.append(normalized)
        return values, refused

    return convert


def _phone_column(column: Sequence[Any], region: str | None, from_text: bool) -> Converted:
    """Phone numbers: the texts checked at once, each number by the quick path where it applies."""
    texts = _clean_texts(column, PHONE_INPUT_MAX)
    if texts is None:
        return _each("phone", column, region, from_text, False)
    convert_one = CUSTOMER_CONVERTERS["phone"]
    refused: set[int] = set()
    values: list[Any] = []
    for i, text in enumerate(texts):
        value = None if text is None else _plain_phone(text)
        if value is None and text is not None:
            try:
                value = convert_one(column[i], region, from_text)
            except RowError:
                refused.add(i)
        values.append(value)
    return values, refused


def _quick(name: str, read: Callable[[str], Any]) -> ColumnConverter:
    """A column of texts each read by ``read`` (the field converter's own steps for a stripped text);
    the whole column goes through the converter when any value is not text or ``read`` refuses it."""

    def convert(column: Sequence[Any], region: str | None, from_text: bool) -> Converted:
        texts = _texts(column)
        if texts is not None:
            try:
                return [text if text is None else read(text) for text in texts], set()
            except (ValueError, OverflowError):
                pass
        return _each(name, column, region, from_text, False)

    return convert


def _timestamp(text: str) -> datetime:
    """``rows._timestamp`` for a stripped text: ISO 8601, naive as UTC, aware converted to UTC."""
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _number(text: str) -> float:
    """``rows._number`` for a stripped text: a finite float."""
    result = float(text)
    if not isfinite(result):
        raise ValueError(text)
    return result


def _date(text: str) -> date:
    """``rows._date`` for a stripped text (a text of the date's shape has no NUL or invalid UTF-8)."""
    if not _DATE_RE.fullmatch(text):
        raise ValueError(text)
    return date.fromisoformat(text)


def _clear_column(column: Sequence[Any], region: str | None, from_text: bool) -> Converted:
    """``clear``: a row that clears a column is refused here and validated alone."""
    texts = _texts(column)
    if texts is None:
        return [None] * len(column), {i for i, raw in enumerate(column) if raw is not None}
    return [None] * len(column), {i for i, text in enumerate(texts) if text is not None}


def _column_converter(name: str) -> ColumnConverter:
    match name:
        case "id":
            return _id_column
        case "email" | "owner_email":
            return _email_column(name)
        case "phone":
            return _phone_column
        case "signed_up_at" | "last_order_at" | "last_seen_at":
            return _quick(name, _timestamp)
        case "clv":
            return _quick(name, _number)
        case "birthday":
            return _quick(name, _date)
        case "timezone" | "locale" | "orders_count" | "nps" | "attributes":
            return _repeating(name)
        case _:
            return _text_column(name)


_COLUMNS: dict[str, ColumnConverter] = {name: _column_converter(name) for name in CUSTOMER_FIELDS} | {
    CLEAR: _clear_column
}
