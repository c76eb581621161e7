"""``column IN (values)`` in the form each database answers fastest.

A list of a thousand values written as a thousand parameters costs PostgreSQL more to parse and
plan than looking the rows up; one array parameter, ``column = ANY(%s)``, costs almost
nothing. SQLite takes the expanded list, which it parses quickly.

Arrays (``PgArray``) go to PostgreSQL as array literals built here (``array_literal``): strings with
no quote or backslash in them, which ids, keys and names nearly always are, are joined in one step.
psycopg's own array dumpers handle one element at a time in Python, which for a tick's
hundreds of thousands of values costs far more.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from datetime import date, datetime
from typing import Any

from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy import any_, bindparam
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import UserDefinedType

from automation.db.types import to_utc_naive


class PgArray(list[Any]):
    """A list psycopg sends to PostgreSQL as an array literal (``ArrayLiteralDumper``).

    Engines from ``automation.db.connect.make_engine`` register the dumper on each connection; on any
    other connection a ``PgArray`` is sent as psycopg sends any list. The element type comes from
    the statement (``%s::text[]``, ``column = ANY(%s)``).
    """


def array_literal(values: Sequence[Any]) -> str:
    """PostgreSQL's text form of a one-dimensional array: every element quoted, None as NULL.

    Timestamps are written as naive UTC (how ``UTCDateTime`` stores them).
    """
    if not values:
        return "{}"
    quoted = _strings(values)
    if quoted is not None:
        return quoted
    return "{" + ",".join(map(_element, values)) + "}"


NUL = "\x00"  # stands for None while joining: no PostgreSQL text can hold it
_NULL = f'"{NUL}"'


def _strings(values: Sequence[Any]) -> str | None:
    """The literal in one join when every element is a string (or None) with nothing to escape in it;
    None otherwise."""
    nulls = values.count(None)
    try:
        joined = '","'.join([NUL if value is None else value for value in values] if nulls else values)
    except TypeError:  # not all strings
        return None
    if joined.count('"') != 2 * (len(values) - 1) or "\\" in joined or joined.count(NUL) != nulls:
        return None  # a quote, a backslash or a NUL of its own in some element
    literal = '{"' + joined + '"}'
    return literal.replace(_NULL, "NULL") if nulls else literal


@functools.lru_cache(maxsize=4096, typed=True)  # typed: True and 1 are different elements
def _element(value: Any) -> str:
    """One element's text; cached, as a column repeats its values (the tick's time, a stage, NULL)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text: str
    if isinstance(value, datetime):
        text = to_utc_naive(value).isoformat(" ")
    elif isinstance(value, date):
        text = value.isoformat()
    else:
        text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ArrayLiteralDumper(Dumper):
    """psycopg dumper of ``PgArray``: an array literal of unknown type, typed by the statement."""

    format = Format.TEXT

    def dump(self, obj: Any) -> bytes:
        return array_literal(obj).encode()


class _ArrayParameter(UserDefinedType[list[Any]]):
    """A bound list passed to the driver as a ``PgArray``, untouched by SQLAlchemy."""

    cache_ok = True

    def get_col_spec(self, **_: Any) -> str:
        return "TEXT[]"

    def bind_processor(self, dialect: Any) -> Callable[[Any], Any]:
        return lambda value: value if value is None else PgArray(value)


def among(column: Any, values: Collection[Any], dialect: str) -> ColumnElement[bool]:
    """``column`` is one of ``values`` (a condition for WHERE)."""
    if dialect == "postgresql":
        result: ColumnElement[bool] = column == any_(
            bindparam(None, value=list(values), type_=_ArrayParameter())
        )
        return result
    return column.in_(list(values))  # type: ignore[no-any-return]


def among_param(column: Any, name: str, dialect: str) -> ColumnElement[bool]:
    """``column`` is one of the values given at execution as the parameter ``name`` (a list)."""
    if dialect == "postgresql":
        result: ColumnElement[bool] = column == any_(bindparam(name, type_=_ArrayParameter()))
        return result
    return column.in_(bindparam(name, expanding=True))  # type: ignore[no-any-return]
