"""Size limits of imports: the line limit, column lengths and memory, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from automation.db.tables import CUSTOMER, EVENT
from automation.errors import InputError
from automation.ingest import rows as row_rules
from automation.ingest.importer import ImportReport, import_customers, import_events
from automation.ingest.readers import MAX_LINE_BYTES

LONG_LINE = "the line is longer than 131,072 bytes"


def jsonl_line(row: dict[str, Any]) -> bytes:
    return json.dumps(row).encode() + b"\n"


def customers(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {row.id: dict(row._mapping) for row in conn.execute(select(CUSTOMER))}


def problems(report: ImportReport) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in report.problems]


def padded(row: dict[str, Any], size: int, encode: Any = jsonl_line) -> bytes:
    """``row`` with ``attributes.pad`` grown so the line (without its line ending) has ``size`` bytes."""
    short = encode(row | {"attributes": {"pad": ""}})
    line = encode(row | {"attributes": {"pad": "x" * (size - len(short.rstrip(b"\r\n")))}})
    assert len(line.rstrip(b"\r\n")) == size
    return line


def csv_line(row: dict[str, Any]) -> bytes:
    attributes = json.dumps(row["attributes"]).replace('"', '""')
    return f'{row["id"]},"{attributes}"\n'.encode()


def good_rows(start: int, stop: int) -> bytes:
    return b"".join(jsonl_line({"id": f"g{i}", "email": f"g{i}@example.com"}) for i in range(start, stop))


def peak_bytes(run: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_5_mb_jsonl_line_is_rejected_without_being_read_whole(engine: Engine, tmp_path: Path) -> None:
    warm = tmp_path / "warm.jsonl"
    warm.write_bytes(good_rows(0, 40))
    base = tmp_path / "base.jsonl"
    base.write_bytes(good_rows(0, 40))
    path = tmp_path / "big.jsonl"
    big = jsonl_line({"id": "big", "first_name": "x" * 5_000_000})
    path.write_bytes(good_rows(0, 20) + big + good_rows(20, 40))
    import_customers(engine, warm)  # statements compiled and cached before measuring

    _, base_peak = peak_bytes(lambda: import_customers(engine, base))
    report, peak = peak_bytes(lambda: import_customers(engine, path))

    assert (report.read, report.imported, report.rejected) == (41, 40, 1)
    assert problems(report) == [(21, LONG_LINE)]
    assert report.problems[0].render() == f"{path}:21: {LONG_LINE}"
    stored = customers(engine)
    assert set(stored) == {f"g{i}" for i in range(40)}
    assert stored["g39"]["email"] == "g39@example.com"
    # The 5 MB line is never held: the import needs at most 1 MB more than one without it.
    assert peak < base_peak + 1_000_000, (peak, base_peak)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_line_of_exactly_the_limit_is_read_and_one_byte_more_is_rejected(
    engine: Engine, tmp_path: Path, fmt: str, ending: bytes
) -> None:
    encode = csv_line if fmt == "csv" else jsonl_line
    header = b"id,attributes\n" if fmt == "csv" else b""
    lines = [
        padded({"id": "at"}, MAX_LINE_BYTES, encode),
        padded({"id": "over"}, MAX_LINE_BYTES + 1, encode),
        encode({"id": "after", "attributes": {"a": 1}}),
    ]
    path = tmp_path / f"c.{fmt}"
    path.write_bytes(header + b"".join(line.removesuffix(b"\n") + ending for line in lines))
    report = import_customers(engine, path)

    first = 2 if fmt == "csv" else 1
    assert problems(report) == [(first + 1, LONG_LINE)]
    stored = customers(engine)
    assert set(stored) == {"at", "after"}
    assert len(stored["at"]["attributes"]["pad"]) > MAX_LINE_BYTES - 50
    assert stored["after"]["attributes"] == {"a": 1}


def test_a_long_last_line_without_a_line_ending_is_rejected(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(good_rows(0, 2) + jsonl_line({"id": "big", "plan": "x" * 300_000}).rstrip(b"\n"))
    report = import_customers(engine, path)

    assert problems(report) == [(3, LONG_LINE)]
    assert set(customers(engine)) == {"g0", "g1"}


def test_a_csv_field_spanning_lines_longer_than_the_limit_rejects_its_row(
    engine: Engine, tmp_path: Path
) -> None:
    chunk = "x" * 100_000
    path = tmp_path / "c.csv"
    path.write_text(f'id,first_name\na1,Ann\nb1,"{chunk}\n{chunk}"\nc1,Cy\n', encoding="utf-8")
    report = import_customers(engine, path)

    assert problems(report) == [(3, "a field is longer than 131,072 characters (is a quote left open?)")]
    assert {k: v["first_name"] for k, v in customers(engine).items()} == {"a1": "Ann", "c1": "Cy"}


def test_a_csv_header_longer_than_the_limit_is_a_file_error(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id," + "x" * MAX_LINE_BYTES + "\na1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"c\.csv:1: the header line is longer than 131,072 bytes"):
        import_customers(engine, path)


VALIDATE_EMAIL = row_rules._normalized_email


def _only_short(text: str) -> str:
    assert len(text) <= 320, f"validated an email of {len(text)} characters"
    return VALIDATE_EMAIL(text)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_column_lengths_are_checked_in_every_format_before_other_checks(
    engine: Engine, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: list[dict[str, Any]] = [
        {"id": "ok", "email": "a" * 64 + "@example.com", "first_name": "y" * 255, "plan": "p" * 100},
        {"id": "i" * 256},
        {"id": "f", "first_name": "y" * 256, "last_name": "z" * 100_000},
        {"id": "e", "email": "a" * 100_000 + "@example.com", "owner_email": "o" * 309 + "@example.com"},
        {"id": "p", "plan": "p" * 101, "locale": "en-" + "x" * 33, "timezone": "Europe/" + "x" * 60},
        {"id": "n", "orders_count": "1" * 5_000, "nps": "9" * 100},
    ]
    names = list(dict.fromkeys(name for row in rows for name in row))
    if fmt == "csv":
        text = (
            ",".join(names) + "\n" + "".join(",".join(str(r.get(n, "")) for n in names) + "\n" for r in rows)
        )
        path = tmp_path / "c.csv"
        path.write_text(text, encoding="utf-8")
    else:
        path = tmp_path / "c.jsonl"
        path.write_bytes(b"".join(jsonl_line(r) for r in rows))
    monkeypatch.setattr(row_rules, "_normalized_email", _only_short)
    report = import_customers(engine, path)

    first = 2 if fmt == "csv" else 1
    assert [(line - first, message) for line, message in problems(report)] == [
        (1, "id: longer than 255 characters"),
        (2, "first_name: longer than 255 characters; last_name: longer than 255 characters"),
        (3, "email: longer than 320 characters; owner_email: longer than 320 characters"),
        (
            4,
            "plan: longer than 100 characters; locale: longer than 35 characters; "
            "timezone: longer than 64 characters",
        ),
        (
            5,
            f"orders_count: '{'1' * 76}... is not a whole number; nps: '{'9' * 76}... is not a whole number",
        ),
    ]
    stored = customers(engine)
    assert set(stored) == {"ok"}
    assert (stored["ok"]["first_name"], stored["ok"]["plan"]) == ("y" * 255, "p" * 100)


def test_event_lengths_and_ids_are_checked(engine: Engine, tmp_path: Path) -> None:
    customer_file = tmp_path / "c.csv"
    customer_file.write_text("id\nk1\n", encoding="utf-8")
    import_customers(engine, customer_file)
    at = "2024-01-01T00:00:00Z"
    path = tmp_path / "e.jsonl"
    path.write_bytes(
        jsonl_line({"customer_id": "k1", "name": "n" * 255, "occurred_at": at})
        + jsonl_line({"customer_id": "k1", "name": "n" * 256, "occurred_at": at})
        + jsonl_line({"customer_id": "k" * 256, "name": "activated", "occurred_at": at})
        + jsonl_line(
            {"customer_id": "k1", "name": "big", "occurred_at": at, "properties": {"p": "x" * 200_000}}
        )
    )
    report = import_events(engine, path)

    assert problems(report) == [
        (2, "name: longer than 255 characters"),
        (3, "customer_id: longer than 255 characters"),
        (4, LONG_LINE),
    ]
    with engine.connect() as conn:
        assert conn.execute(select(EVENT.c.name)).scalars().all() == ["n" * 255]
