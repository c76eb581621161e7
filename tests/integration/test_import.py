"""Importing customers and events from CSV and JSON Lines, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from automation.db.connect import make_engine, upgrade
from automation.db.tables import CUSTOMER, EVENT
from automation.errors import DatabaseError, InputError
from automation.ingest import importer
from automation.ingest.importer import ImportReport, import_customers, import_events


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *rows: dict[str, Any]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def customers(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {row.id: dict(row._mapping) for row in conn.execute(select(CUSTOMER))}


def events(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(EVENT).order_by(EVENT.c.id))
        return [dict(row._mapping) for row in rows]


def problems(report: ImportReport) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in report.problems]


FULL_HEADER = (
    "id,email,phone,first_name,last_name,timezone,locale,owner_email,plan,clv,orders_count,"
    "signed_up_at,last_order_at,last_seen_at,birthday,nps,attributes\n"
)


def test_csv_customers_are_imported_with_every_field_converted(engine: Engine, tmp_path: Path) -> None:
    path = write(
        tmp_path / "customers.csv",
        FULL_HEADER + "c1,Ada.Lovelace@Example.COM,+1 (415) 555-0123,Ada,Lovelace,Europe/Berlin,de-DE,"
        "Owner@Example.org,pro,1234.5,3,2024-01-02T03:04:05Z,2024-05-01T10:00:00+02:00,,"
        '1990-12-10,9,"{""industry"": ""retail""}"\n'
        "c2,,,,,,,,,,,,,,,,\n",
    )
    report = import_customers(engine, path)

    assert (report.read, report.imported, report.rejected, report.problems) == (2, 2, 0, [])
    assert report.summary() == "imported 2 customers, rejected 0 rows"
    stored = customers(engine)
    c1 = stored["c1"]
    assert c1["email"] == "Ada.Lovelace@example.com"  # email-validator's normalized form
    assert c1["owner_email"] == "Owner@example.org"
    assert c1["phone"] == "+14155550123"
    assert (c1["first_name"], c1["last_name"], c1["timezone"], c1["locale"], c1["plan"]) == (
        "Ada",
        "Lovelace",
        "Europe/Berlin",
        "de-DE",
        "pro",
    )
    assert c1["clv"] == 1234.5
    assert c1["orders_count"] == 3
    assert c1["signed_up_at"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert c1["last_order_at"] == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)  # +02:00 converted
    assert c1["last_seen_at"] is None
    assert c1["birthday"] == date(1990, 12, 10)
    assert c1["nps"] == 9
    assert c1["attributes"] == {"industry": "retail"}
    assert c1["updated_at"] is not None
    # Empty cells are null; NOT NULL columns get their defaults.
    c2 = stored["c2"]
    assert (c2["email"], c2["phone"], c2["clv"], c2["nps"], c2["birthday"]) == (None, None, None, None, None)
    assert (c2["timezone"], c2["orders_count"], c2["attributes"]) == ("UTC", 0, {})


def test_jsonl_customers_are_imported(engine: Engine, tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "customers.ndjson",
        {
            "id": "j1",
            "email": "j1@example.com",
            "clv": 12000,
            "orders_count": 12,
            "attributes": {"tier": "gold"},
        },
        {"id": 42, "timezone": "Asia/Jakarta", "nps": 0, "birthday": "2000-02-29"},
    )
    report = import_customers(engine, path)

    assert (report.imported, report.rejected) == (2, 0)
    stored = customers(engine)
    assert stored["j1"]["clv"] == 12000.0
    assert stored["j1"]["orders_count"] == 12
    assert stored["j1"]["attributes"] == {"tier": "gold"}
    assert stored["42"]["timezone"] == "Asia/Jakarta"  # numeric ids become text
    assert stored["42"]["nps"] == 0
    assert stored["42"]["birthday"] == date(2000, 2, 29)


def test_upsert_replaces_the_columns_in_the_file_and_keeps_the_others(engine: Engine, tmp_path: Path) -> None:
    first = write(
        tmp_path / "first.csv",
        "id,email,plan,clv,attributes\n"
        'u1,old@example.com,free,10,"{""a"": 1}"\n'
        'u2,two@example.com,starter,20,"{""b"": 2}"\n',
    )
    assert import_customers(engine, first).imported == 2

    second = write(tmp_path / "second.csv", "id,plan,clv\nu1,enterprise,15000\nu3,pro,\n")
    report = import_customers(engine, second)

    assert (report.imported, report.rejected) == (2, 0)
    stored = customers(engine)
    assert len(stored) == 3
    assert (stored["u1"]["plan"], stored["u1"]["clv"]) == ("enterprise", 15000.0)
    assert stored["u1"]["email"] == "old@example.com"  # not in the second file: kept
    assert stored["u1"]["attributes"] == {"a": 1}
    assert (stored["u2"]["plan"], stored["u2"]["clv"]) == ("starter", 20.0)  # untouched
    assert (stored["u3"]["plan"], stored["u3"]["clv"], stored["u3"]["timezone"]) == ("pro", None, "UTC")


def test_a_repeated_id_is_upserted_in_file_order_across_batches(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "BATCH_SIZE", 3)
    lines = [f"r{i},{i}\n" for i in range(7)] + ["r1,100\n", "r1,101\n", "r5,500\n"]
    path = write(tmp_path / "c.csv", "id,clv\n" + "".join(lines))
    seen: list[tuple[int, int, int]] = []

    report = import_customers(engine, path, progress=lambda *args: seen.append(args))

    assert (report.read, report.imported, report.rejected, report.repeated) == (10, 7, 0, 2)
    assert report.summary() == "imported 7 customers (2 repeated ids: the last row wins), rejected 0 rows"
    stored = customers(engine)
    assert len(stored) == 7
    assert stored["r1"]["clv"] == 101.0  # the last row for an id wins
    assert stored["r5"]["clv"] == 500.0
    assert stored["r6"]["clv"] == 6.0
    size = path.stat().st_size
    assert seen[-1] == (10, size, size)


BAD_ROWS = (
    "id,email,phone,timezone,signed_up_at,nps,attributes,orders_count,birthday\n"  # line 1
    "ok1,ok1@example.com,+442071838750,Europe/London,2024-01-01T00:00:00,5,{},1,1980-01-31\n"  # 2
    "bad1,not-an-email,,,,,,,\n"  # 3
    "bad2,,4155550123,,,,,,\n"  # 4
    "bad3,,,Mars/Olympus,,,,,\n"  # 5
    "bad4,,,,yesterday,,,,\n"  # 6
    "bad5,,,,,11,,,\n"  # 7
    "bad6,,,,,,{not json},,\n"  # 8
    ",nobody@example.com,,,,,,,\n"  # 9
    'ok2,,,,,,"{""a"": 1,\n""b"": 2}",,\n'  # 10-11: a quoted cell spanning two lines
    "bad7,,+1 999 999 9999,,,,[1],-1,1980-02-30\n"  # 12
    "bad8,only-three,cells\n"  # 13
    "ok3,,,,,,,,\n"  # 14
)


def test_bad_rows_are_reported_with_line_and_reason_and_good_rows_imported(
    engine: Engine, tmp_path: Path
) -> None:
    path = write(tmp_path / "mixed.csv", BAD_ROWS)
    report = import_customers(engine, path)

    assert (report.read, report.imported, report.rejected) == (12, 3, 9)
    assert set(customers(engine)) == {"ok1", "ok2", "ok3"}
    found = problems(report)
    assert [line for line, _ in found] == [3, 4, 5, 6, 7, 8, 9, 12, 13]
    by_line = dict(found)
    assert by_line[3].startswith("email: invalid email address 'not-an-email'")
    assert by_line[4].startswith("phone: '4155550123' has no country code")
    assert "--default-region" in by_line[4]
    assert by_line[5] == "timezone: unknown time zone 'Mars/Olympus' (use an IANA name such as Europe/Berlin)"
    assert by_line[6].startswith("signed_up_at: 'yesterday' is not an ISO 8601 timestamp")
    assert by_line[7] == "nps: 11 is out of range (0 to 10)"
    assert by_line[8].startswith("attributes: not valid JSON")
    assert by_line[9] == "id: missing (required)"
    # Every bad field of a row is reported at once.
    assert by_line[12].split("; ")[0] == "phone: '+1 999 999 9999' is not a valid phone number"
    assert "attributes: expected a JSON object, got an array" in by_line[12]
    assert "orders_count: -1 is out of range" in by_line[12]
    assert "birthday: '1980-02-30' is not a date in the form YYYY-MM-DD" in by_line[12]
    assert by_line[13] == "has 3 fields, the header has 9"
    assert all(str(p.path) == str(path) for p in report.problems)
    assert report.problems[0].render().startswith(f"{path}:3: email: ")
    assert customers(engine)["ok2"]["attributes"] == {"a": 1, "b": 2}


def test_a_bad_row_for_a_stored_customer_leaves_it_unchanged(engine: Engine, tmp_path: Path) -> None:
    import_customers(engine, write(tmp_path / "a.csv", "id,email,nps\nk1,keep@example.com,7\n"))
    report = import_customers(engine, write(tmp_path / "b.csv", "id,email,nps\nk1,new@example.com,99\n"))

    assert (report.imported, report.rejected) == (0, 1)
    stored = customers(engine)["k1"]
    assert (stored["email"], stored["nps"]) == ("keep@example.com", 7)


def test_default_region_reads_national_phone_numbers(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "id,phone\nd1,030 1234567\nd2,+1 415 555 0123\n")
    rejected = import_customers(engine, path)
    assert rejected.rejected == 1

    report = import_customers(engine, path, default_region="de")
    assert report.rejected == 0
    assert customers(engine)["d1"]["phone"] == "+49301234567"
    with pytest.raises(InputError, match="unknown phone region 'XX'"):
        import_customers(engine, path, default_region="XX")


def test_unknown_column_is_a_file_error_with_a_suggestion(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "typo.csv", "id,emial,plan\nx1,x1@example.com,pro\n")
    with pytest.raises(InputError) as info:
        import_customers(engine, path)

    message = str(info.value)
    assert message.startswith(f"{path}:1: unknown column 'emial' (did you mean 'email'?)")
    assert customers(engine) == {}  # nothing imported


def test_the_api_message_id_is_not_an_event_file_column(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "customer_id,name,occurred_at,message_id\nx1,a,2026-01-01,m1\n")
    with pytest.raises(InputError) as info:
        import_events(engine, path)
    assert str(info.value).startswith(f"{path}:1: unknown column 'message_id'")


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("c.txt", "id\n", "unknown file format '.txt'"),
        ("c.csv", "", "the file is empty"),
        ("c.csv", "email\nx@example.com\n", "missing required column(s): id"),
        ("c.csv", "id,id\n", "column 'id' appears twice"),
    ],
)
def test_file_level_problems_raise_input_error_naming_the_file(
    engine: Engine, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(InputError, match="^" + str(path).replace("\\", "\\\\")) as info:
        import_customers(engine, path)
    assert expected in str(info.value)


def test_a_missing_file_is_an_input_error(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        import_events(engine, tmp_path / "missing.jsonl")


def test_jsonl_problems_are_rejected_rows(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        b'{"id": "j1"}\n'  # 1
        b"\n"  # 2: blank, skipped
        b"[1, 2]\n"  # 3
        b'{"id": "j2", "emial": "x@example.com"}\n'  # 4
        b'{"id": "j3",\n'  # 5
        b'{"id": "j4", "first_name": "\xff"}\n'  # 6: not UTF-8
        b'{"id": "j5", "clv": NaN}\n'  # 7
        b'{"email": "j6@example.com"}\n'  # 8
        b'{"id": "j7", "first_name": "Zo\xc3\xab"}\n'  # 9
    )
    report = import_customers(engine, path)

    assert (report.read, report.imported, report.rejected) == (8, 2, 6)
    by_line = dict(problems(report))
    assert by_line[3] == "expected a JSON object, got an array"
    assert by_line[4].startswith("unknown column 'emial' (did you mean 'email'?)")
    assert by_line[5].startswith("not valid JSON")
    assert by_line[6] == "not valid UTF-8"
    assert by_line[7].startswith("not valid JSON")
    assert by_line[8] == "id: missing (required)"
    assert customers(engine)["j7"]["first_name"] == "Zoë"


def test_invalid_utf8_in_a_csv_row_rejects_only_that_row(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbfid,first_name\nu1,Ann\nu2,B\xe9a\nu3,Zo\xc3\xab\n")
    report = import_customers(engine, path)

    assert problems(report) == [(3, "first_name: contains a NUL character or invalid UTF-8")]
    assert {k: v["first_name"] for k, v in customers(engine).items()} == {"u1": "Ann", "u3": "Zoë"}


def test_the_stored_problem_list_is_capped_but_counted(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "MAX_STORED_PROBLEMS", 5)
    path = write(tmp_path / "c.csv", "id,nps\n" + "".join(f"n{i},12\n" for i in range(20)) + "ok,1\n")
    report = import_customers(engine, path)

    assert (report.read, report.imported, report.rejected) == (21, 1, 20)
    assert [p.line for p in report.problems] == [2, 3, 4, 5, 6]


def test_naive_timestamps_are_utc(engine: Engine, tmp_path: Path) -> None:
    import_customers(engine, write(tmp_path / "c.csv", "id,last_seen_at\nt1,2024-03-10 08:30:00\n"))
    import_events(
        engine,
        jsonl(
            tmp_path / "e.jsonl",
            {"customer_id": "t1", "name": "page_viewed", "occurred_at": "2024-03-10T09:00:00"},
            {"customer_id": "t1", "name": "page_viewed", "occurred_at": "2024-03-10T09:00:00-05:00"},
        ),
    )
    assert customers(engine)["t1"]["last_seen_at"] == datetime(2024, 3, 10, 8, 30, tzinfo=UTC)
    times = [e["occurred_at"] for e in events(engine)]
    assert times == [datetime(2024, 3, 10, 9, 0, tzinfo=UTC), datetime(2024, 3, 10, 14, 0, tzinfo=UTC)]


def test_events_are_appended_and_unknown_customers_rejected(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "BATCH_SIZE", 2)
    import_customers(engine, write(tmp_path / "c.csv", "id\ne1\ne2\n"))
    path = jsonl(
        tmp_path / "events.jsonl",
        {"customer_id": "e1", "name": "activated", "occurred_at": "2024-01-01T00:00:00Z"},
        {"customer_id": "ghost", "name": "activated", "occurred_at": "2024-01-01T00:00:00Z"},
        {"customer_id": "e2", "name": "order_placed", "occurred_at": "2024-01-02T00:00:00Z",
         "properties": {"amount": 49.5}},
        {"customer_id": "e1", "name": "", "occurred_at": "soon", "properties": "x"},
        {"customer_id": "e2", "name": "email_clicked", "occurred_at": "2024-01-03T00:00:00Z"},
    )  # fmt: skip
    report = import_events(engine, path)

    assert (report.read, report.imported, report.rejected) == (5, 3, 2)
    assert problems(report) == [
        (2, "unknown customer 'ghost'; import customers first"),
        (
            4,
            "name: missing (required); occurred_at: 'soon' is not an ISO 8601 timestamp "
            "(e.g. 2024-05-01T12:30:00Z); properties: expected a JSON object, got a string",
        ),
    ]
    stored = events(engine)
    assert [(e["customer_id"], e["name"]) for e in stored] == [
        ("e1", "activated"),
        ("e2", "order_placed"),
        ("e2", "email_clicked"),
    ]
    assert stored[1]["properties"] == {"amount": 49.5}
    assert stored[0]["properties"] == {}

    # Appended, not upserted: a second import adds the rows again.
    assert import_events(engine, path).imported == 3
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(EVENT)).scalar_one() == 6


def test_events_from_csv(engine: Engine, tmp_path: Path) -> None:
    import_customers(engine, write(tmp_path / "c.csv", "id\nv1\n"))
    path = write(
        tmp_path / "e.csv",
        "customer_id,name,occurred_at,properties\n"
        'v1,page_viewed,2024-02-01T10:00:00Z,"{""path"": ""/pricing""}"\n'
        "v1,activated,2024-02-01T11:00:00Z,\n",
    )
    report = import_events(engine, path)

    assert (report.imported, report.rejected) == (2, 0)
    assert [e["properties"] for e in events(engine)] == [{"path": "/pricing"}, {}]
    with pytest.raises(InputError, match=r"unknown column 'occured_at' \(did you mean 'occurred_at'\?\)"):
        import_events(engine, write(tmp_path / "typo.csv", "customer_id,name,occured_at\n"))


def test_a_csv_line_longer_than_the_limit_rejects_only_its_row(engine: Engine, tmp_path: Path) -> None:
    huge = "x" * 200_000  # longer than a line may be
    path = write(tmp_path / "c.csv", f"id,first_name\nb1,Ann\nb2,{huge}\nb3,Cy\n")
    report = import_customers(engine, path)

    assert (report.read, report.imported, report.rejected) == (3, 2, 1)
    assert problems(report) == [(3, "the line is longer than 131,072 bytes")]
    assert report.problems[0].render() == f"{path}:3: the line is longer than 131,072 bytes"
    assert {k: v["first_name"] for k, v in customers(engine).items()} == {"b1": "Ann", "b3": "Cy"}


# ---------------------------------------------------------------------------------------------
# Values not given, and `clear`

STORED = {
    "id": "s1",
    "email": "kept@example.com",
    "phone": "+14155550123",
    "first_name": "Kim",
    "timezone": "Europe/Berlin",
    "owner_email": "owner@example.com",
    "plan": "pro",
    "clv": 250.5,
    "orders_count": 7,
    "nps": 9,
    "birthday": "1990-12-10",
    "attributes": {"tier": "gold"},
}
KEPT = {k: v for k, v in STORED.items() if k != "id"} | {"birthday": date(1990, 12, 10)}  # as stored
DEFAULTS = {
    "email": None,
    "phone": None,
    "first_name": None,
    "timezone": "UTC",
    "owner_email": None,
    "plan": None,
    "clv": None,
    "orders_count": 0,
    "nps": None,
    "birthday": None,
    "attributes": {},
}


def picked(row: dict[str, Any], names: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in names}


def not_given_file(tmp_path: Path, fmt: str) -> Path:
    """Rows for the stored s1 and a new n1 whose every value is empty, blank or null."""
    names = [name for name in STORED if name != "id"]
    if fmt == "csv":
        blank = ["", " ", "\t"]
        cells = [blank[i % 3] for i in range(len(names))]
        text = (
            "id," + ",".join(names) + "\n" + "".join(f"{i}," + ",".join(cells) + "\n" for i in ("s1", "n1"))
        )
        return write(tmp_path / "blank.csv", text)
    values: list[Any] = [None, "", "   "]
    rows = [{"id": i} | {n: values[k % 3] for k, n in enumerate(names)} for i in ("s1", "n1")]
    return jsonl(tmp_path / "blank.jsonl", *rows)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_values_not_given_keep_what_is_stored_and_give_new_customers_the_defaults(
    engine: Engine, tmp_path: Path, fmt: str
) -> None:
    assert import_customers(engine, jsonl(tmp_path / "stored.jsonl", STORED)).imported == 1

    report = import_customers(engine, not_given_file(tmp_path, fmt))

    assert (report.read, report.imported, report.rejected, report.problems) == (2, 2, 0, [])
    assert report.summary() == "imported 2 customers, rejected 0 rows"
    stored = customers(engine)
    assert picked(stored["s1"], KEPT) == KEPT
    assert picked(stored["n1"], DEFAULTS) == DEFAULTS


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_clear_sets_the_named_columns_to_null(engine: Engine, tmp_path: Path, fmt: str) -> None:
    assert (
        import_customers(engine, jsonl(tmp_path / "stored.jsonl", STORED, STORED | {"id": "s2"})).imported
        == 2
    )
    if fmt == "csv":
        path = write(
            tmp_path / "clear.csv",
            'id,plan,clear\ns1,enterprise,"email phone"\ns2,,"nps,clv, birthday"\nn1,free,owner_email\n',
        )
    else:
        path = jsonl(
            tmp_path / "clear.jsonl",
            {"id": "s1", "plan": "enterprise", "clear": ["email", "phone"]},
            {"id": "s2", "clear": "nps,clv, birthday"},
            {"id": "n1", "plan": "free", "clear": ["owner_email"]},
        )
    statements: list[str] = []
    listen = event.listens_for(engine, "before_cursor_execute")(
        lambda _c, _cursor, statement, *_a: statements.append(statement)
    )

    report = import_customers(engine, path)

    event.remove(engine, "before_cursor_execute", listen)
    assert (report.read, report.imported, report.rejected, report.problems) == (3, 3, 0, [])
    stored = customers(engine)
    assert picked(stored["s1"], KEPT) == KEPT | {"email": None, "phone": None, "plan": "enterprise"}
    assert picked(stored["s2"], KEPT) == KEPT | {"nps": None, "clv": None, "birthday": None}
    assert picked(stored["n1"], DEFAULTS) == DEFAULTS | {"plan": "free"}
    assert "clear" not in stored["s1"]
    # One upsert for the batch, whatever columns its rows carry (PostgreSQL: the rows copied into a
    # temporary table first, then upserted from it on the driver's cursor).
    upserts = ("INSERT INTO customer ", "CREATE TEMPORARY TABLE IF NOT EXISTS customer_import ")
    assert sum(s.startswith(upserts) for s in statements) == 1


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_clear_refuses_id_defaulted_unknown_and_given_columns(
    engine: Engine, tmp_path: Path, fmt: str
) -> None:
    assert import_customers(engine, jsonl(tmp_path / "stored.jsonl", STORED)).imported == 1
    rows: list[tuple[str, str]] = [  # (email, clear)
        ("", "id"),
        ("", "orders_count"),
        ("", "timezone attributes"),
        ("", "emial"),
        ("new@example.com", "email"),
        ("", "plan"),  # the good row
    ]
    if fmt == "csv":
        text = "id,email,clear\n" + "".join(f's1,{email},"{clear}"\n' for email, clear in rows)
        path = write(tmp_path / "bad.csv", text)
    else:
        path = jsonl(
            tmp_path / "bad.jsonl",
            *({"id": "s1", "email": email or None, "clear": clear.split()} for email, clear in rows),
        )
    report = import_customers(engine, path)

    assert (report.read, report.imported, report.rejected) == (6, 1, 5)
    header = 1 if fmt == "csv" else 0
    assert [(line - header, message) for line, message in problems(report)] == [
        (1, "clear: id cannot be cleared (it identifies the customer)"),
        (2, "clear: orders_count has a default; write the value instead (orders_count: write 0)"),
        (
            3,
            "clear: timezone has a default; write the value instead (timezone: write UTC); "
            "clear: attributes has a default; write the value instead (attributes: write {})",
        ),
        (4, "clear: unknown column 'emial' (did you mean 'email'?)"),
        (5, "email: both given a value and cleared; give one or the other"),
    ]
    assert picked(customers(engine)["s1"], KEPT) == KEPT | {"plan": None}


def test_clear_must_be_column_names_and_events_have_no_clear(engine: Engine, tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "c.jsonl",
        {"id": "c1", "clear": 3},
        {"id": "c2", "clear": ["email", 7]},
        {"id": "c3", "clear": None, "nps": 11},
        {"id": "c4", "clear": [], "plan": "pro"},
    )
    report = import_customers(engine, path)

    assert problems(report) == [
        (1, "clear: expected a list of column names, got a number 3"),
        (2, "clear: expected a list of column names, got an array ['email', 7]"),
        (3, "nps: 11 is out of range (0 to 10)"),
    ]
    assert {k: v["plan"] for k, v in customers(engine).items()} == {"c4": "pro"}
    with pytest.raises(InputError, match="unknown column 'clear'"):
        import_events(engine, write(tmp_path / "e.csv", "customer_id,name,occurred_at,clear\n"))


def test_the_row_rules_take_any_mapping() -> None:
    columns = importer.customer_columns(
        {"id": "a", "email": None, "plan": " ", "nps": 3, "clear": "phone, locale"}
    )
    assert columns == importer.CustomerColumns(
        given={"id": "a", "nps": 3}, cleared=frozenset({"phone", "locale"}), problems=()
    )
    refused = importer.customer_columns({"id": "a", "nps": 3, "clear": ["nps", "id", "plan"]})
    assert refused.problems == (
        "nps: both given a value and cleared; give one or the other",
        "clear: id cannot be cleared (it identifies the customer)",
    )
    assert refused.cleared == {"plan"}
    unknown = importer.customer_columns({"id": "a", "emial": "a@example.com", "updated_at": "x"})
    assert unknown.given == {"id": "a"}
    assert unknown.problems == (
        "unknown column 'emial' (did you mean 'email'?)",
        "unknown column 'updated_at'; known columns: " + ", ".join(importer.CUSTOMER_INPUT_FIELDS),
    )


# ---------------------------------------------------------------------------------------------
# Ids, repeated ids


def test_ids_with_control_characters_are_rejected(engine: Engine, tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.csv",
        'id,plan\ngood,pro\n"a\nb",pro\n"a\rb",pro\n"tab\there",pro\nbell\x07,pro\nx\u0085y,pro\n',
    )
    path_jsonl = jsonl(
        tmp_path / "c.jsonl", {"id": "line\u2028sep"}, {"id": "para\u2029sep"}, {"id": "del\x7f"}
    )
    report = import_customers(engine, path)
    report_jsonl = import_customers(engine, path_jsonl)

    assert problems(report) == [
        (3, "id: contains a control character (U+000A)"),
        (5, "id: contains a control character (U+000D)"),
        (6, "id: contains a control character (U+0009)"),
        (7, "id: contains a control character (U+0007)"),
        (8, "id: contains a control character (U+0085)"),
    ]
    assert problems(report_jsonl) == [
        (1, "id: contains a control character (U+2028)"),
        (2, "id: contains a control character (U+2029)"),
        (3, "id: contains a control character (U+007F)"),
    ]
    assert set(customers(engine)) == {"good"}

    events_path = jsonl(
        tmp_path / "e.jsonl",
        {"customer_id": "good", "name": "activated", "occurred_at": "2024-01-01T00:00:00Z"},
        {"customer_id": "go\nod", "name": "activated", "occurred_at": "2024-01-01T00:00:00Z"},
    )
    report_events = import_events(engine, events_path)
    assert problems(report_events) == [(2, "customer_id: contains a control character (U+000A)")]
    assert [e["customer_id"] for e in events(engine)] == ["good"]


def test_repeated_ids_are_counted_once_and_named_in_the_summary(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "id,plan\nd1,free\nd2,free\nd1,pro\n")
    report = import_customers(engine, path)

    assert (report.read, report.imported, report.rejected, report.repeated) == (3, 2, 0, 1)
    assert report.summary() == "imported 2 customers (1 repeated id: the last row wins), rejected 0 rows"
    assert {k: v["plan"] for k, v in customers(engine).items()} == {"d1": "pro", "d2": "free"}

    single = import_customers(engine, write(tmp_path / "one.csv", "id,plan\nd1,a\nd1,b\nd1,c\nbad,\n,x\n"))
    assert single.summary() == "imported 2 customers (1 repeated id: the last row wins), rejected 1 row"


def test_rows_for_one_id_apply_in_file_order_within_a_batch(engine: Engine, tmp_path: Path) -> None:
    assert import_customers(engine, jsonl(tmp_path / "stored.jsonl", STORED)).imported == 1
    path = jsonl(
        tmp_path / "c.jsonl",
        {"id": "s1", "email": "first@example.com", "clear": ["phone"]},
        {"id": "s1", "plan": "starter", "phone": "+14155550199"},
        {"id": "s1", "clear": ["email"], "nps": 3},
        {"id": "m1", "plan": "free"},
        {"id": "m1", "first_name": "Mo"},
    )
    report = import_customers(engine, path)

    assert report.summary() == "imported 2 customers (2 repeated ids: the last row wins), rejected 0 rows"
    stored = customers(engine)
    assert picked(stored["s1"], KEPT) == KEPT | {
        "email": None,
        "phone": "+14155550199",
        "plan": "starter",
        "nps": 3,
    }
    assert picked(stored["m1"], DEFAULTS) == DEFAULTS | {"plan": "free", "first_name": "Mo"}


REFUSE_C3 = {
    "sqlite": [
        "CREATE TRIGGER refuse_c3 BEFORE INSERT ON customer WHEN NEW.id = 'c3' "
        "BEGIN SELECT RAISE(ABORT, 'c3 is refused'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_c3() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.id = 'c3' THEN RAISE EXCEPTION 'c3 is refused'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER refuse_c3 BEFORE INSERT ON customer FOR EACH ROW EXECUTE FUNCTION refuse_c3()",
    ],
}
UNREFUSE_C3 = {
    "sqlite": ["DROP TRIGGER IF EXISTS refuse_c3"],
    "postgresql": ["DROP TRIGGER IF EXISTS refuse_c3 ON customer", "DROP FUNCTION IF EXISTS refuse_c3()"],
}


def test_a_batch_the_database_refuses_stops_the_import_and_keeps_the_batches_before(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "BATCH_SIZE", 2)
    path = write(tmp_path / "c.csv", "id,plan\n" + "".join(f"c{i},pro\n" for i in range(1, 8)))
    dialect = engine.dialect.name
    with engine.begin() as conn:
        for statement in REFUSE_C3[dialect]:
            conn.exec_driver_sql(statement)
    try:
        with pytest.raises(DatabaseError, match="c3 is refused") as raised:
            import_customers(engine, path)
    finally:
        with engine.begin() as conn:
            for statement in UNREFUSE_C3[dialect]:
                conn.exec_driver_sql(statement)

    assert f"{path}: the database refused the rows of lines 4-5 (rows before line 4 were imported)" in str(
        raised.value
    )
    # the batch after (c5, c6) was read and validated while c3's was written, and is not written
    assert sorted(customers(engine)) == ["c1", "c2"]


def test_batches_are_written_on_a_thread_of_their_own_unless_the_database_is_in_memory(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "BATCH_SIZE", 2)
    path = write(tmp_path / "c.csv", "id,plan\n" + "".join(f"c{i},pro\n" for i in range(5)))
    memory = make_engine("sqlite://")
    upgrade(memory)
    threads: dict[str, set[str]] = {}
    for name, target in (("file", engine), ("memory", memory)):
        seen = threads.setdefault(name, set())

        def record(*_args: Any, seen: set[str] = seen) -> None:
            seen.add(threading.current_thread().name)

        event.listen(target, "before_cursor_execute", record)
        report = import_customers(target, path)
        event.remove(target, "before_cursor_execute", record)
        assert (report.read, report.imported, report.rejected) == (5, 5, 0)
        assert sorted(customers(target)) == [f"c{i}" for i in range(5)]

    assert len(threads["file"]) == 1
    assert threads["file"].pop().startswith("import-writer")
    assert threads["memory"] == {threading.current_thread().name}
