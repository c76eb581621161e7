"""The few SQL constructs that differ between SQLite and PostgreSQL, compiled per dialect.

Every value reaches the database as a bound parameter; JSON paths are dotted key names checked by
the grammar (identifiers only) and still bound, never formatted into the SQL text.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Float, String, case, func, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine


class _JsonAccess(FunctionElement[Any]):
    """``attributes.a.b`` read as one JSON type; NULL when missing or of another type."""

    inherit_cache = True
    json_type: str = ""

    def __init__(self, column: ColumnElement[Any], dotted_path: str) -> None:
        from sqlalchemy import bindparam

        super().__init__(column, bindparam(None, dotted_path, type_=String(), unique=True))


class json_number(_JsonAccess):
    type: TypeEngine[Any] = Float()
    name = "json_number"
    json_type = "number"
    inherit_cache = True


class json_text(_JsonAccess):
    type: TypeEngine[Any] = String()
    name = "json_text"
    json_type = "string"
    inherit_cache = True


class json_bool(_JsonAccess):
    type: TypeEngine[Any] = Boolean()
    name = "json_bool"
    json_type = "boolean"
    inherit_cache = True


class json_any(_JsonAccess):
    """The value as text, NULL when the key is missing or JSON null (for ``is null``)."""

    type: TypeEngine[Any] = String()
    name = "json_any"
    json_type = "any"
    inherit_cache = True


_SQLITE_TYPES = {"number": ("integer", "real"), "string": ("text",), "boolean": ("true", "false")}
_PG_TYPES = {"number": "number", "string": "string", "boolean": "boolean"}


@compiles(_JsonAccess, "sqlite")
def _json_sqlite(element: _JsonAccess, compiler: Any, **kw: Any) -> str:
    column, path = list(element.clauses)
    full_path = literal_column("'$.'").concat(path)
    value = func.json_extract(column, full_path)
    if element.json_type == "any":
        return str(compiler.process(value, **kw))
    kind = func.json_type(column, full_path)
    if element.json_type == "boolean":
        expr: ColumnElement[Any] = case((kind == "true", 1), (kind == "false", 0))
    else:
        expr = case((kind.in_(_SQLITE_TYPES[element.json_type]), value))
    return str(compiler.process(expr, **kw))


@compiles(_JsonAccess, "postgresql")
def _json_pg(element: _JsonAccess, compiler: Any, **kw: Any) -> str:
    column, path = list(element.clauses)
    keys = func.string_to_array(path, literal_column("'.'"))
    as_text = column.op("#>>")(keys)
    if element.json_type == "any":
        return str(compiler.process(as_text, **kw))
    kind = func.jsonb_typeof(column.op("#>")(keys))
    target = {"number": "numeric", "string": "text", "boolean": "boolean"}[element.json_type]
    cast_sql = f"CAST({compiler.process(as_text, **kw)} AS {target})"
    return f"CASE WHEN {compiler.process(kind == _PG_TYPES[element.json_type], **kw)} THEN {cast_sql} END"


class month_day(FunctionElement[str]):
    """'MM-DD' of a date or timestamp."""

    type: TypeEngine[Any] = String()
    name = "month_day"
    inherit_cache = True


@compiles(month_day, "sqlite")
def _month_day_sqlite(element: month_day, compiler: Any, **kw: Any) -> str:
    (column,) = list(element.clauses)
    return f"strftime('%m-%d', {compiler.process(column, **kw)})"


@compiles(month_day, "postgresql")
def _month_day_pg(element: month_day, compiler: Any, **kw: Any) -> str:
    (column,) = list(element.clauses)
    return f"to_char({compiler.process(column, **kw)}, 'MM-DD')"
