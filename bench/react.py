"""Reaction latency: from the ingestion API's 200 for a ``track`` call that moves a customer into a stage, to
that message's outbox row and to its delivery at a local sink, with the worker running on a large database
while a steady background load flows through the same API.

    .venv/bin/python bench/react.py                      # 1,000,000 customers, both backends
    .venv/bin/python bench/react.py --backend sqlite --customers 20000 --events 100000 --samples 60
    .venv/bin/python bench/react.py --keep               # keep the databases; later runs: --reuse --keep

For each backend:

1. a database of ``--customers`` customers and ``--events`` events from bench/evaluate.py's generator
   (``bench/results/react.sqlite``, PostgreSQL ``automation_bench_react``; ``--keep`` / ``--reuse``);
2. the steady state of a worker that has been running: one tick of ``playbooks/lifecycle.yaml`` at the real
   time, in this process (the first one enrolls everyone), then every message still to send is marked
   sent, so that no backlog (and no message deferred by quiet hours) is drained during the measurement;
3. an SMTP sink and an HTTP sink on 127.0.0.1, each in a process of its own, noting ``time.time()`` when a
   message has arrived; ``automation serve`` (the ingestion API) and ``automation run`` (the worker: emails
   over SMTP to the sink, signed webhooks to the HTTP sink) as subprocesses;
4. once the worker's first tick is done: the background load, ``--load`` events a second of
   ``page_viewed`` (no rule reads it, so nobody changes stage) in ``/v1/batch`` calls of ``--batch``,
   posted by a client process on a fixed schedule;
5. ``--samples`` single ``/v1/track`` calls of ``referral_sent`` (which puts a customer in ``loyalty``), one
   every ``--interval`` seconds (+-40% random jitter), each for a customer not in loyalty before (touch
   ``none`` or ``low``, a time zone outside quiet hours for the whole run, no open task, no suppression,
   under the frequency cap); the time the 200 is read is noted;
6. meanwhile a thread polls the outbox every ``--poll-every`` seconds on its own connection (one indexed
   query for the samples still open): a row's time is the start of the first poll that saw it, at most one
   poll interval after its commit. Delivery is the sink's receive time of the message with that row's
   idempotency key (``X-Automation-Key`` / ``Idempotency-Key``);
7. whatever is still open ``--timeout`` seconds after the last sample: the load is stopped and the bench
   waits up to ``--timeout`` seconds more, so the figures say how late those rows were (a row never seen
   counts as slower than any). At the end the events the run added are deleted again (a kept database
   then holds the generated rows), and the samples are recorded so that a later run picks others.

Every time compared comes from the same clock, ``time.time()`` (the bench, the sinks) or the worker's own
UTC timestamps (``outbox.created_at``: the ``now`` of the tick that queued the row, used only to split the
latency into waiting for a tick and the tick itself).

Goals: api -> outbox row median under 2 s and p99 under 5 s; api -> delivery p99 under 10 s; on SQLite and
PostgreSQL, with 1,000 events/s of background load, at 1,000,000 customers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.parser
import hashlib
import http.client
import itertools
import json
import math
import multiprocessing
import os
import queue
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import evaluate as ev  # noqa: E402  (bench/evaluate.py: the generator, backends, machine)

ROOT = ev.ROOT
RESULTS = ev.RESULTS
PLAYBOOK = ev.PLAYBOOK
#: Databases of their own: they carry the engine's state from run to run (--keep / --reuse).
ev.SQLITE_FILE = RESULTS / "react.sqlite"
ev.PG_DATABASE = "automation_bench_react"

EXE = ROOT / ".venv" / "bin" / "automation"
WRITE_KEY = "wk_bench_react"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"bench-react-webhook-secret-32byte").decode()
#: Who has been a sample: never picked again in a kept database.
USED = "bench_react_used"
#: The playbook's quiet hours (local time): samples live in zones outside them for the whole run.
QUIET_START, QUIET_END = 21, 8
#: The track call that moves a customer into loyalty: events("referral_sent", within="90d") > 0.
MOVING_EVENT = "referral_sent"
BACKGROUND_EVENT = "page_viewed"  # no rule of the playbook reads it
GOALS = {"row_median_s": 2.0, "row_p99_s": 5.0, "delivery_p99_s": 10.0}
TICK_LINE = re.compile(r"^(?P<name>\S+): tick in (?P<seconds>[\d.]+)s \(evaluated (?P<whom>[^)]*)\)")

log = ev.log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, seconds: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not alive():
            raise RuntimeError(f"the process meant to listen on port {port} exited")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {seconds:.0f} s")


def epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# -- sinks, each in a process of its own ------------------------------------------------------------
def smtp_sink(port: int, out: Any) -> None:
    """Accept every message; put (channel, idempotency key, receive time) on ``out``."""
    from aiosmtpd.controller import Controller

    headers = email.parser.BytesHeaderParser()

    class Record:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received = time.time()
            key = headers.parsebytes(envelope.original_content or b"").get("X-Automation-Key")
            out.put(("email", str(key) if key else None, received))
            return "250 OK"

    controller = Controller(Record(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


def http_sink(port: int, out: Any) -> None:
    """Answer 200 to every POST; put (channel, idempotency key, receive time) on ``out``."""
    from aiohttp import web

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        out.put(("webhook", request.headers.get("Idempotency-Key"), time.time()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", accept)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


@dataclass
class Sinks:
    """The sinks' processes and what they received: idempotency key -> first receive time."""

    smtp_port: int
    http_port: int
    processes: list[Any]
    inbox: Any
    received: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def collect(self) -> None:
        while not self.stop.is_set():
            try:
                channel, key, at = self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            with self.lock:
                self.counts[channel] = self.counts.get(channel, 0) + 1
                if key is not None and key not in self.received:
                    self.received[key] = at

    def get(self, key: str) -> float | None:
        with self.lock:
            return self.received.get(key)


@contextmanager
def sinks(mp: Any) -> Iterator[Sinks]:
    smtp_port, http_port = free_port(), free_port()
    inbox = mp.Queue()
    processes = [
        mp.Process(target=smtp_sink, args=(smtp_port, inbox), daemon=True),
        mp.Process(target=http_sink, args=(http_port, inbox), daemon=True),
    ]
    s = Sinks(smtp_port, http_port, processes, inbox)
    s.thread = threading.Thread(target=s.collect, name="sink inbox", daemon=True)
    for process in processes:
        process.start()
    try:
        for process, port in zip(processes, (smtp_port, http_port), strict=True):
            wait_port(port, 20, process.is_alive)
        s.thread.start()
        yield s
    finally:
        for process in processes:
            process.terminate()
            process.join(10)
        s.stop.set()
        if s.thread.is_alive():
            s.thread.join(5)


# -- the API and the worker as subprocesses ---------------------------------------------------------
def base_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
    env.pop("LOYALTY_WEBHOOK_URL", None)
    env["AUTOMATION_DATABASE_URL"] = url
    env["AUTOMATION_SECRET_KEY"] = "bench-react-secret"
    env["AUTOMATION_TEMPLATES_DIR"] = str(ROOT / "templates")
    return env


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def stop(self, timeout: float = 60) -> int | None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            return None


def start_child(name: str, args: Sequence[str], env: dict[str, str], folder: Path) -> Child:
    log_path = folder / f"{name}.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            [str(EXE), *args], cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    return Child(name, popen, log_path)


def worker_records(child: Child) -> list[dict[str, Any]]:
    records = []
    for line in child.lines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "message" in record:
            records.append(record)
    return records


def wait_first_tick(worker: Child, seconds: float) -> dict[str, Any]:
    """The worker's first ``tick in`` record (its first scheduled tick, done)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for record in worker_records(worker):
            if TICK_LINE.match(record["message"]):
                return record
        if not worker.alive():
            raise RuntimeError("automation run exited:\n" + "\n".join(worker.lines()[-30:]))
        time.sleep(0.2)
    raise RuntimeError(f"no tick within {seconds:.0f} s:\n" + "\n".join(worker.lines()[-30:]))


def auth_headers() -> dict[str, str]:
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


# -- the background load ----------------------------------------------------------------------------
def background_load(
    port: int, rate: float, batch: int, customers: int, run_id: str, stop: Any, out: Any
) -> None:
    """The client process: one ``/v1/batch`` of ``batch`` events every ``batch / rate`` seconds, on a fixed
    schedule (at most 16 in flight; a batch that cannot start on time is counted as skipped). Puts
    {"batches": [(started, answered, status, accepted)], "skipped": n} on ``out`` when ``stop`` is set."""
    import aiohttp

    rng = random.Random(run_id)

    def body(k: int) -> bytes:
        calls = [
            {
                "type": "track",
                "userId": f"c{rng.randrange(1, customers + 1):08d}",
                "event": BACKGROUND_EVENT,
                "messageId": f"{run_id}-bg-{k}-{i}",
                "properties": {"path": f"/pricing/{i % 50}"},
            }
            for i in range(batch)
        ]
        return json.dumps({"batch": calls}).encode()

    async def go() -> dict[str, Any]:
        period = batch / rate
        batches: list[tuple[float, float, int, int]] = []
        skipped = 0
        in_flight: set[asyncio.Task[None]] = set()
        connector = aiohttp.TCPConnector(limit=16)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(
            connector=connector, headers=auth_headers(), timeout=timeout
        ) as session:

            async def post(data: bytes) -> None:
                started = time.time()
                try:
                    async with session.post(f"http://127.0.0.1:{port}/v1/batch", data=data) as response:
                        answer = await response.json(content_type=None)
                        accepted = int(answer.get("accepted", 0)) if response.status == 200 else 0
                        batches.append((started, time.time(), response.status, accepted))
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    batches.append((started, time.time(), 0, 0))

            loop = asyncio.get_running_loop()
            next_at = loop.time()
            k = 0
            while not stop.is_set():
                if len(in_flight) < 16:
                    task = asyncio.ensure_future(post(body(k)))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                else:
                    skipped += 1
                k += 1
                next_at += period
                await asyncio.sleep(max(next_at - loop.time(), 0.0))
            if in_flight:
                await asyncio.wait(in_flight, timeout=120)
        return {"batches": batches, "skipped": skipped}

    out.put(asyncio.run(go()))


def load_figures(result: dict[str, Any], start: float, end: float, target: float) -> dict[str, Any]:
    """The background load's achieved rate over [start, end] (batches answered in it) and its answers."""
    batches = [b for b in result["batches"] if start <= b[1] <= end]
    accepted = sum(b[3] for b in batches)
    latencies = sorted(b[1] - b[0] for b in batches)
    return {
        "target_events_per_s": target,
        "window_s": round(end - start, 2),
        "batches_answered": len(batches),
        "events_accepted": accepted,
        "achieved_events_per_s": round(accepted / (end - start), 1) if end > start else None,
        "not_200": sum(1 for b in batches if b[2] != 200),
        "batch_latency_p50_ms": round(1000 * percentile(latencies, 0.5), 1) if latencies else None,
        "batch_latency_p99_ms": round(1000 * percentile(latencies, 0.99), 1) if latencies else None,
        "batch_latency_max_ms": round(1000 * latencies[-1], 1) if latencies else None,
        "skipped_batches_total": result["skipped"],
        "batches_total": len(result["batches"]),
    }


# -- the database -----------------------------------------------------------------------------------
def settle(engine: Any, backend: str) -> None:
    if backend == "postgresql":
        with engine.connect() as conn:
            raw = conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in ("customer_state", "stage_history", "enrollment", "outbox", "task", "event"):
                raw.exec_driver_sql(f"VACUUM ANALYZE {table}")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def steady_state(engine: Any, backend: str) -> dict[str, Any]:
    """What a worker that has been running leaves: a tick at the real time (the first one enrolls
    everyone), then every message still to send marked sent (no backlog, nothing deferred)."""
    from sqlalchemy import update

    from automation.db.tables import OUTBOX
    from automation.playbook.models import load_playbook
    from automation.rules.compiled import compile_playbook
    from automation.worker.tick import run_tick

    now = datetime.now(UTC)
    started = time.perf_counter()
    result = run_tick(engine, compile_playbook(load_playbook(PLAYBOOK), now))
    tick_s = time.perf_counter() - started
    log(f"{backend}: steady state: tick at {now:%H:%M:%S} in {tick_s:.1f} s ({result.evaluated})")
    with engine.begin() as conn:
        marked = conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.status.in_(("pending", "retry", "claimed")))
            .values(status="sent", sent_at=OUTBOX.c.created_at, lease_owner=None, lease_until=None)
        ).rowcount
    started = time.perf_counter()
    settle(engine, backend)
    settle_s = time.perf_counter() - started
    log(f"{backend}: {marked:,} messages marked sent; settled in {settle_s:.1f} s")
    return {
        "tick_s": round(tick_s, 3),
        "evaluated": result.evaluated,
        "stats": dict(result.stats),
        "marked_sent": marked,
        "settle_s": round(settle_s, 3),
    }


def allowed_zones(now: datetime, seconds: float) -> list[str]:
    """The generator's time zones outside quiet hours from ``now`` until ``seconds`` later."""
    zones = []
    for name in ev.TIMEZONES:
        zone = ZoneInfo(name)
        ok = all(
            QUIET_END <= (now + timedelta(seconds=s)).astimezone(zone).hour < QUIET_START
            for s in range(0, int(seconds) + 60, 60)
        )
        if ok:
            zones.append(name)
    return zones


@dataclass
class Sample:
    number: int
    customer_id: str
    touch: str
    requested: float = 0.0
    answered: float = 0.0
    status: int = 0
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # channel -> first sighting
    done: bool = False

    @property
    def channels(self) -> tuple[str, ...]:
        # loyalty: touch none gets vip_welcome and the loyalty_points webhook, touch low vip_welcome
        return ("email", "webhook") if self.touch == "none" else ("email",)


def pick_samples(engine: Any, customers: int, count: int, zones: list[str], seed: int) -> list[Sample]:
    """``count`` customers to move: not in loyalty now or before, touch none or low, in ``zones``, with
    an address, no open task, no suppression, fewer than two email/SMS in 7 days, never a sample."""
    from sqlalchemy import bindparam, text

    rng = random.Random(seed)
    ids = sorted({f"c{rng.randrange(1, customers + 1):08d}" for _ in range(min(customers, 25 * count))})
    week_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=7)
    sql = text(
        f"""
SELECT c.id, s.touch FROM customer c
JOIN customer_state s ON s.customer_id = c.id AND s.playbook = 'lifecycle'
WHERE c.id IN :ids AND c.timezone IN :zones AND c.email IS NOT NULL
  AND s.touch IN ('none', 'low') AND (s.stage IS NULL OR s.stage <> 'loyalty')
  AND NOT EXISTS (SELECT 1 FROM stage_history h
                  WHERE h.playbook = 'lifecycle' AND h.customer_id = c.id AND h.to_stage = 'loyalty')
  AND NOT EXISTS (SELECT 1 FROM task t WHERE t.customer_id = c.id AND t.status = 'open')
  AND NOT EXISTS (SELECT 1 FROM suppression x WHERE x.customer_id = c.id)
  AND NOT EXISTS (SELECT 1 FROM {USED} u WHERE u.customer_id = c.id)
  AND (SELECT count(*) FROM outbox o WHERE o.customer_id = c.id AND o.channel IN ('email', 'sms')
       AND o.created_at > :week_ago) < 2
"""
    ).bindparams(bindparam("ids", expanding=True), bindparam("zones", expanding=True))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {USED} (customer_id VARCHAR(255) PRIMARY KEY)")
        rows = conn.execute(sql, {"ids": ids, "zones": zones, "week_ago": week_ago}).all()
    rows = sorted(rows)
    rng.shuffle(rows)
    if len(rows) < count:
        raise RuntimeError(f"only {len(rows)} customers can be samples now (zones {zones}); {count} wanted")
    return [Sample(i, row[0], row[1]) for i, row in enumerate(rows[:count])]


def mark_used(engine: Any, samples: list[Sample]) -> None:
    from sqlalchemy import text

    ids = [{"c": s.customer_id} for s in samples if s.requested]
    if ids:
        with engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {USED} (customer_id) VALUES (:c)"), ids)


# -- sending and watching ---------------------------------------------------------------------------
class CpuMeter:
    """The whole machine's CPU use, second by second (``/proc/stat``): how busy the shared cores were."""

    def __init__(self) -> None:
        self.shares: list[tuple[float, float]] = []  # (time, busy share of all cores over the last second)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="cpu meter", daemon=True)

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]), idle

    def run(self) -> None:
        try:
            last = self._read()
        except OSError:
            return
        while not self.stop.wait(1.0):
            now = self._read()
            total, idle = now[0] - last[0], now[1] - last[1]
            if total > 0:
                self.shares.append((time.time(), 1 - idle / total))
            last = now

    def figures(self, start: float, end: float) -> dict[str, Any]:
        shares = sorted(v for t, v in self.shares if start <= t <= end)
        if not shares:
            return {}
        return {
            "seconds": len(shares),
            "busy_median": round(statistics.median(shares), 3),
            "busy_p95": round(percentile(shares, 0.95), 3),
            "seconds_over_95_percent": sum(1 for v in shares if v > 0.95),
        }


class Watcher:
    """Polls the outbox for the samples still open, on a connection of its own, every ``every`` seconds."""

    def __init__(self, engine: Any, every: float) -> None:
        self.engine = engine
        self.every = every
        self.open: dict[str, Sample] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.polls: list[float] = []  # seconds per poll
        self.thread = threading.Thread(target=self.run, name="outbox poll", daemon=True)

    def add(self, sample: Sample) -> None:
        with self.lock:
            self.open[sample.customer_id] = sample

    def open_count(self) -> int:
        with self.lock:
            return len(self.open)

    def run(self) -> None:
        from sqlalchemy import bindparam, select

        from automation.db.tables import OUTBOX
        from automation.outbox.lease import FINAL

        o = OUTBOX.c
        query = select(
            o.customer_id, o.channel, o.template, o.idempotency_key, o.status, o.created_at, o.sent_at
        ).where(o.customer_id.in_(bindparam("ids", expanding=True)), o.stage == "loyalty")
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                with self.lock:
                    ids = list(self.open)
                if ids:
                    began = time.time()
                    rows = conn.execute(query, {"ids": ids}).all()
                    conn.rollback()  # a fresh snapshot next time (and no read lock held on SQLite)
                    self.polls.append(time.time() - began)
                    with self.lock:
                        for row in rows:
                            sample = self.open.get(row.customer_id)
                            if sample is None:
                                continue
                            seen = sample.rows.setdefault(
                                row.channel,
                                {
                                    "seen": began,
                                    "template": row.template,
                                    "key": row.idempotency_key,
                                    "created_at": epoch(row.created_at),
                                },
                            )
                            seen["status"] = row.status
                            seen["sent_at"] = epoch(row.sent_at)
                        for customer_id, sample in list(self.open.items()):
                            if all(sample.rows.get(c, {}).get("status") in FINAL for c in sample.channels):
                                sample.done = True
                                del self.open[customer_id]
                self.stop.wait(self.every)

    def give_up(self) -> None:
        with self.lock:
            self.open.clear()


def send_samples(
    port: int, samples: list[Sample], interval: float, run_id: str, watcher: Watcher, seed: int
) -> None:
    """One ``/v1/track`` of the moving event per sample, one every ``interval`` s (+-40%), on one
    keep-alive connection; the 200's arrival time is noted."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = auth_headers()
    next_at = time.monotonic()
    for sample in samples:
        time.sleep(max(next_at - time.monotonic(), 0.0))
        next_at += interval * rng.uniform(0.6, 1.4)
        body = json.dumps(
            {
                "userId": sample.customer_id,
                "event": MOVING_EVENT,
                "messageId": f"{run_id}-track-{sample.number}",
                "properties": {"via": "bench"},
            }
        )
        watcher.add(sample)
        sample.requested = time.time()
        conn.request("POST", "/v1/track", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        sample.answered = time.time()
        sample.status = response.status
        if response.status != 200:
            log(f"  track for {sample.customer_id} answered {response.status}")
        if (sample.number + 1) % 50 == 0:
            log(f"  {sample.number + 1} samples sent, {watcher.open_count()} still open")
    conn.close()


# -- figures ----------------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    return values[max(math.ceil(p * len(values)) - 1, 0)]


def distribution(values: list[float | None]) -> dict[str, Any]:
    """median, p95, p99 and max in seconds; a missing value counts as slower than any other."""
    ordered = sorted(math.inf if v is None else v for v in values)
    if not ordered:
        return {"count": 0}

    def fmt(v: float) -> float | None:
        return None if math.isinf(v) else round(v, 3)

    return {
        "count": len(ordered),
        "missing": sum(1 for v in values if v is None),
        "median_s": fmt(percentile(ordered, 0.5)),
        "p95_s": fmt(percentile(ordered, 0.95)),
        "p99_s": fmt(percentile(ordered, 0.99)),
        "max_s": fmt(ordered[-1]),
        "min_s": fmt(ordered[0]),
    }


def sample_figures(
    samples: list[Sample], received: Callable[[str], float | None], load_stopped: float
) -> dict[str, Any]:
    per_sample = []
    for s in samples:
        item: dict[str, Any] = {
            "customer_id": s.customer_id,
            "touch": s.touch,
            "status": s.status,
            "api_ms": round(1000 * (s.answered - s.requested), 2),
        }
        for channel in s.channels:
            seen = s.rows.get(channel)
            delivered = received(seen["key"]) if seen else None
            item[channel] = {
                "row_s": round(seen["seen"] - s.answered, 4) if seen else None,
                "row_after_load_stopped": bool(seen and seen["seen"] > load_stopped),
                "delivered_s": round(delivered - s.answered, 4) if delivered else None,
                # the queuing tick's now, from the worker's clock: waiting for a tick / the tick itself
                "tick_start_s": round(seen["created_at"] - s.answered, 4) if seen else None,
                "row_after_tick_start_s": round(seen["seen"] - seen["created_at"], 4) if seen else None,
                "status": seen.get("status") if seen else None,
                "sent_at_s": round(seen["sent_at"] - s.answered, 4) if seen and seen.get("sent_at") else None,
            }
        per_sample.append(item)

    def of(channel: str, key: str) -> list[float | None]:
        return [p[channel][key] for p in per_sample if channel in p]

    return {
        "rows_seen_after_load_stopped": sum(1 for p in per_sample if p["email"]["row_after_load_stopped"]),
        "api_to_row": distribution(of("email", "row_s")),
        "api_to_delivery": distribution(of("email", "delivered_s")),
        "webhook_api_to_row": distribution(of("webhook", "row_s")),
        "webhook_api_to_delivery": distribution(of("webhook", "delivered_s")),
        "breakdown": {
            "api_to_tick_start": distribution(of("email", "tick_start_s")),
            "tick_start_to_row": distribution(of("email", "row_after_tick_start_s")),
            "row_to_delivery": distribution(
                [
                    None
                    if p["email"]["delivered_s"] is None or p["email"]["row_s"] is None
                    else p["email"]["delivered_s"] - p["email"]["row_s"]
                    for p in per_sample
                ]
            ),
        },
        "track_api_ms": {
            "median": round(statistics.median(p["api_ms"] for p in per_sample), 2),
            "p99": round(percentile(sorted(p["api_ms"] for p in per_sample), 0.99), 2),
            "max": max(p["api_ms"] for p in per_sample),
            "not_200": sum(1 for p in per_sample if p["status"] != 200),
        },
        "samples": per_sample,
    }


def tick_figures(records: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """The worker's ticks that ended in [start, end], from its log: the tick's own figure (``tick in``: its
    last attempt), its wall time from ``tick started`` (with any wait for another tick and every attempt
    SQLite refused), whom it evaluated, the time between starts, and the ticks that failed."""
    ticks: list[tuple[float, float, float, int | None]] = []  # started, finished, seconds, evaluated
    failed: list[tuple[float, float]] = []  # started, given up
    began: float | None = None
    refused = 0
    for record in records:
        at = datetime.fromisoformat(record["time"]).timestamp()
        message = record["message"]
        if message.endswith(": tick started"):
            began = at
        if not start <= at <= end:
            continue
        if "another process wrote meanwhile" in message:
            refused += 1
        if "tick failed" in message and began is not None:
            failed.append((began, at))
        match = TICK_LINE.match(message)
        if match and began is not None:
            whom = match["whom"].split(" ")[0].replace(",", "")
            ticks.append((began, at, float(match["seconds"]), int(whom) if whom.isdigit() else None))
    own = sorted(t[2] for t in ticks)
    wall = sorted(t[1] - t[0] for t in ticks)
    gaps = sorted(b - a for a, b in itertools.pairwise(t[0] for t in ticks))
    evaluated = [t[3] for t in ticks if t[3] is not None]
    window = end - start

    def spread(values: list[float], prefix: str) -> dict[str, float | None]:
        return {
            f"{prefix}_median": round(statistics.median(values), 3) if values else None,
            f"{prefix}_p95": round(percentile(values, 0.95), 3) if values else None,
            f"{prefix}_max": round(values[-1], 3) if values else None,
        }

    # time spent ticking inside the window (a tick may have begun before it)
    spans = [(t[0], t[1]) for t in ticks] + failed
    busy = sum(min(b, end) - max(a, start) for a, b in spans)
    return {
        "window_s": round(window, 1),
        "ticks": len(ticks),
        **spread(own, "seconds"),
        **spread(wall, "wall_seconds"),
        **spread(gaps, "start_to_start_seconds"),
        "busy_share": round(busy / window, 3) if window > 0 else None,
        "evaluated_median": int(statistics.median(evaluated)) if evaluated else None,
        "evaluated_max": max(evaluated) if evaluated else None,
        "sqlite_refused_attempts": refused,
        "failed_ticks": len(failed),
        "failed_tick_wall_seconds": [round(b - a, 2) for a, b in failed],
    }


def goal_check(figures: dict[str, Any]) -> dict[str, Any]:
    row, delivery = figures["api_to_row"], figures["api_to_delivery"]

    def under(value: float | None, limit: float) -> bool:
        return value is not None and value < limit

    checks = {
        "row_median_under_2s": under(row.get("median_s"), GOALS["row_median_s"]),
        "row_p99_under_5s": under(row.get("p99_s"), GOALS["row_p99_s"]),
        "delivery_p99_under_10s": under(delivery.get("p99_s"), GOALS["delivery_p99_s"]),
    }
    return {**checks, "met": all(checks.values())}


# -- one backend ------------------------------------------------------------------------------------
def benchmark(b: Any, args: argparse.Namespace, reused: bool) -> dict[str, Any]:
    from sqlalchemy import func, select, text

    from automation.db.connect import make_engine, upgrade
    from automation.db.tables import EVENT

    engine = make_engine(b.url)
    if reused:
        upgrade(engine)
    out: dict[str, Any] = {"reused_database": reused}
    out["steady_state"] = steady_state(engine, b.name)
    with engine.connect() as conn:
        first_new_event = int(conn.execute(select(func.coalesce(func.max(EVENT.c.id), 0))).scalar_one())

    run_id = uuid.uuid4().hex[:10]
    expected = args.samples * args.interval + 180
    zones = allowed_zones(datetime.now(UTC), expected + 600)
    samples = pick_samples(engine, args.customers, args.samples, zones, args.seed)
    out["sample_zones"] = zones
    log(f"{b.name}: {len(samples)} samples in {', '.join(zones)}")

    mp = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="react-") as tmp, sinks(mp) as sink:
        folder = Path(tmp)
        env = base_env(b.url)
        api_port = free_port()
        serve = start_child(
            "serve",
            ["serve", "--host", "127.0.0.1", "--port", str(api_port)],
            env | {"AUTOMATION_WRITE_KEYS": WRITE_KEY},
            folder,
        )
        worker_env = env | {
            "AUTOMATION_SMTP_URL": f"smtp://127.0.0.1:{sink.smtp_port}",
            "AUTOMATION_EMAIL_FROM": "Juniper <hello@example.com>",
            "AUTOMATION_WEBHOOKS": "http",
            "AUTOMATION_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LOYALTY_WEBHOOK_URL": f"http://127.0.0.1:{sink.http_port}/loyalty",
        }
        worker = start_child(
            "worker", ["run", "--playbooks", str(PLAYBOOK), "--log-format", "json"], worker_env, folder
        )
        stop_load = mp.Event()
        load_out = mp.Queue()
        load = None
        watcher = Watcher(make_engine(b.url), args.poll_every)
        cpu = CpuMeter()
        try:
            wait_port(api_port, 60, serve.alive)
            started = time.time()
            first = wait_first_tick(worker, args.warmup_timeout)
            out["first_worker_tick"] = {"waited_s": round(time.time() - started, 1), "log": first["message"]}
            log(f"{b.name}: worker's first tick done: {first['message']}")

            if args.load > 0:
                load = mp.Process(
                    target=background_load,
                    args=(api_port, args.load, args.batch, args.customers, run_id, stop_load, load_out),
                    daemon=True,
                )
                load.start()
                time.sleep(args.load_warmup)
            watcher.thread.start()
            cpu.thread.start()
            window_start = time.time()
            log(f"{b.name}: background load on ({args.load:,.0f} events/s); sending {len(samples)} samples")
            send_samples(api_port, samples, args.interval, run_id, watcher, args.seed)
            last_sent = time.time()
            deadline = time.monotonic() + args.timeout
            while watcher.open_count() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # the sinks report the last deliveries a moment after the rows are final
            load_stopped = time.time()
            stop_load.set()
            result: dict[str, Any] = {"batches": [], "skipped": 0}
            if load is not None:
                result = load_out.get(timeout=180)
                load.join(30)
            if watcher.open_count():
                # what became of them without the load: the figures then show how late they were
                log(
                    f"{b.name}: {watcher.open_count()} samples still open {args.timeout:.0f} s after the "
                    f"last one; the background load is off now, waiting up to {args.timeout:.0f} s more"
                )
                deadline = time.monotonic() + args.timeout
                while watcher.open_count() and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(1.0)
            window_end = time.time()
            watcher.give_up()
        finally:
            cpu.stop.set()
            watcher.stop.set()
            if watcher.thread.is_alive():
                watcher.thread.join(10)
            watcher.engine.dispose()
            stop_load.set()
            if load is not None and load.is_alive():
                load.terminate()
            worker_exit = worker.stop()
            serve_exit = serve.stop()
            records = worker_records(worker)
            for child in (worker, serve):  # next to the JSON: bench/results/react-sqlite-worker.log
                kept = args.output.with_name(f"{args.output.stem}-{b.name}-{child.name}.log")
                kept.parent.mkdir(parents=True, exist_ok=True)
                kept.write_text("\n".join(child.lines()) + "\n")
            mark_used(engine, samples)
            # what this run added to the event table goes again, so that a kept database has the
            # generated rows (bench/evaluate.py's --reuse counts them)
            with engine.begin() as conn:
                removed = conn.execute(
                    text("DELETE FROM event WHERE id > :first"), {"first": first_new_event}
                ).rowcount
            log(f"{b.name}: removed the {removed:,} events this run added")

        out["worker_exit"], out["serve_exit"] = worker_exit, serve_exit
        out["sent_window_s"] = round(last_sent - window_start, 1)
        out["background"] = load_figures(result, window_start, load_stopped, args.load)
        out["worker_ticks"] = tick_figures(records, window_start, load_stopped)
        if window_end - load_stopped > 2.5:
            out["worker_ticks_after_load"] = tick_figures(records, load_stopped, window_end)
        out["warnings"] = [r["message"] for r in records if r.get("level") in ("warning", "error")][:20]
        out["sink_counts"] = dict(sink.counts)
        out["machine_cpu_under_load"] = cpu.figures(window_start, load_stopped)
        out["poll"] = {
            "every_s": args.poll_every,
            "polls": len(watcher.polls),
            "median_ms": round(1000 * statistics.median(watcher.polls), 2) if watcher.polls else None,
            "max_ms": round(1000 * max(watcher.polls), 2) if watcher.polls else None,
        }
        out.update(sample_figures(samples, sink.get, load_stopped))
        out["goal"] = goal_check(out)
    engine.dispose()
    return out


# -- reporting --------------------------------------------------------------------------------------
def fmt_s(d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    return "-" if value is None else f"{value:.2f}"


def summary_table(results: dict[str, Any]) -> str:
    lines = [
        "| Backend | api -> outbox row median / p95 / p99 / max | api -> delivered (SMTP sink) "
        "median / p95 / p99 / max | Background load achieved | Ticks (median s, busy share) | Goal |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["backends"].items():
        row, dl, bg, tk = r["api_to_row"], r["api_to_delivery"], r["background"], r["worker_ticks"]
        late = r["rows_seen_after_load_stopped"]
        missing = f" ({row['missing']} missing)" if row.get("missing") else ""
        missing += f" ({late} after the load stopped)" if late else ""
        lines.append(
            f"| {name} | {fmt_s(row, 'median_s')} / {fmt_s(row, 'p95_s')} / {fmt_s(row, 'p99_s')} / "
            f"{fmt_s(row, 'max_s')} s{missing} | {fmt_s(dl, 'median_s')} / {fmt_s(dl, 'p95_s')} / "
            f"{fmt_s(dl, 'p99_s')} / {fmt_s(dl, 'max_s')} s "
            f"| {bg['achieved_events_per_s'] or 0:,.0f} events/s "
            f"| {tk['ticks']} ticks, {tk['wall_seconds_median'] or 0:.2f} s, {tk['busy_share'] or 0:.0%} "
            f"| {'met' if r['goal']['met'] else 'NOT met'} |"
        )
    return "\n".join(lines)


def breakdown_lines(name: str, r: dict[str, Any]) -> list[str]:
    b = r["breakdown"]
    tk = r["worker_ticks"]
    return [
        f"{name}: 200 -> start of the tick that queued it: median "
        f"{fmt_s(b['api_to_tick_start'], 'median_s')} s, p99 {fmt_s(b['api_to_tick_start'], 'p99_s')} s",
        f"{name}: tick start -> row seen: median {fmt_s(b['tick_start_to_row'], 'median_s')} s, "
        f"p99 {fmt_s(b['tick_start_to_row'], 'p99_s')} s",
        f"{name}: row -> delivered: median {fmt_s(b['row_to_delivery'], 'median_s')} s, "
        f"p99 {fmt_s(b['row_to_delivery'], 'p99_s')} s",
        f"{name}: worker ticks in the window: {tk['ticks']}, own time median {tk['seconds_median']} s / "
        f"max {tk['seconds_max']} s, wall time median {tk['wall_seconds_median']} s / p95 "
        f"{tk['wall_seconds_p95']} s / max {tk['wall_seconds_max']} s, start to start median "
        f"{tk['start_to_start_seconds_median']} s / max {tk['start_to_start_seconds_max']} s, "
        f"{tk['evaluated_median']} customers evaluated (median), busy {tk['busy_share']}, "
        f"attempts SQLite refused {tk['sqlite_refused_attempts']}, failed ticks {tk['failed_ticks']}",
        f"{name}: webhook api -> row median {fmt_s(r['webhook_api_to_row'], 'median_s')} s, -> delivered "
        f"median {fmt_s(r['webhook_api_to_delivery'], 'median_s')} / p99 "
        f"{fmt_s(r['webhook_api_to_delivery'], 'p99_s')} s; track call {r['track_api_ms']['median']} ms "
        f"median, {r['track_api_ms']['p99']} ms p99",
    ]


def git(*command: str) -> str:
    done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--samples", type=int, default=200, help="track calls that move a customer")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples (+-40%%)")
    parser.add_argument("--load", type=float, default=1000.0, help="background events per second (0: none)")
    parser.add_argument("--batch", type=int, default=100, help="events per background /v1/batch call")
    parser.add_argument("--poll-every", type=float, default=0.025, help="seconds between outbox polls")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait after the last sample")
    parser.add_argument("--warmup-timeout", type=float, default=600.0, help="seconds for the first tick")
    parser.add_argument("--load-warmup", type=float, default=5.0, help="seconds of load before sampling")
    parser.add_argument("--seed", type=int, default=None, help="sample choice and pacing (default: random)")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--reuse", action="store_true", help="reuse kept databases of the same size")
    parser.add_argument("--output", type=Path, default=RESULTS / "react.json")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    sys.path.insert(0, str(ROOT))

    names = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results: dict[str, Any] = {
        "playbook": str(PLAYBOOK.relative_to(ROOT)),
        "customers": args.customers,
        "events": args.events,
        "samples": args.samples,
        "interval_s": args.interval,
        "background_events_per_s": args.load,
        "batch": args.batch,
        "seed": args.seed,
        "goals": GOALS,
        "commit": git("rev-parse", "HEAD"),
        "automation_modified": bool(git("status", "--porcelain", "--", "automation")),
        # what was measured when automation/ had changes not committed: a digest of them
        "automation_diff_sha1": hashlib.sha1(git("diff", "HEAD", "--", "automation").encode()).hexdigest(),
        "load_average_before": list(os.getloadavg()),
        "backends": {},
    }
    prepared: list[Any] = []
    try:
        for name in names:
            b, generation = ev.prepare(name, args)
            prepared.append(b)
            r = benchmark(b, args, reused=bool(generation.get("reused")))
            results["backends"][name] = {"generation": generation, **r}
            for line in breakdown_lines(name, r):
                log(line)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
        results["machine"] = ev.machine(prepared)
    finally:
        if not args.keep:
            for b in prepared:
                ev.drop(b)
    results["load_average_after"] = list(os.getloadavg())
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")

    print()
    print(
        f"{args.customers:,} customers, {args.samples} samples every ~{args.interval} s, background "
        f"{args.load:,.0f} events/s in batches of {args.batch}"
    )
    print()
    print(summary_table(results))
    print()
    for name, r in results["backends"].items():
        for line in breakdown_lines(name, r):
            print(line)
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
