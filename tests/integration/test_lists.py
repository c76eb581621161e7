"""``among``: one array parameter on PostgreSQL, an expanded IN list on SQLite, the same rows on both."""

from __future__ import annotations

from datetime import UTC, datetime

from psycopg.adapt import PyFormat
from psycopg.types.array import ListBinaryDumper
from sqlalchemy import Engine, insert, select

from automation.db.lists import PgArray, among, among_param
from automation.db.tables import metadata

CUSTOMER = metadata.tables["customer"]
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
#: ids a text array must carry intact: separators, quotes, braces, backslashes, spaces, non-ASCII
IDS = ["plain", "with,comma", 'with"quote', "{braces}", "back\\slash", "two words", "NULL", "ünï"]


def _customers(engine: Engine) -> None:
    rows = [
        {"id": customer_id, "email": f"c{n}@example.com", "timezone": "UTC", "attributes": {}}
        for n, customer_id in enumerate([*IDS, "other"])
    ]
    with engine.begin() as conn:
        conn.execute(insert(CUSTOMER), rows)


def test_among_finds_exactly_the_listed_ids(engine: Engine) -> None:
    _customers(engine)
    dialect = engine.dialect.name
    with engine.connect() as conn:
        found = set(conn.execute(select(CUSTOMER.c.id).where(among(CUSTOMER.c.id, IDS, dialect))).scalars())
        none = conn.execute(select(CUSTOMER.c.id).where(among(CUSTOMER.c.id, [], dialect))).all()
        query = select(CUSTOMER.c.id).where(among_param(CUSTOMER.c.id, "ids", dialect))
        by_param = set(conn.execute(query, {"ids": ["other", "with,comma", "missing"]}).scalars())
    assert found == set(IDS)
    assert none == []
    assert by_param == {"other", "with,comma"}


def test_postgresql_connections_send_arrays_in_binary(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        dumper = raw.adapters.get_dumper(PgArray, PyFormat.AUTO)  # type: ignore[attr-defined]
        assert dumper is ListBinaryDumper
        echoed = conn.exec_driver_sql(
            "SELECT %s::text[], %s::timestamp[], %s::bigint[]",
            (PgArray([*IDS, None]), PgArray([None, None]), PgArray([1, 2**40, None])),
        ).one()
    assert echoed[0] == [*IDS, None]
    assert echoed[1] == [None, None]
    assert echoed[2] == [1, 2**40, None]
