"""Customer import throughput (``automation import customers FILE``), next to a bare write of the same rows.

    .venv/bin/python bench/import_customers.py                       # 200,000 rows, 5 rounds, both backends
    .venv/bin/python bench/import_customers.py --backend sqlite --rows 50000 --repeat 3

*Data*: a deterministic CSV file of ``--rows`` customers from the generator of ``automation sample-data``
(``automation.ingest.sample_data``), with what real files hold on top: phone numbers in E.164, in the
international format with spaces and dashes (``+1 201-555-0123``) and, on a few rows, written without a
country code (rejected: no ``--default-region``); emails with upper-case domains, ``+tags``, dotted local
parts, international domain names and Unicode local parts; about 2% of the rows invalid (a bad email, time
zone, NPS, date, phone or attributes). A second file has the same ids with other values: the update phase.

*Library*: ``automation.ingest.importer.import_customers(engine, path)``, the function the CLI calls, end to
end (reading the file, parsing, validating, upserting in batches, committing), into an emptied table
(phase ``insert``) and, for phase ``update``, into a table holding the first file's customers (loaded by the
baseline, outside the clock). It runs in a process of its own, as the CLI runs it; the clock starts at the
call, after the interpreter has started and imported the library (its first connection is in the clock).

*Baseline*: the same rows, validated beforehand (outside the clock) by the library's own reader and
``customer_row``, converted to the values the driver receives, written with the bare driver in one
transaction: SQLite ``executemany`` of a one-row ``INSERT`` (phase ``update``: ``INSERT ... ON CONFLICT
(id) DO UPDATE`` of every column), PostgreSQL ``COPY`` (psycopg ``cursor.copy``) into ``customer`` (phase
``update``: ``COPY`` into a temporary table, then one ``INSERT ... SELECT ... ON CONFLICT (id) DO
UPDATE``). Same table, indexes and triggers (``automation.db.connect.upgrade``).

Each round times both sides of both phases, which side goes first alternating; every side must leave the
same number of customers (and of phone numbers) stored. One extra library round (phase ``insert``) runs
under cProfile: where the time goes (reading and parsing the file, validation with its email and phone
parts, the writer, the SQL and commits).

Goal: at least 20,000 rows/s through the library on SQLite and on PostgreSQL in every round.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PG_URL = os.environ.get("AUTOMATION_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_DATABASE = "automation_bench_import"
GOAL_ROWS_PER_S = 20_000
PHASES = ("insert", "update")

# what real files hold besides the generator's plain addresses (all valid)
EMAIL_VARIANTS = (
    lambda local, domain: f"{local}@{domain.upper()}",
    lambda local, domain: f"{local}+news@{domain}",
    lambda local, domain: f"{local.title()}@{domain}",
    lambda local, domain: f"{local}@mail.{domain}",
    lambda local, domain: f"{local}@bücher-{domain}",
    lambda local, domain: f"jürgen.{local}@{domain}",
    lambda local, domain: f"{local}@xn--mnchen-3ya.de",
)
INVALID_EMAILS = (
    "no-at-sign.example.com",
    "two..dots@example.com",
    "trailing.@example.com",
    "user@example",
    "user@localhost",
    "user name@example.com",
    "user@-example.com",
    "user@example.com.",
    "x" * 65 + "@example.com",
)


# -- data --------------------------------------------------------------------------------------------
def generate(path: Path, rows: int, seed: int) -> dict[str, int]:
    """Write the CSV file (deterministic for ``rows`` and ``seed``); counts of what it holds."""
    import phonenumbers

    from automation.ingest import sample_data
    from automation.ingest.rows import CUSTOMER_FIELDS

    rng = random.Random(seed)
    width = max(5, len(str(rows)))
    counts = {"rows": rows, "invalid": 0, "phones_international": 0, "phones_no_country_code": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CUSTOMER_FIELDS)
        for n in range(1, rows + 1):
            customer = sample_data._customer(rng, f"cus_{n:0{width}d}", n, NOW)
            local, domain = customer["email"].split("@")
            roll = rng.random()
            if roll < 0.15:
                customer["email"] = rng.choice(EMAIL_VARIANTS)(local, domain)
            phone = customer["phone"]
            roll = rng.random()
            if phone is not None and roll < 0.25:
                number = phonenumbers.parse(phone, None)
                customer["phone"] = phonenumbers.format_number(
                    number, phonenumbers.PhoneNumberFormat.INTERNATIONAL
                )
                counts["phones_international"] += 1
            elif phone is not None and roll < 0.26:
                number = phonenumbers.parse(phone, None)
                customer["phone"] = phonenumbers.format_number(
                    number, phonenumbers.PhoneNumberFormat.NATIONAL
                )
                counts["phones_no_country_code"] += 1
                counts["invalid"] += 1
            bad = rng.random()
            if bad < 0.012:
                customer["email"] = rng.choice(INVALID_EMAILS)
            elif bad < 0.014:
                customer["timezone"] = "Mars/Olympus_Mons"
            elif bad < 0.016:
                customer["nps"] = 11
            elif bad < 0.018:
                customer["birthday"] = "1990-02-30"
            elif bad < 0.019:
                customer["phone"] = "+1 555 0100"
            elif bad < 0.020:
                customer["attributes"] = "{not json"
            cells = [
                value if isinstance(value, str) and name == "attributes" else sample_data._cell(value)
                for name, value in ((f, customer[f]) for f in CUSTOMER_FIELDS)
            ]
            writer.writerow(cells)
    return counts


def validated(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The valid rows of the file as the library validates them (its reader and ``customer_row``), and the
    number of rejected rows. Outside every clock."""
    from automation.ingest.readers import ByteCounter, csv_rows, open_file
    from automation.ingest.rows import CUSTOMER_INPUT_FIELDS, RowError, customer_row

    rows: list[dict[str, Any]] = []
    rejected = 0
    fh, _size = open_file(path)
    with fh:
        for _line, raw, error in csv_rows(path, ByteCounter(fh), CUSTOMER_INPUT_FIELDS, ("id",)):
            if error is not None or raw is None:
                rejected += 1
                continue
            try:
                rows.append(customer_row(raw, region=None, from_text=True))
            except RowError:
                rejected += 1
    ids = {row["id"] for row in rows}
    assert len(ids) == len(rows), "the generated file repeats ids"
    return rows, rejected


def stored_values(rows: list[dict[str, Any]], dialect_name: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Every column of ``customer`` and each row's values in the form the driver receives (defaults for the
    columns a row does not give; ``updated_at`` the same for all)."""
    from sqlalchemy.dialects import sqlite

    from automation.db.tables import CUSTOMER
    from automation.ingest.rows import CUSTOMER_DEFAULTS

    columns = [c.name for c in CUSTOMER.columns]
    now = datetime.now(UTC)
    if dialect_name == "sqlite":
        dialect: Any = sqlite.dialect()
        processors = [CUSTOMER.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
    else:  # COPY: psycopg adapts dates and numbers itself; JSON goes as its text
        processors = [(lambda v: json.dumps(v)) if c == "attributes" else None for c in columns]
    out = []
    for row in rows:
        full = CUSTOMER_DEFAULTS | row | {"updated_at": now}
        out.append(
            tuple(
                full.get(c) if p is None else p(full.get(c)) for c, p in zip(columns, processors, strict=True)
            )
        )
    return columns, out


# -- databases ---------------------------------------------------------------------------------------
def database_url(backend: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{RESULTS / 'import_customers.sqlite'}"
    from sqlalchemy.engine import make_url

    return make_url(PG_URL).set(database=PG_DATABASE).render_as_string(False)


def create_database(backend: str) -> str:
    from sqlalchemy import create_engine

    from automation.db.connect import make_engine, upgrade

    if backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{RESULTS / 'import_customers.sqlite'}{suffix}").unlink(missing_ok=True)
    else:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
            conn.exec_driver_sql(f"CREATE DATABASE {PG_DATABASE}")
        admin.dispose()
    url = database_url(backend)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def drop_database(backend: str) -> None:
    from sqlalchemy import create_engine

    if backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{RESULTS / 'import_customers.sqlite'}{suffix}").unlink(missing_ok=True)
        return
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
    admin.dispose()


def empty(engine: Any) -> None:
    """No customer (nor change log) left; PostgreSQL: then a CHECKPOINT, SQLite: a WAL checkpoint."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("TRUNCATE customer, customer_change CASCADE")
            conn.exec_driver_sql("CHECKPOINT")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM customer")
            conn.exec_driver_sql("DELETE FROM customer_change")
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def checkpoint(engine: Any) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("CHECKPOINT")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def stored(engine: Any) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT count(*), count(phone) FROM customer").one()
    return int(row[0]), int(row[1])


def bare_write(engine: Any, columns: list[str], values: list[tuple[Any, ...]], update: bool) -> float:
    """Seconds to write ``values`` with the bare driver in one transaction (see the module's docstring)."""
    names = ", ".join(columns)
    sets = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "id")
    dbapi = engine.raw_connection()
    try:
        cursor = dbapi.cursor()
        started = time.perf_counter()
        if engine.dialect.name == "sqlite":
            sql = f"INSERT INTO customer ({names}) VALUES ({', '.join('?' * len(columns))})"
            if update:
                sql += f" ON CONFLICT (id) DO UPDATE SET {sets}"
            cursor.executemany(sql, values)
        else:
            target = "customer"
            if update:
                cursor.execute("CREATE TEMPORARY TABLE bench_import (LIKE customer) ON COMMIT DROP")
                target = "bench_import"
            with cursor.copy(f"COPY {target} ({names}) FROM STDIN") as copy:
                for row in values:
                    copy.write_row(row)
            if update:
                cursor.execute(
                    f"INSERT INTO customer ({names}) SELECT {names} FROM bench_import "
                    f"ON CONFLICT (id) DO UPDATE SET {sets}"
                )
        dbapi.commit()
        elapsed = time.perf_counter() - started
        cursor.close()
    finally:
        dbapi.close()
    return elapsed


#: The library's side of a round, in a process of its own: ``argv`` database URL, file; prints seconds,
#: customers imported and rows rejected as JSON.
LIBRARY_SIDE = """
import json, sys, time
from automation.db.connect import make_engine
from automation.ingest.importer import import_customers

engine = make_engine(sys.argv[1])
started = time.perf_counter()
report = import_customers(engine, sys.argv[2])
seconds = time.perf_counter() - started
engine.dispose()
print(json.dumps({"seconds": seconds, "imported": report.imported, "rejected": report.rejected}))
"""


def library_import(engine: Any, path: Path) -> tuple[float, dict[str, Any]]:
    """Seconds ``import_customers`` took in a process of its own, and its counts. Its own process, as the
    CLI runs it: this one holds the baseline's rows, about a million objects, which every full
    collection of the garbage collector would walk during the library's import (20% slower)."""
    url = engine.url.render_as_string(hide_password=False)
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_SIDE, url, str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the library's import failed:\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout)
    return float(figures["seconds"]), figures


# -- the profile -------------------------------------------------------------------------------------
PROFILE_PARTS = {  # part -> (file suffix, function name) whose cumulative time it is
    "read_and_parse": [("automation/ingest/readers.py", "csv_rows")],
    "validate": [("automation/ingest/columns.py", "customer_rows")],
    "validate_email": [("automation/ingest/rows.py", "_email")],
    "validate_phone": [("automation/ingest/rows.py", "_phone")],
    "prepare": [("automation/ingest/writer.py", "prepare_customers")],
    "writer": [("automation/ingest/writer.py", "write_prepared_customers")],
    "sql_execute": [
        ("~", "<method 'executemany' of 'sqlite3.Cursor' objects>"),
        ("~", "<method 'execute' of 'sqlite3.Cursor' objects>"),
        ("psycopg/cursor.py", "execute"),
        ("psycopg/cursor.py", "executemany"),
        ("psycopg/cursor.py", "copy"),
        ("psycopg/copy.py", "write_row"),
        ("psycopg/copy.py", "__exit__"),
    ],
    "commit": [
        ("~", "<method 'commit' of 'sqlite3.Connection' objects>"),
        ("psycopg/connection.py", "commit"),
    ],
}


def profile_round(engine: Any, path: Path) -> dict[str, Any]:
    """One library import under cProfile, in this process (for where the time goes, not for the speed),
    the importing and the writing thread profiled apart: seconds per part (cumulative, so parts overlap:
    validate holds its email and phone parts, writer holds sql_execute and commit), and the functions with
    the most own time."""
    from automation.ingest import importer
    from automation.ingest.importer import import_customers

    empty(engine)
    writer_profile = cProfile.Profile()
    write = importer._write  # called on the writing thread, once a batch

    def profiled_write(*args: Any) -> Any:
        writer_profile.enable()
        try:
            return write(*args)
        finally:
            writer_profile.disable()

    importer._write = profiled_write  # type: ignore[assignment]
    profiler = cProfile.Profile()
    started = time.perf_counter()
    try:
        profiler.enable()
        import_customers(engine, path)
        profiler.disable()
    finally:
        importer._write = write
    total = time.perf_counter() - started
    threads = {"loop": pstats.Stats(profiler), "writer": pstats.Stats(writer_profile)}
    out: dict[str, Any] = {"seconds_under_profile": total, "threads": {}}
    for thread, stats in threads.items():
        raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
        parts: dict[str, float] = {}
        for part, keys in PROFILE_PARTS.items():
            seconds = 0.0
            for (filename, _line, function), (_cc, _nc, _tt, ct, _callers) in raw.items():
                for suffix, name in keys:
                    if function == name and (filename == suffix or filename.endswith(suffix)):
                        seconds += ct
            if seconds:
                parts[part] = seconds
        busy = sum(tt for (_f, _l, _fn), (_cc, _nc, tt, _ct, _c) in raw.items())
        own = sorted(
            ((tt, f"{Path(f).name}:{line}({fn})") for (f, line, fn), (_cc, _nc, tt, _ct, _c) in raw.items()),
            reverse=True,
        )[:12]
        out["threads"][thread] = {
            "busy_s": busy,
            "parts_s": parts,
            "parts_share_of_wall": {part: seconds / total for part, seconds in parts.items()},
            "top_own_time": [{"function": name, "s": tt} for tt, name in own],
        }
    return out


# -- the run -----------------------------------------------------------------------------------------
def benchmark(backend: str, args: argparse.Namespace, files: dict[str, Path]) -> dict[str, Any]:
    from automation.db.connect import make_engine

    url = create_database(backend)
    engine = make_engine(url)
    try:
        rows = {phase: validated(files[phase]) for phase in PHASES}
        values = {phase: stored_values(rows[phase][0], engine.dialect.name) for phase in PHASES}
        expected = {
            phase: (len(rows[phase][0]), sum(1 for r in rows[phase][0] if r.get("phone"))) for phase in PHASES
        }
        # the update phase starts from the first file's customers: the stored count is the union
        first_ids = {r["id"] for r in rows["insert"][0]}
        union = first_ids | {r["id"] for r in rows["update"][0]}
        total_rows = {phase: args.rows for phase in PHASES}
        rounds = []
        for round_no in range(args.repeat):
            figures: dict[str, Any] = {}
            for phase in PHASES:
                sides = ["library", "baseline"] if round_no % 2 == 0 else ["baseline", "library"]
                for side in sides:
                    empty(engine)
                    if phase == "update":
                        columns, first = values["insert"]
                        bare_write(engine, columns, first, update=False)
                        checkpoint(engine)
                    if side == "library":
                        seconds, report = library_import(engine, files[phase])
                        imported, rejected = report["imported"], report["rejected"]
                        if imported != expected[phase][0] or rejected != rows[phase][1]:
                            raise RuntimeError(
                                f"{backend} {phase}: the library imported {imported} and rejected "
                                f"{rejected}; the validation gave {expected[phase][0]} "
                                f"and {rows[phase][1]}"
                            )
                    else:
                        columns, phase_values = values[phase]
                        seconds = bare_write(engine, columns, phase_values, update=phase == "update")
                    count, phones = stored(engine)
                    want = len(union) if phase == "update" else expected[phase][0]
                    if count != want or (phase == "insert" and phones != expected[phase][1]):
                        raise RuntimeError(f"{backend} {phase} {side}: {count} customers stored, not {want}")
                    figures[f"{phase}_{side}_rows_per_s"] = total_rows[phase] / seconds
                    figures[f"{phase}_{side}_s"] = seconds
                figures[f"{phase}_ratio"] = (
                    figures[f"{phase}_library_rows_per_s"] / figures[f"{phase}_baseline_rows_per_s"]
                )
            rounds.append(figures)
            print(
                f"  {backend} round {round_no + 1}: "
                + "  ".join(
                    f"{phase} library {figures[f'{phase}_library_rows_per_s']:,.0f}/s "
                    f"baseline {figures[f'{phase}_baseline_rows_per_s']:,.0f}/s "
                    f"ratio {figures[f'{phase}_ratio']:.2f}x"
                    for phase in PHASES
                ),
                flush=True,
            )
        profile = None if args.no_profile else profile_round(engine, files["insert"])
        if profile is not None:
            for thread, figures in profile["threads"].items():
                shares = ", ".join(f"{k} {v:.0%}" for k, v in figures["parts_share_of_wall"].items())
                print(
                    f"  {backend} profile, {thread} thread (busy {figures['busy_s']:.1f} of "
                    f"{profile['seconds_under_profile']:.1f} s; shares of the wall time): {shares}",
                    flush=True,
                )
    finally:
        engine.dispose()
        if not args.keep:
            drop_database(backend)
    out: dict[str, Any] = {"backend": backend, "rounds": rounds, "profile": profile}
    for phase in PHASES:
        library = [r[f"{phase}_library_rows_per_s"] for r in rounds]
        baseline = [r[f"{phase}_baseline_rows_per_s"] for r in rounds]
        out[phase] = {
            "valid_rows": expected[phase][0],
            "rejected_rows": rows[phase][1],
            "library_rows_per_s_median": statistics.median(library),
            "library_rows_per_s_min": min(library),
            "library_rows_per_s_max": max(library),
            "baseline_rows_per_s_median": statistics.median(baseline),
            "ratio_median": statistics.median(r[f"{phase}_ratio"] for r in rounds),
            "goal_met_every_round": min(library) >= GOAL_ROWS_PER_S,
        }
    return out


def _git(*command: str) -> str:
    done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def machine(backends: tuple[str, ...]) -> dict[str, Any]:
    import sqlite3

    import sqlalchemy

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
    }
    if "postgresql" in backends:
        from sqlalchemy import create_engine

        engine = create_engine(PG_URL)
        with engine.connect() as conn:
            info["postgresql"] = conn.exec_driver_sql("SHOW server_version").scalar_one()
            for name in ("shared_buffers", "synchronous_commit", "wal_level", "max_wal_size"):
                info[f"postgresql_{name}"] = conn.exec_driver_sql(f"SHOW {name}").scalar_one()
        engine.dispose()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--rows", type=int, default=200_000, help="customer rows in each file")
    parser.add_argument("--repeat", type=int, default=5, help="rounds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled round")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the CSV files")
    parser.add_argument("--output", type=Path, default=RESULTS / "import_customers.json")
    args = parser.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    files = {phase: RESULTS / f"import_customers_{phase}_{args.rows}.csv" for phase in PHASES}
    started = time.perf_counter()
    generated = {phase: generate(files[phase], args.rows, args.seed + i) for i, phase in enumerate(PHASES)}
    print(f"generated 2 files of {args.rows:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
    results: dict[str, Any] = {
        "rows": args.rows,
        "repeat": args.repeat,
        "seed": args.seed,
        "files": {phase: {"path": str(files[phase]), **generated[phase]} for phase in PHASES},
        "goal_rows_per_s": GOAL_ROWS_PER_S,
        "commit": _git("rev-parse", "HEAD"),
        "automation_modified": bool(_git("status", "--porcelain", "--", "automation")),
        "machine": machine(backends),
        "load_average_before": list(os.getloadavg()),
        "backends": {},
    }
    try:
        for backend in backends:
            print(
                f"{backend}: {args.repeat} rounds of {args.rows:,} rows, phases {', '.join(PHASES)}",
                flush=True,
            )
            results["backends"][backend] = benchmark(backend, args, files)
            results["load_average_after"] = list(os.getloadavg())
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    finally:
        if not args.keep:
            for path in files.values():
                path.unlink(missing_ok=True)
    print()
    print(
        f"{'backend':<11} {'phase':<7} {'library rows/s (median, range)':>34} {'baseline rows/s':>16} "
        f"{'ratio':>6}  goal"
    )
    for backend, r in results["backends"].items():
        for phase in PHASES:
            p = r[phase]
            spread = (
                f"{p['library_rows_per_s_median']:,.0f} ({p['library_rows_per_s_min']:,.0f}-"
                f"{p['library_rows_per_s_max']:,.0f})"
            )
            print(
                f"{backend:<11} {phase:<7} {spread:>34} {p['baseline_rows_per_s_median']:>16,.0f} "
                f"{p['ratio_median']:>5.2f}x  {'met' if p['goal_met_every_round'] else 'NOT met'}"
            )
    print(
        f"(results in {args.output}; load average {results['load_average_before']} -> "
        f"{results.get('load_average_after')})"
    )


if __name__ == "__main__":
    main()
