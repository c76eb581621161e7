"""``among``: one array parameter on PostgreSQL, an expanded IN list on SQLite, the same rows on both."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from psycopg.adapt import PyFormat
from sqlalchemy import Engine, insert, select

from automation.db.in_list import ArrayLiteralDumper, PgArray, among, among_param, array_literal
from automation.db.tables import CUSTOMER

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
#: ids a text array must carry intact: separators, quotes, braces, backslashes, spaces, non-ASCII
EAST = timezone(timedelta(hours=-5))
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


def test_array_literal_quotes_every_element() -> None:
    assert array_literal([]) == "{}"
    assert array_literal(["a", "b c"]) == '{"a","b c"}'
    assert array_literal(["", "NULL", None]) == '{"","NULL",NULL}'
    assert array_literal([None, None]) == "{NULL,NULL}"
    assert array_literal([None, 'a"b']) == '{NULL,"a\\"b"}'
    assert array_literal(['say "hi"', "back\\slash"]) == '{"say \\"hi\\"","back\\\\slash"}'
    assert array_literal([1, True, 1, None]) == "{1,true,1,NULL}"
    plus_two = timezone(timedelta(hours=2))
    assert array_literal([datetime(2026, 3, 29, 3, 30, tzinfo=plus_two), date(2026, 2, 28)]) == (
        '{"2026-03-29 01:30:00","2026-02-28"}'
    )


def test_postgresql_connections_send_arrays_as_literals(pg_engine: Engine) -> None:
    aware = datetime(2026, 3, 29, 1, 30, 0, 250, tzinfo=UTC)
    with pg_engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        dumper = raw.adapters.get_dumper(PgArray, PyFormat.AUTO)  # type: ignore[attr-defined]
        assert dumper is ArrayLiteralDumper
        echoed = conn.exec_driver_sql(
            "SELECT %s::text[], %s::timestamp[], %s::bigint[], %s::text[]",
            (
                PgArray([*IDS, None, ""]),
                PgArray([None, aware, aware.astimezone(EAST), NOW.replace(tzinfo=None)]),
                PgArray([1, 2**40, None]),
                PgArray([]),
            ),
        ).one()
    assert echoed[0] == [*IDS, None, ""]
    naive = aware.replace(tzinfo=None)
    assert echoed[1] == [None, naive, naive, NOW.replace(tzinfo=None)]
    assert echoed[2] == [1, 2**40, None]
    assert echoed[3] == []
