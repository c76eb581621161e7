"""Ingestion throughput of the HTTP API end to end, next to a raw insert of the same rows.

    .venv/bin/python bench/ingest.py                          # 50,000 events per round, both backends
    .venv/bin/python bench/ingest.py --backend sqlite --events 20000 --repeat 3

*API*: ``automation serve`` runs as its own process on 127.0.0.1 with a fresh database holding
``--customers`` customers; a client process posts prebuilt ``/v1/batch`` bodies of ``--batch`` track
calls (each with its own ``messageId``) over ``--connections`` keep-alive connections, and the clock
runs from the first request to the last answer. Every answer must be 200 with every call accepted,
and the event table must hold every event once afterwards.

*Raw insert*: the same calls, parsed and validated beforehand (outside the clock) by the same
function the API uses and converted to the values the driver receives, written by the DB-API driver
the API uses (``sqlite3`` / ``psycopg``) with a plain ``INSERT`` (no ``ON CONFLICT``), one
transaction per batch, on the same database and table (same indexes and triggers), from
``--connections`` threads (SQLite: one writer at a time, as SQLite allows). Two forms are timed:
``executemany`` of a one-row ``INSERT``, and one ``INSERT ... VALUES (...), (...), ...`` per batch;
the faster of the two in each round is the baseline, as an expert would pick it.

The API commits differently: on SQLite, batches that arrive while the one writing thread is busy
share its next transaction (group commit; each is answered after that commit).

Rounds rotate which side goes first, on an emptied event table; the report gives every rate per
round, the ratio API / fastest raw form per round, and the medians. Then ``--single`` single
``/v1/track`` calls are sent one after the other on one connection and their latency (request sent
to answer read) is reported as p50 / p99.

Goals: at least 5,000 events/s through the API on SQLite, and at least 0.5x the raw insert.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
WRITE_KEY = "wk_bench_ingest"
PG_URL = os.environ.get("AUTOMATION_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
EVENT_NAMES = ("page_viewed", "email_clicked", "activated", "cart_updated", "referral_sent")
from automation.ingest.writer import EVENT_COLUMNS  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- data --------------------------------------------------------------------------------------------
def batches(events: int, size: int, customers: int, round_no: int) -> list[list[dict[str, Any]]]:
    """``events`` track calls in batches of ``size``; message ids unique per round."""
    calls = []
    for i in range(events):
        n = (i * 7919 + round_no * 104729) % customers
        calls.append(
            {
                "type": "track",
                "userId": f"c{n:07d}",
                "event": EVENT_NAMES[i % len(EVENT_NAMES)],
                "messageId": f"r{round_no}-m{i:08d}",
                "timestamp": (NOW - timedelta(seconds=i)).isoformat(),
                "properties": {"path": f"/pricing/{i % 50}", "value": i % 1000, "plan": "pro"},
                "context": {"library": {"name": "bench", "version": "1"}},
            }
        )
    return [calls[start : start + size] for start in range(0, events, size)]


@contextmanager
def database(backend: str, customers: int) -> Iterator[str]:
    """A fresh, migrated database with ``customers`` customers; its URL."""
    from sqlalchemy import insert

    from automation.db.connect import make_engine, upgrade
    from automation.db.tables import CUSTOMER

    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/ingest.sqlite"
        else:
            from sqlalchemy import create_engine
            from sqlalchemy.engine import make_url

            admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql("DROP DATABASE IF EXISTS automation_bench_ingest")
                conn.exec_driver_sql("CREATE DATABASE automation_bench_ingest")
            url = make_url(PG_URL).set(database="automation_bench_ingest").render_as_string(False)
        engine = make_engine(url)
        upgrade(engine)
        rows = [
            {"id": f"c{n:07d}", "email": f"c{n}@example.com", "timezone": "UTC", "attributes": {}}
            for n in range(customers)
        ]
        with engine.begin() as conn:
            for start in range(0, customers, 10_000):
                conn.execute(insert(CUSTOMER), rows[start : start + 10_000])
        engine.dispose()
        try:
            yield url
        finally:
            if backend == "postgresql":
                with admin.connect() as conn:
                    conn.exec_driver_sql("DROP DATABASE IF EXISTS automation_bench_ingest WITH (FORCE)")
                admin.dispose()


def empty_events(url: str) -> None:
    from sqlalchemy import delete

    from automation.db.connect import make_engine
    from automation.db.tables import CHANGE, EVENT

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(delete(EVENT))
        conn.execute(delete(CHANGE))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE event")
            conn.exec_driver_sql("VACUUM ANALYZE customer_change")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def stored_events(url: str) -> tuple[int, int]:
    """(events, distinct message ids) in the event table."""
    from sqlalchemy import distinct, func, select

    from automation.db.connect import make_engine
    from automation.db.tables import EVENT

    engine = make_engine(url)
    with engine.connect() as conn:
        row = conn.execute(select(func.count(), func.count(distinct(EVENT.c.message_id)))).one()
    engine.dispose()
    return int(row[0]), int(row[1])


# -- the raw insert ----------------------------------------------------------------------------------
def validated(calls: list[list[dict[str, Any]]], backend: str) -> list[list[Any]]:
    """The rows the API would write, validated by the API's own parser, in their stored forms (as
    SQLAlchemy's bind processors make them: JSON text, naive UTC times)."""
    from sqlalchemy.dialects import postgresql, sqlite

    from automation.ingest.segment import parse_call
    from automation.ingest.writer import prepare_events_once

    dialect = sqlite.dialect() if backend == "sqlite" else postgresql.psycopg.dialect()  # type: ignore[attr-defined]
    out = []
    for batch in calls:
        events = []
        for call in batch:
            event = parse_call(call, NOW).event
            assert event is not None
            events.append((0, event))
        prepared = prepare_events_once(dialect, events)
        out.append([params for _line, _customer, params in prepared.rows])
    return out


RAW_FORMS = ("executemany", "multirow")


def raw_insert(url: str, rows: list[list[Any]], connections: int, form: str) -> float:
    """Seconds to write every batch, one transaction per batch, in one of two forms: ``executemany``
    of a one-row ``INSERT``, or one ``INSERT ... VALUES (...), (...), ...`` of the whole batch."""
    from automation.db.connect import make_engine

    engine = make_engine(url, pool_size=connections)
    postgresql = engine.dialect.name == "postgresql"
    mark = "%s" if postgresql else "?"
    one = "(" + ", ".join([mark] * len(EVENT_COLUMNS)) + ")"
    head = f"INSERT INTO event ({', '.join(EVENT_COLUMNS)}) VALUES "
    lock = threading.Lock() if not postgresql else None  # SQLite: one writer at a time
    todo = list(reversed(rows))
    dbapis = [engine.raw_connection() for _ in range(connections)]

    def write(cursor: Any, batch: list[Any]) -> None:
        if form == "executemany":
            cursor.executemany(head + one, batch)
        else:
            cursor.execute(head + ", ".join([one] * len(batch)), [v for row in batch for v in row])

    def work(dbapi: Any) -> None:
        cursor = dbapi.cursor()
        while True:
            try:
                batch = todo.pop()
            except IndexError:
                break
            if lock is not None:
                with lock:
                    write(cursor, batch)
                    dbapi.commit()
            else:
                write(cursor, batch)
                dbapi.commit()
        cursor.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(dbapi,)) for dbapi in dbapis]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for dbapi in dbapis:
        dbapi.close()
    engine.dispose()
    return elapsed


# -- the API -----------------------------------------------------------------------------------------
@contextmanager
def server(url: str, workers: int = 1) -> Iterator[str]:
    """``automation serve --workers`` on a free port of 127.0.0.1; its base URL."""
    port = free_port()
    env = os.environ | {
        "AUTOMATION_DATABASE_URL": url,
        "AUTOMATION_WRITE_KEYS": WRITE_KEY,
        "AUTOMATION_SECRET_KEY": "bench-secret",
    }
    process = subprocess.Popen(
        [
            *(str(ROOT / ".venv" / "bin" / "automation"), "serve", "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", str(workers)),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        if process.poll() is not None:
            raise RuntimeError(
                f"automation serve exited: {process.stderr.read().decode() if process.stderr else ''}"
            )
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


def _auth() -> dict[str, str]:
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


def post_batches(base: str, bodies: list[bytes], connections: int, out: Any) -> None:
    """The client process: post every body, answer (seconds, refused calls) on ``out``."""
    import aiohttp

    async def go() -> tuple[float, int]:
        refused = 0
        queue = list(reversed(bodies))
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector, headers=_auth()) as session:

            async def worker() -> None:
                nonlocal refused
                while queue:
                    body = queue.pop()
                    async with session.post(f"{base}/v1/batch", data=body) as response:
                        answer = await response.json()
                        if response.status != 200 or answer.get("rejected"):
                            refused += 1
                            if refused == 1:
                                print(response.status, answer, file=sys.stderr)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            return time.perf_counter() - started, refused

    out.put(asyncio.run(go()))


def api_insert(base: str, calls: list[list[dict[str, Any]]], connections: int) -> float:
    bodies = [json.dumps({"batch": batch}).encode() for batch in calls]
    queue: Any = multiprocessing.Queue()
    client = multiprocessing.Process(target=post_batches, args=(base, bodies, connections, queue))
    client.start()
    elapsed, refused = queue.get(timeout=3600)
    client.join()
    if refused:
        raise RuntimeError(f"{refused} batches were not accepted whole")
    return float(elapsed)


def single_latency(base: str, count: int, customers: int) -> dict[str, float]:
    """Latency of ``count`` single /v1/track calls, one after the other on one connection."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    timings = []
    for i in range(count):
        body = json.dumps(
            {
                "userId": f"c{(i * 31) % customers:07d}",
                "event": "page_viewed",
                "messageId": f"single-{i}",
                "properties": {"path": "/"},
            }
        )
        started = time.perf_counter()
        conn.request("POST", "/v1/track", body=body, headers=_auth())
        response = conn.getresponse()
        response.read()
        timings.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"single track answered {response.status}")
    conn.close()
    timings.sort()
    return {
        "calls": count,
        "p50_ms": 1000 * timings[len(timings) // 2],
        "p99_ms": 1000 * timings[min(len(timings) - 1, int(len(timings) * 0.99))],
        "max_ms": 1000 * timings[-1],
    }


# -- the run -----------------------------------------------------------------------------------------
def benchmark(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    rounds = []
    with database(backend, args.customers) as url, server(url, args.workers) as base:
        for round_no in range(args.repeat):
            calls = batches(args.events, args.batch, args.customers, round_no)
            rows = validated(calls, backend)
            sides = ["api", *(f"raw_{form}" for form in RAW_FORMS)]
            sides = sides[round_no % 3 :] + sides[: round_no % 3]  # each side first in turn
            figures: dict[str, float] = {}
            for side in sides:
                empty_events(url)
                if side == "api":
                    seconds = api_insert(base, calls, args.connections)
                else:
                    seconds = raw_insert(url, rows, args.connections, side.removeprefix("raw_"))
                stored, distinct = stored_events(url)
                if stored != args.events or distinct != args.events:
                    raise RuntimeError(f"{side}: {stored} events stored ({distinct} ids), not {args.events}")
                figures[f"{side}_per_s"] = args.events / seconds
            # the baseline: the faster raw form in this round
            figures["raw_per_s"] = max(figures[f"raw_{form}_per_s"] for form in RAW_FORMS)
            figures["ratio"] = figures["api_per_s"] / figures["raw_per_s"]
            rounds.append(figures)
            print(
                f"  {backend} round {round_no + 1}: api {figures['api_per_s']:,.0f}/s  "
                f"raw executemany {figures['raw_executemany_per_s']:,.0f}/s  "
                f"raw multi-row {figures['raw_multirow_per_s']:,.0f}/s  ratio {figures['ratio']:.2f}x",
                flush=True,
            )
        empty_events(url)
        latency = single_latency(base, args.single, args.customers)
    api = statistics.median(r["api_per_s"] for r in rounds)
    raw = statistics.median(r["raw_per_s"] for r in rounds)
    forms = {form: statistics.median(r[f"raw_{form}_per_s"] for r in rounds) for form in RAW_FORMS}
    return {
        "backend": backend,
        "rounds": rounds,
        "api_per_s": api,
        "raw_per_s": raw,
        "raw_forms_per_s": forms,
        "ratio": api / raw,
        "min_round_ratio": min(r["ratio"] for r in rounds),
        "single_track": latency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--events", type=int, default=50_000, help="events per round and side")
    parser.add_argument("--batch", type=int, default=100, help="track calls per /v1/batch")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=8, help="client connections (raw: threads)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="automation serve --workers (default: CPUs)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--single", type=int, default=1000, help="single /v1/track calls timed for latency")
    parser.add_argument("--output", type=Path, default=RESULTS / "ingest.json")
    args = parser.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    results: dict[str, Any] = {
        "events": args.events,
        "batch": args.batch,
        "connections": args.connections,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
        "backends": {},
    }
    for backend in backends:
        print(
            f"{backend}: {args.repeat} rounds of {args.events:,} events in batches of {args.batch}",
            flush=True,
        )
        results["backends"][backend] = benchmark(backend, args)
    results["load_average_after"] = list(os.getloadavg())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print()
    print(
        f"{'backend':<11} {'API events/s':>13} {'raw events/s':>13} {'ratio':>6} {'worst':>6} "
        f"{'track p50':>10} {'track p99':>10}  goal"
    )
    for backend, r in results["backends"].items():
        goal = r["min_round_ratio"] >= 0.5 and (backend != "sqlite" or r["api_per_s"] >= 5000)
        s = r["single_track"]
        print(
            f"{backend:<11} {r['api_per_s']:>13,.0f} {r['raw_per_s']:>13,.0f} {r['ratio']:>5.2f}x "
            f"{r['min_round_ratio']:>5.2f}x {s['p50_ms']:>8.1f}ms {s['p99_ms']:>8.1f}ms  "
            f"{'met' if goal else 'NOT met'}"
        )
    print(f"(results in {args.output})")


if __name__ == "__main__":
    main()
