"""`automation import ...` and `automation sample-data` through the command line, on a temp SQLite file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from automation.cli import main

NOW = "2025-06-15T12:00:00Z"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = CliRunner().invoke(main, ["--database-url", url, "db", "upgrade"])
    assert result.exit_code == 0, result.output
    return url


def run(*args: str, url: str | None = None) -> Result:
    prefix = ["--database-url", url] if url else []
    result = CliRunner().invoke(main, [*prefix, *args])
    # Bad input never shows a traceback: only our messages and SystemExit.
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_sample_data_imports_cleanly(db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "sample"
    made = run("sample-data", str(out), "--customers", "300", "--seed", "3", "--now", NOW)
    assert made.exit_code == 0, made.output
    assert made.stdout.startswith(f"wrote 300 customers to {out / 'customers.csv'} and ")

    customers = run("import", "customers", str(out / "customers.csv"), url=db_url)
    assert customers.exit_code == 0, customers.output
    assert customers.stdout == "imported 300 customers, rejected 0 rows\n"
    assert customers.stderr == ""

    events = run("import", "events", str(out / "events.jsonl"), url=db_url)
    assert events.exit_code == 0, events.output
    event_count = len((out / "events.jsonl").read_text(encoding="utf-8").splitlines())
    assert events.stdout == f"imported {event_count:,} events, rejected 0 rows\n"


def test_sample_data_is_deterministic_and_realistic(tmp_path: Path) -> None:
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        result = run("sample-data", str(tmp_path / name), "--customers", "1000", "--seed", seed, "--now", NOW)
        assert result.exit_code == 0, result.output
    for file in ("customers.csv", "events.jsonl"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
        assert (tmp_path / "a" / file).read_bytes() != (tmp_path / "c" / file).read_bytes()

    now = datetime(2025, 6, 15, 12, tzinfo=UTC)
    with (tmp_path / "a" / "customers.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1000
    plans = Counter(r["plan"] for r in rows)
    assert set(plans) == {"free", "starter", "pro", "enterprise"}
    assert 10 <= plans["enterprise"] <= 100
    clv = [float(r["clv"]) for r in rows if r["clv"]]
    assert 10 <= sum(c >= 10_000 for c in clv) <= 120
    assert sum(1_000 <= c < 10_000 for c in clv) >= 50
    assert sum(c < 1_000 for c in clv) > len(rows) / 2
    orders = [int(r["orders_count"]) for r in rows]
    assert orders.count(0) >= 200 and orders.count(1) >= 100
    assert sum(2 <= o <= 9 for o in orders) >= 200 and sum(o >= 10 for o in orders) >= 20
    new = [r for r in rows if r["orders_count"] == "0" and now - _ts(r["signed_up_at"]) <= timedelta(days=30)]
    assert len(new) >= 50
    assert len({r["timezone"] for r in rows}) >= 8
    assert {"America/New_York", "Europe/Berlin", "Asia/Jakarta", "Australia/Sydney", "UTC"} <= {
        r["timezone"] for r in rows
    }
    birthdays_today = [
        r
        for r in rows
        if r["birthday"] and r["birthday"][5:] == now.astimezone(ZoneInfo(r["timezone"])).strftime("%m-%d")
    ]
    assert len(birthdays_today) >= 5
    assert 0.35 <= sum(1 for r in rows if not r["nps"]) / len(rows) <= 0.65
    assert 0.6 <= sum(1 for r in rows if r["phone"].startswith("+")) / len(rows) < 1
    assert sum(1 for r in rows if r["owner_email"]) > len(rows) / 2
    assert all(r["email"].endswith(("@example.com", "@example.org")) for r in rows)
    assert all(set(json.loads(r["attributes"])) == {"industry", "company_size"} for r in rows)

    events = [json.loads(line) for line in (tmp_path / "a" / "events.jsonl").read_text("utf-8").splitlines()]
    assert 2.5 <= len(events) / len(rows) <= 3.5
    assert {e["name"] for e in events} == {
        "activated",
        "email_clicked",
        "referral_sent",
        "page_viewed",
        "order_placed",
    }
    times = [_ts(e["occurred_at"]) for e in events]
    assert all(now - timedelta(days=120) <= t <= now for t in times)


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_rejected_rows_exit_2_with_file_and_line(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(
        "id,email,phone,timezone\n"
        "g1,g1@example.com,+14155550123,America/New_York\n"
        "b1,nope,,\n"
        "g2,g2@example.com,,\n"
        "b2,,,Nowhere/Town\n",
        encoding="utf-8",
    )
    result = run("import", "customers", str(path), url=db_url)

    assert result.exit_code == 2
    assert result.stdout == "imported 2 customers, rejected 2 rows\n"
    assert result.stderr.splitlines() == [
        f"{path}:3: email: invalid email address 'nope': An email address must have an @-sign.",
        f"{path}:5: timezone: unknown time zone 'Nowhere/Town' (use an IANA name such as Europe/Berlin)",
    ]


def test_at_most_50_rejected_rows_are_printed(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"n{i}", "nps": 99}) + "\n" for i in range(60)), encoding="utf-8"
    )
    result = run("import", "customers", str(path), url=db_url)

    assert result.exit_code == 2
    assert result.stdout == "imported 0 customers, rejected 60 rows\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 51
    assert lines[0] == f"{path}:1: nps: 99 is out of range (0 to 10)"
    assert lines[49].startswith(f"{path}:50: ")
    assert lines[50] == "... and 10 more"


def test_default_region_option(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "phones.csv"
    path.write_text("id,phone\np1,(415) 555-0123\n", encoding="utf-8")
    assert run("import", "customers", str(path), url=db_url).exit_code == 2
    result = run("import", "customers", "--default-region", "US", str(path), url=db_url)
    assert result.exit_code == 0, result.output


def test_events_for_unknown_customers_exit_2(db_url: str, tmp_path: Path) -> None:
    customers = tmp_path / "c.csv"
    customers.write_text("id\nk1\n", encoding="utf-8")
    assert run("import", "customers", str(customers), url=db_url).exit_code == 0
    events = tmp_path / "e.jsonl"
    events.write_text(
        '{"customer_id": "k1", "name": "activated", "occurred_at": "2025-01-01T00:00:00Z"}\n'
        '{"customer_id": "zz", "name": "activated", "occurred_at": "2025-01-01T00:00:00Z"}\n',
        encoding="utf-8",
    )
    result = run("import", "events", str(events), url=db_url)
    assert result.exit_code == 2
    assert result.stdout == "imported 1 event, rejected 1 row\n"
    assert result.stderr == f"{events}:2: unknown customer 'zz'; import customers first\n"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "missing.csv: no such file"),
        (
            "typo.csv",
            "id,frist_name\n",
            "typo.csv:1: unknown column 'frist_name' (did you mean 'first_name'?)",
        ),
        ("data.xlsx", "id\n", "data.xlsx: unknown file format '.xlsx'"),
        ("empty.csv", "", "empty.csv: the file is empty"),
    ],
)
def test_bad_files_exit_2_naming_the_file(
    db_url: str, tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = run("import", "customers", str(path), url=db_url)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"{tmp_path}/{message}")


def test_an_unmigrated_database_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id\nx\n", encoding="utf-8")
    result = run("import", "customers", str(path), url=f"sqlite:///{tmp_path / 'fresh.db'}")
    assert result.exit_code == 1
    assert "run `automation db upgrade` first" in result.stderr


def test_bad_now_exits_2(tmp_path: Path) -> None:
    result = run("sample-data", str(tmp_path / "out"), "--now", "last tuesday")
    assert result.exit_code == 2
    assert "--now 'last tuesday' is not an ISO 8601 timestamp" in result.stderr


def test_the_installed_command_reports_rejections_without_a_traceback(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,nps\nok,1\nbad,eleven\n", encoding="utf-8")
    exe = Path(sys.executable).with_name("automation")
    proc = subprocess.run(
        [str(exe), "--database-url", db_url, "import", "customers", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == "imported 1 customer, rejected 1 row\n"
    assert proc.stderr == f"{path}:3: nps: 'eleven' is not a whole number\n"
