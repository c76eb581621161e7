"""Writing validated rows: customers upserted by ``id``, events appended to a stored customer.

A customer row replaces exactly the columns it carries (and ``updated_at``); a new customer gets the
defaults for the others. The rows of a call go into a temporary table (SQLite: inserts of many rows;
PostgreSQL: ``COPY``), each with a bit mask of the columns it carries, and are upserted from it in one
statement whatever columns they carry. Events naming a customer that is not stored are handed back to
the caller as rejected. Events carrying a ``message_id`` (the HTTP API's) are written once: a second one
with the same id is skipped by the database's UNIQUE index, so a sender's retry stores nothing new.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache
from itertools import repeat
from typing import Any

from sqlalchemy import Date, String, TypeDecorator, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError

from automation.db.in_list import among_param
from automation.db.tables import CUSTOMER, EVENT
from automation.db.types import UTCDateTime, to_utc_naive
from automation.errors import DatabaseError
from automation.ingest.rows import CUSTOMER_DEFAULTS, CUSTOMER_FIELDS

_CUSTOMER_BLANK: dict[str, Any] = {name: None for name in CUSTOMER_FIELDS} | CUSTOMER_DEFAULTS
#: Every column an upsert writes, in order; a row's other values are its ``given`` bit mask.
CUSTOMER_COLUMNS: tuple[str, ...] = (*CUSTOMER_FIELDS, "updated_at")
_GIVEN_BIT: dict[str, int] = {name: 1 << i for i, name in enumerate(CUSTOMER_FIELDS)}


def write_customers(conn: Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Upsert rows (no id twice: PostgreSQL refuses to update a row twice in one statement).

    A new customer gets the row's columns and the defaults for the others; a stored one gets the row's
    columns, and only those, replaced (and ``updated_at``). All rows go in one statement whatever
    columns they carry: each row brings a bit mask of the columns it gives, which the ``DO UPDATE``
    reads (SQLite: inserts of many rows into a temporary table; PostgreSQL: ``COPY`` into one; then one
    ``INSERT ... SELECT ... ON CONFLICT``).
    """
    write_prepared_customers(conn, prepare_customers(conn.dialect, rows))


@dataclass(frozen=True)
class PreparedCustomers:
    """Customer rows in the form the upsert binds (see :func:`prepare_customers`): per row its values
    in :data:`CUSTOMER_COLUMNS` order, then its ``given`` bit mask."""

    dialect: str
    params: list[tuple[Any, ...]]


def prepare_customers(dialect: Dialect, rows: Iterable[dict[str, Any]]) -> PreparedCustomers:
    """The rows converted as SQLAlchemy would bind them for ``dialect`` (JSON text, naive UTC times),
    ``updated_at`` now.

    This is the costly part of writing customers; it needs no connection, so a caller can do it on its
    own thread while a connection writes the rows before."""
    return PreparedCustomers(dialect.name, _customer_params(dialect)(rows, datetime.now(UTC)))


def write_prepared_customers(conn: Connection, prepared: PreparedCustomers) -> None:
    """Upsert prepared rows (see :func:`write_customers`)."""
    if conn.dialect.name != prepared.dialect:
        raise ValueError(f"rows prepared for {prepared.dialect}, written to {conn.dialect.name}")
    if not prepared.params:
        return
    if conn.dialect.name == "postgresql":
        _copy_upsert(conn, prepared.params)
    elif conn.dialect.name == "sqlite":
        _staged_upsert(conn, prepared.params)
    else:
        raise DatabaseError(f"unsupported database {conn.dialect.name!r}")


@lru_cache(maxsize=4)
def _customer_params(
    dialect: Dialect,
) -> Callable[[Iterable[dict[str, Any]], datetime], list[tuple[Any, ...]]]:
    """A function from rows and their ``updated_at`` to the upsert's parameters: per row its values in
    :data:`CUSTOMER_COLUMNS` order as SQLAlchemy would bind them for ``dialect`` (JSON text, naive UTC
    times; the defaults for the columns it does not give), then its ``given`` bit mask.

    The rows that give the same columns (in the same order) are converted together, column by column:
    a column a group does not give holds the default on every row, converted once."""
    processors = [_bind_processor(dialect, name) for name in CUSTOMER_COLUMNS]
    *field_processors, updated_at_processor = processors
    processor_of = dict(zip(CUSTOMER_FIELDS, field_processors, strict=True))
    defaults = {name: _apply(processor_of[name], _CUSTOMER_BLANK[name]) for name in CUSTOMER_FIELDS}

    def group_params(
        names: tuple[str, ...],
        rows: list[dict[str, Any]],
        tail: tuple[Any, ...],
        shared: dict[str, Callable[[Any], Any]],
    ) -> list[Any]:
        count = len(rows)
        given = dict(zip(names, zip(*(row.values() for row in rows), strict=True), strict=True))
        columns: list[Iterable[Any]] = []
        for name in CUSTOMER_FIELDS:
            values = given.get(name)
            if values is None:
                columns.append(repeat(defaults[name], count))
            else:
                processor = shared.get(name) or processor_of[name]
                columns.append(values if processor is None else map(processor, values))
        columns += [repeat(value, count) for value in tail]
        return list(zip(*columns, strict=True))

    def params(rows: Iterable[dict[str, Any]], now: datetime) -> list[tuple[Any, ...]]:
        updated_at = now if updated_at_processor is None else updated_at_processor(now)
        rows = list(rows)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(tuple(row), []).append(i)
        out: list[tuple[Any, ...]] = [()] * len(rows)
        shared = {  # the rows hold every object until the end
            name: _once_per_object(processor)
            for name in _SHARED_VALUES
            if (processor := processor_of[name]) is not None
        }
        for names, indexes in groups.items():
            mask = sum(_GIVEN_BIT[name] for name in set(names))
            values = group_params(names, [rows[i] for i in indexes], (updated_at, mask), shared)
            for i, row_values in zip(indexes, values, strict=True):
                out[i] = row_values  # in the rows' order
        return out

    return params


#: Columns whose values validation gives as one object for many rows (the same ``attributes`` text).
_SHARED_VALUES = frozenset({"attributes"})


def _once_per_object(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``processor`` called once per distinct object (for rows that hold every object meanwhile: an
    object's id is not reused while it lives)."""
    done: dict[int, Any] = {}

    def process(value: Any) -> Any:
        key = id(value)
        if key not in done:
            done[key] = processor(value)
        return done[key]

    return process


def _bind_processor(dialect: Dialect, name: str) -> Callable[[Any], Any] | None:
    """SQLAlchemy's bind processor of a customer column, or a quicker function giving the same stored
    values, checked on sample values before it is used: timestamps as the text of their naive UTC form
    (what SQLAlchemy writes to SQLite; PostgreSQL's ``COPY`` reads that text into a ``timestamp``), and
    on SQLite dates as ``YYYY-MM-DD``."""
    column_type = CUSTOMER.c[name].type
    processor = column_type.dialect_impl(dialect).bind_processor(dialect)
    if isinstance(column_type, UTCDateTime) and dialect.name in ("sqlite", "postgresql"):
        return _checked(_utc_text, processor, _TIMESTAMP_SAMPLES)
    if isinstance(column_type, Date) and dialect.name == "sqlite":
        return _checked(_iso_date, processor, _DATE_SAMPLES)
    return processor


def _checked(
    quick: Callable[[Any], Any], processor: Callable[[Any], Any] | None, samples: list[Any]
) -> Callable[[Any], Any] | None:
    """``quick`` when it gives the text of what ``processor`` gives on every sample, else ``processor``."""

    def text(value: Any) -> Any:
        return value.isoformat(" ", "microseconds") if isinstance(value, datetime) else value

    if all(quick(value) == text(_apply(processor, value)) for value in samples):
        return quick
    return processor


_TIMESTAMP_SAMPLES: list[datetime | None] = [
    datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    datetime(2024, 5, 1, 12, 30, 1, 250, tzinfo=UTC),
    datetime(1, 1, 1, 0, 0, 0, 1),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5))),
    datetime(2024, 2, 29, 1, 2, 3, 456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    None,
]
_DATE_SAMPLES: list[date | None] = [
    date(1990, 2, 28),
    date(1, 1, 1),
    date(999, 12, 31),
    date(9999, 12, 31),
    None,
]


def _utc_text(value: datetime | None) -> str | None:
    """A timestamp's naive UTC form as text, ``YYYY-MM-DD HH:MM:SS.ffffff`` (what SQLAlchemy writes to SQLite
    for a ``UTCDateTime``). A value in UTC already (as validation gives them) loses its ``+00:00``."""
    if value is None:
        return None
    if value.tzinfo is UTC:
        return value.isoformat(" ", "microseconds")[:-6]
    return to_utc_naive(value).isoformat(" ", "microseconds")


def _iso_date(value: date | None) -> str | None:
    """What SQLAlchemy writes to SQLite for a ``Date``: ``YYYY-MM-DD``."""
    return None if value is None else value.isoformat()


#: Rows per INSERT into SQLite's staging table: 20 parameters each, within SQLite's 32,766.
_SQLITE_ROWS_PER_INSERT = 1_000


def _staged_upsert(conn: Connection, params: list[tuple[Any, ...]]) -> None:
    """SQLite: the rows inserted into a temporary table in statements of many rows, then upserted from
    it in one statement. A few long statements rather than one per row: the driver lets other
    threads run while SQLite works on a statement, so the importer's validation goes on meanwhile."""
    conn.exec_driver_sql(_SQLITE_CREATE_IMPORT_TABLE)
    for start in range(0, len(params), _SQLITE_ROWS_PER_INSERT):
        chunk = params[start : start + _SQLITE_ROWS_PER_INSERT]
        flat = tuple(value for values in chunk for value in values)
        conn.exec_driver_sql(_sqlite_stage(len(chunk)), flat)
    conn.exec_driver_sql(_upsert_from_stage(f"temp.{_IMPORT_TABLE}", "WHERE true "))
    conn.exec_driver_sql(f"DELETE FROM temp.{_IMPORT_TABLE}")  # for a second call in the transaction


#: The staging table of one upsert (SQLite: ``temp.customer_import``; PostgreSQL: emptied at commit).
_IMPORT_TABLE = "customer_import"
_SQLITE_CREATE_IMPORT_TABLE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_IMPORT_TABLE} "
    f"({', '.join(CUSTOMER_COLUMNS)}, given, PRIMARY KEY (id))"
)


@lru_cache(maxsize=8)
def _sqlite_stage(rows: int) -> str:
    one = "(" + ", ".join("?" * (len(CUSTOMER_COLUMNS) + 1)) + ")"
    columns = ", ".join(CUSTOMER_COLUMNS)
    return f"INSERT INTO temp.{_IMPORT_TABLE} ({columns}, given) VALUES {', '.join([one] * rows)}"


@lru_cache(maxsize=4)
def _upsert_from_stage(stage: str, where: str) -> str:
    """The upsert of every staged row: a new customer as staged (the defaults filled in), a stored one
    with the columns its ``given`` mask names replaced, and ``updated_at``."""
    kept = [
        f"CASE WHEN (i.given & {bit}) <> 0 THEN i.{name} ELSE {CUSTOMER.name}.{name} END"
        for name, bit in _GIVEN_BIT.items()
        if name != "id"
    ]
    columns = ", ".join(CUSTOMER_COLUMNS)
    return (
        f"INSERT INTO {CUSTOMER.name} ({columns}) SELECT {columns} FROM {stage} {where}"
        f"ON CONFLICT (id) DO UPDATE SET "
        f"({', '.join(c for c in CUSTOMER_COLUMNS if c != 'id')}) = "
        f"(SELECT {', '.join(kept)}, i.updated_at FROM {stage} AS i WHERE i.id = excluded.id)"
    )


_PG_IMPORT_TABLE = _IMPORT_TABLE
_PG_CREATE_IMPORT_TABLE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_PG_IMPORT_TABLE} "
    f"(LIKE {CUSTOMER.name}, given integer NOT NULL, PRIMARY KEY (id)) ON COMMIT DELETE ROWS"
)
_PG_COPY = f"COPY {_PG_IMPORT_TABLE} ({', '.join(CUSTOMER_COLUMNS)}, given) FROM STDIN"


def _copy_upsert(conn: Connection, params: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: the rows copied into the temporary table, then upserted from it in one statement."""
    conn.exec_driver_sql(_PG_CREATE_IMPORT_TABLE)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    statement = _PG_COPY
    try:
        with cursor.copy(statement) as copy:
            for values in params:
                copy.write_row(values)
        statement = _upsert_from_stage(_PG_IMPORT_TABLE, "")
        cursor.execute(statement)
        statement = f"DELETE FROM {_PG_IMPORT_TABLE}"  # a second call in the same transaction
        cursor.execute(statement)
    except conn.dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy raises the driver's errors
        raise DBAPIError.instance(
            statement, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
        ) from exc
    finally:
        cursor.close()


def stored_attributes(conn: Connection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The stored ``attributes`` of the customers among ``ids``, their rows locked (on PostgreSQL) until
    the transaction ends, so that a merge of new keys into them loses no concurrent write."""
    query = (
        select(CUSTOMER.c.id, CUSTOMER.c.attributes)
        .where(among_param(CUSTOMER.c.id, "ids", conn.dialect.name))
        .with_for_update()
    )
    return {row.id: dict(row.attributes or {}) for row in conn.execute(query, {"ids": sorted(set(ids))})}


def _known_customers(conn: Connection, ids: Collection[str]) -> set[str]:
    """The ids among ``ids`` of stored customers (one statement)."""
    ids = sorted(set(ids))
    query = select(CUSTOMER.c.id).where(among_param(CUSTOMER.c.id, "ids", conn.dialect.name))
    return set(conn.execute(query, {"ids": ids}).scalars())


def _stored_only(
    conn: Connection, batch: list[tuple[int, dict[str, Any]]], reject: Callable[[int, str], None], hint: str
) -> list[dict[str, Any]]:
    """The rows of ``batch`` naming a stored customer; the others go to ``reject(line, message)``."""
    known = _known_customers(conn, {row["customer_id"] for _line, row in batch})
    rows = []
    for line, row in batch:
        if row["customer_id"] in known:
            rows.append(row)
        else:
            reject(line, f"unknown customer {row['customer_id']!r}; {hint}")
    return rows


def write_events(
    conn: Connection, batch: list[tuple[int, dict[str, Any]]], reject: Callable[[int, str], None]
) -> int:
    """Append a batch of events and return how many were written.

    A row naming a customer that is not stored is not written: it goes to ``reject(line, message)``.
    """
    rows = _stored_only(conn, batch, reject, "import customers first")
    if rows:
        conn.execute(EVENT.insert(), rows)
    return len(rows)


@dataclass(frozen=True)
class PreparedEvents:
    """Event rows that may carry a ``message_id``, already in the stored form of every column (see
    :func:`prepare_events_once`).

    ``rows`` holds (line, customer id, values in the order of :data:`EVENT_COLUMNS`), in the batch's
    order.
    """

    rows: list[tuple[int, str, tuple[Any, ...]]]


def prepare_events_once(dialect: Dialect, batch: list[tuple[int, dict[str, Any]]]) -> PreparedEvents:
    """The rows of ``batch`` converted as SQLAlchemy would bind them (JSON text, naive UTC times).

    This is the costly part of writing events; it needs no connection, so a caller can do it before
    taking a lock or opening a transaction.
    """
    stored_form = _stored_form(dialect)
    return PreparedEvents([(line, row["customer_id"], stored_form(row)) for line, row in batch])


def write_prepared_events(
    conn: Connection,
    prepared: PreparedEvents,
    reject: Callable[[int, str], None],
    hint: str = "identify the customer first",
) -> int:
    """Append prepared events; return how many were new.

    An event whose ``message_id`` is already stored (or earlier in the batch) is skipped, not an error
    (``ON CONFLICT DO NOTHING``). A row naming a customer that is not stored goes to
    ``reject(line, message)``.

    The rows go in statements of up to :data:`ROWS_PER_INSERT` rows that insert only those of a
    stored customer (``INSERT ... SELECT ... FROM (VALUES ...) WHERE EXISTS``), so the common case,
    every customer known, costs no query beforehand; only when fewer rows were inserted than given
    are the customers looked up, to tell the unknown ones from repeated message ids.
    """
    rows = prepared.rows
    inserted = 0
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        flat = tuple(value for _line, _customer, values in chunk for value in values)
        inserted += conn.exec_driver_sql(_insert_rows(conn.dialect.name, len(chunk)), flat).rowcount
    if inserted < len(rows):
        known = _known_customers(conn, {customer for _line, customer, _values in rows})
        for line, customer, _values in rows:
            if customer not in known:
                reject(line, f"unknown customer {customer!r}; {hint}")
    return inserted


#: The columns an event row carries (``id`` is the database's).
EVENT_COLUMNS = ("customer_id", "name", "occurred_at", "properties", "message_id")
#: Rows per INSERT: 500 parameters, inside every database's limit (SQLite's was 999 before 3.32).
ROWS_PER_INSERT = 100


@lru_cache(maxsize=2 * ROWS_PER_INSERT)
def _insert_rows(dialect: str, rows: int) -> str:
    """The INSERT of ``rows`` event rows of stored customers, repeated message ids skipped. Names come
    from the table's definition; every value is a parameter."""
    columns = ", ".join(EVENT_COLUMNS)
    if dialect == "postgresql":
        casts = [_pg_cast(EVENT.c[name].type) for name in EVENT_COLUMNS]
        one = ", ".join(f"%s::{cast}" for cast in casts)
        # each row numbered, so that the ids follow the batch's order (PostgreSQL may reorder a join)
        values = ", ".join(f"({one}, {n})" for n in range(rows))
        source = f"(VALUES {values}) AS v ({columns}, n)"
        names = [f"v.{name}" for name in EVENT_COLUMNS]
        order = " ORDER BY v.n"
    else:  # SQLite names the columns of VALUES column1, column2, ...
        one = "(" + ", ".join("?" * len(EVENT_COLUMNS)) + ")"
        source = f"(VALUES {', '.join([one] * rows)})"
        names = [f"column{i}" for i in range(1, len(EVENT_COLUMNS) + 1)]
        order = ""  # SQLite reads VALUES in order and looks up each customer in turn
    return (
        f"INSERT INTO {EVENT.name} ({columns}) SELECT {', '.join(names)} FROM {source} "
        f"WHERE EXISTS (SELECT 1 FROM {CUSTOMER.name} WHERE {CUSTOMER.name}.id = {names[0]}){order} "
        f"ON CONFLICT ({EVENT.c.message_id.name}) DO NOTHING"
    )


def _pg_cast(column_type: Any) -> str:
    """The type a VALUES column is cast to: ``text`` for strings (a cast to ``varchar(n)`` would cut
    a longer value silently; the column's own length check applies on insert), else the column's."""
    if isinstance(column_type, TypeDecorator):
        column_type = column_type.impl_instance
    if isinstance(column_type, String):
        return "text"
    return str(column_type.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]


@lru_cache(maxsize=4)
def _stored_form(dialect: Dialect) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A function from an event row to its values (in :data:`EVENT_COLUMNS` order) as SQLAlchemy
    would bind them for ``dialect``."""
    converters = [
        (name, EVENT.c[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in EVENT_COLUMNS
    ]
    return lambda row: tuple([_apply(processor, row.get(name)) for name, processor in converters])


def _apply(processor: Callable[[Any], Any] | None, value: Any) -> Any:
    return value if processor is None else processor(value)
