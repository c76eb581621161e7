"""``column IN (values)`` in the form each database answers fastest.

A list of a thousand values written as a thousand parameters costs PostgreSQL about 5 ms to parse
and plan (more than looking the rows up); one array parameter, ``column = ANY(%s)``, costs almost
nothing. SQLite takes the expanded list, which it parses quickly.

Arrays go to PostgreSQL in psycopg's binary format (``PgArray``): the text format quotes each element
after testing it with a regular expression, which for a tick's tens of thousands of values costs
five times as much as the binary format's length prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import any_, bindparam
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import UserDefinedType


class PgArray(list[Any]):
    """A list psycopg sends to PostgreSQL as a binary array (element type from the values).

    Engines from ``automation.db.engine.make_engine`` register the dumper on each connection; on any
    other connection a ``PgArray`` is sent as a list, in the text format.
    """


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
