"""Writing validated rows: customers upserted by ``id``, events appended to a stored customer.

A customer row replaces exactly the columns it carries (and ``updated_at``); a new customer gets the
defaults for the others. Rows are grouped by the columns they carry so that each group is one
statement. Events naming a customer that is not stored are handed back to the caller as rejected.
Events carrying a ``message_id`` (the HTTP API's) are written once: a second one with the same id is
skipped by the database's UNIQUE index, so a sender's retry stores nothing new.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Executable, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect

from automation.db.in_list import PgArray, among_param
from automation.db.tables import CUSTOMER, EVENT
from automation.errors import DatabaseError
from automation.ingest.rows import CUSTOMER_DEFAULTS, CUSTOMER_FIELDS


def _dialect_insert(name: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise DatabaseError(f"unsupported database {name!r}")


_CUSTOMER_BLANK: dict[str, Any] = {name: None for name in CUSTOMER_FIELDS} | CUSTOMER_DEFAULTS


def write_customers(conn: Connection, rows: Iterable[dict[str, Any]]) -> None:
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
    insert = _dialect_insert(dialect, CUSTOMER)
    updates = {c: insert.excluded[c] for c in (*columns, "updated_at") if c != "id"}
    return insert.on_conflict_do_update(index_elements=[CUSTOMER.c.id], set_=updates)


def stored_attributes(conn: Connection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The stored ``attributes`` of the customers among ``ids``, their rows locked (on PostgreSQL) until
    the transaction ends, so that a merge of new keys into them loses no concurrent write."""
    query = (
        select(CUSTOMER.c.id, CUSTOMER.c.attributes)
        .where(among_param(CUSTOMER.c.id, "ids", conn.dialect.name))
        .with_for_update()
    )
    return {row.id: dict(row.attributes or {}) for row in conn.execute(query, {"ids": sorted(set(ids))})}


def _known_customers(conn: Connection, batch: list[tuple[int, dict[str, Any]]]) -> set[str]:
    ids = sorted({row["customer_id"] for _line, row in batch})
    query = select(CUSTOMER.c.id).where(among_param(CUSTOMER.c.id, "ids", conn.dialect.name))
    return set(conn.execute(query, {"ids": ids}).scalars())


def _stored_only(
    conn: Connection, batch: list[tuple[int, dict[str, Any]]], reject: Callable[[int, str], None], hint: str
) -> list[dict[str, Any]]:
    """The rows of ``batch`` naming a stored customer; the others go to ``reject(line, message)``."""
    known = _known_customers(conn, batch)
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
    """Event rows that may carry a ``message_id``, already in the stored form of every column, so
    that writing them is one ``executemany`` of a plain statement (see :func:`prepare_events_once`).

    ``rows`` holds (line, customer id, parameters) in the batch's order; the parameters are a
    sequence in the order of ``columns`` for a driver taking positional ones, else a mapping.
    """

    sql: str
    columns: tuple[str, ...]
    rows: list[tuple[int, str, Sequence[Any] | dict[str, Any]]]


def prepare_events_once(dialect: Dialect, batch: list[tuple[int, dict[str, Any]]]) -> PreparedEvents:
    """The rows of ``batch`` converted as SQLAlchemy would bind them (JSON text, naive UTC times).

    This is the costly part of writing events; it needs no connection, so a caller can do it before
    taking a lock or opening a transaction.
    """
    compiled = _event_insert_once(dialect)
    stored_form = _stored_form(dialect)
    rows = [(line, row["customer_id"], stored_form(row)) for line, row in batch]
    return PreparedEvents(compiled.string, tuple(compiled.positiontup or EVENT_COLUMNS), rows)


def write_prepared_events(
    conn: Connection,
    prepared: PreparedEvents,
    reject: Callable[[int, str], None],
    hint: str = "identify the customer first",
) -> int:
    """Append prepared events; return how many were new.

    An event whose ``message_id`` is already stored (or earlier in the batch) is skipped, not an error
    (``INSERT ... ON CONFLICT DO NOTHING``). A row naming a customer that is not stored goes to
    ``reject(line, message)``.
    """
    known = _known_ids(conn, {customer for _line, customer, _params in prepared.rows})
    params = []
    for line, customer, values in prepared.rows:
        if customer in known:
            params.append(values)
        else:
            reject(line, f"unknown customer {customer!r}; {hint}")
    if not params:
        return 0
    result = conn.exec_driver_sql(prepared.sql, params)
    return result.rowcount  # the rows inserted; those skipped are not counted


#: The columns an event row carries (``id`` is the database's).
EVENT_COLUMNS = ("customer_id", "name", "occurred_at", "properties", "message_id")


@lru_cache(maxsize=4)
def _event_insert_once(dialect: Dialect) -> Any:
    statement = _dialect_insert(dialect.name, EVENT).inline()  # no RETURNING of the new ids
    statement = statement.on_conflict_do_nothing(index_elements=[EVENT.c.message_id])
    return statement.compile(dialect=dialect, column_keys=list(EVENT_COLUMNS))


@lru_cache(maxsize=4)
def _stored_form(dialect: Dialect) -> Callable[[dict[str, Any]], Sequence[Any] | dict[str, Any]]:
    """A function from an event row to its parameters as SQLAlchemy would bind them for ``dialect``:
    a tuple in the statement's order for a driver taking positional parameters, else a mapping."""
    order = _event_insert_once(dialect).positiontup
    converters = []  # (column, what SQLAlchemy does to its value before the driver gets it)
    for name in order or EVENT_COLUMNS:
        converters.append((name, EVENT.c[name].type.dialect_impl(dialect).bind_processor(dialect)))
    if order is None:
        return lambda row: {name: _apply(processor, row.get(name)) for name, processor in converters}
    return lambda row: tuple([_apply(processor, row.get(name)) for name, processor in converters])


def _apply(processor: Callable[[Any], Any] | None, value: Any) -> Any:
    return value if processor is None else processor(value)


def _known_ids(conn: Connection, ids: Collection[str]) -> set[str]:
    """The ids among ``ids`` of stored customers, asked in the driver's own terms (one statement,
    no SQL built per call beyond SQLite's list of placeholders)."""
    if not ids:
        return set()
    values = sorted(ids)
    if conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql("SELECT id FROM customer WHERE id = ANY(%s::text[])", (PgArray(values),))
    else:
        placeholders = ",".join("?" * len(values))
        rows = conn.exec_driver_sql(f"SELECT id FROM customer WHERE id IN ({placeholders})", tuple(values))
    return {row[0] for row in rows}
