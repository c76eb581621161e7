"""``automation serve`` killed with SIGKILL while batches of track calls stream into ``/v1/batch``.

The server runs as a subprocess on a free port of 127.0.0.1, on SQLite and on a fresh PostgreSQL
database. Its customers are identified first; then a few client threads post batches of track calls
as fast as they are answered, each batch for customers of its own, until the server is killed in the
middle of the stream (no chance to finish a request, a commit or an answer). Then, in the database:

* every batch answered 200 has all its events, each stored once (by ``messageId``);
* no batch is half written: every batch has all of its events or none;
* the change log (``customer_change``) names exactly the customers of the batches that were stored,
  so the next incremental tick evaluates them, and no customer of a batch that was not;

and after a restart the clients send every unanswered batch again, which stores each of its events
exactly once, whether the killed server had committed it or not. Three kills per database.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text

from automation.db.connect import make_engine, upgrade
from automation.db.tables import CHANGE, EVENT
from tests.conftest import fresh_postgres_database
from tests.e2e.worker_tools import Proc, cli_env, wait_until

pytestmark = pytest.mark.slow

KEY = "wk_crash"
KILLS = 3
SENDERS = 4  # client threads: several batches in flight when the server dies (and SQLite's writes grouped)
EVENTS_PER_BATCH = 100
CUSTOMERS_PER_BATCH = 4
BATCHES_PER_ROUND = 160  # more than the senders get through before the kill (asserted)
KILL_AFTER = (10, 40)  # batches answered in a round before the kill, drawn at random
START = 30.0  # seconds: upper bound for the server to listen
BEGIN = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database for this test only: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'automation.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    with fresh_postgres_database(f"automation_ingest_crash_{os.getpid()}") as url:
        yield url


# -- what the clients send ----------------------------------------------------------------------------
def customers_of(batch: int) -> list[str]:
    return [f"c{batch:04d}_{k}" for k in range(CUSTOMERS_PER_BATCH)]


def message_id(batch: int, index: int) -> str:
    return f"b{batch:04d}-{index:03d}"


def track_calls(batch: int) -> list[dict[str, Any]]:
    customers = customers_of(batch)
    return [
        {
            "type": "track",
            "userId": customers[index % CUSTOMERS_PER_BATCH],
            "event": "Crash Tested",
            "timestamp": (BEGIN + timedelta(seconds=batch * EVENTS_PER_BATCH + index)).isoformat(),
            "messageId": message_id(batch, index),
            "properties": {"batch": batch, "index": index},
        }
        for index in range(EVENTS_PER_BATCH)
    ]


def client(base_url: str) -> httpx.Client:
    # trust_env=False: no proxy from the environment stands between the test and 127.0.0.1
    return httpx.Client(base_url=base_url, auth=(KEY, ""), timeout=30.0, trust_env=False)


def post_batch(http: httpx.Client, calls: list[dict[str, Any]]) -> httpx.Response:
    return http.post("/v1/batch", json={"batch": calls})


def answered_in_full(response: httpx.Response, calls: int) -> bool:
    """200, and every one of the ``calls`` accepted."""
    if response.status_code != 200:
        return False
    return bool(response.json() == {"success": True, "accepted": calls, "rejected": []})


@dataclass
class Stream:
    """What the senders of one round did: batches answered 200 in full, and batches sent without an
    answer (the connection broke or was refused); any other answer is kept to fail the test."""

    answered: list[int] = field(default_factory=list)
    unanswered: list[int] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def answered_count(self) -> int:
        with self.lock:
            return len(self.answered)


def send_until_broken(base_url: str, batches: list[int], stream: Stream) -> None:
    """Post ``batches`` one after the other, as fast as they are answered, until one gets no answer."""
    with client(base_url) as http:
        for batch in batches:
            try:
                response = post_batch(http, track_calls(batch))
            except httpx.TransportError:
                with stream.lock:
                    stream.unanswered.append(batch)
                return
            with stream.lock:
                if answered_in_full(response, EVENTS_PER_BATCH):
                    stream.answered.append(batch)
                else:
                    stream.other.append(f"batch {batch}: {response.status_code} {response.text[:300]}")
                    return


# -- the server -----------------------------------------------------------------------------------
class Server:
    """``automation serve`` on ``port``, started again after each kill."""

    def __init__(self, url: str, port: int, tmp_path: Path, procs: list[Proc]) -> None:
        self.env = cli_env(
            AUTOMATION_DATABASE_URL=url, AUTOMATION_WRITE_KEYS=KEY, AUTOMATION_SECRET_KEY="ingest-crash"
        )
        self.port, self.tmp_path, self.procs = port, tmp_path, procs
        self.base_url = f"http://127.0.0.1:{port}"

    def start(self) -> Proc:
        n = len(self.procs)
        proc = Proc(
            ["serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.tmp_path,
            env=self.env,
            stdout=self.tmp_path / f"serve-{n}.out",
        )
        self.procs.append(proc)
        wait_until(
            lambda: f"127.0.0.1:{self.port}" in proc.stdout or not proc.alive(), START, "the server to listen"
        )
        assert proc.alive(), proc.stderr
        return proc


# -- the database ---------------------------------------------------------------------------------
def stored_events(engine: Engine) -> dict[str, Any]:
    """Every stored event by message id (the test fails if one is stored twice)."""
    with engine.connect() as conn:
        rows = list(
            conn.execute(
                select(EVENT.c.message_id, EVENT.c.customer_id, EVENT.c.occurred_at, EVENT.c.properties)
            )
        )
    twice = [m for m, n in Counter(row.message_id for row in rows).items() if n > 1]
    assert twice == [], f"stored more than once: {twice[:10]}"
    return {row.message_id: row for row in rows}


def stored_batches(engine: Engine, sent: set[int]) -> set[int]:
    """The batches whose events are stored, each checked to be stored whole and as it was sent."""
    events = stored_events(engine)
    stray = sorted(m for m in events if m is None or int(m[1:5]) not in sent)
    assert stray == [], f"events of batches that were never sent: {stray[:10]}"
    whole: set[int] = set()
    for batch in sorted(sent):
        present = [message_id(batch, i) in events for i in range(EVENTS_PER_BATCH)]
        assert all(present) or not any(present), (
            f"batch {batch} is half written: {sum(present)} of {EVENTS_PER_BATCH} events stored"
        )
        if all(present):
            whole.add(batch)
            for call in track_calls(batch):
                row = events[call["messageId"]]
                assert (row.customer_id, row.occurred_at.isoformat(), row.properties) == (
                    call["userId"],
                    call["timestamp"],
                    call["properties"],
                ), call["messageId"]
    return whole


def settled(engine: Engine) -> None:
    """Wait until the killed server's transactions are over. On PostgreSQL a transaction whose COMMIT
    the server had sent before it died still commits (unanswered, but stored), possibly after the
    process is gone; its session ends once that is done."""
    if engine.dialect.name != "postgresql":
        return  # SQLite: the writer was the process itself
    engine.dispose()  # none of the test's own sessions are left to count

    def alone() -> bool:
        with engine.connect() as conn:
            others = conn.execute(
                select(func.count())
                .select_from(text("pg_stat_activity"))
                .where(text("datname = current_database() AND pid <> pg_backend_pid()"))
            ).scalar_one()
        return others == 0

    wait_until(alone, 30, "the killed server's sessions to end")


def changed_since(engine: Engine, seq: int) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(CHANGE.c.customer_id).where(CHANGE.c.seq > seq)).scalars())


def last_change(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(CHANGE.c.seq), 0))).scalar_one())


def identify_everyone(base_url: str, batches: range) -> None:
    ids = [customer for batch in batches for customer in customers_of(batch)]
    with client(base_url) as http:
        for start in range(0, len(ids), 400):
            calls = [
                {
                    "type": "identify",
                    "userId": cid,
                    "traits": {"email": f"{cid}@example.com", "plan": "crash"},
                }
                for cid in ids[start : start + 400]
            ]
            response = post_batch(http, calls)
            assert answered_in_full(response, len(calls)), response.text


# -- the test -------------------------------------------------------------------------------------
def test_killed_server_keeps_answered_batches_whole_and_retries_store_once(
    database_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    context = f"(random seed {seed})"
    engine = make_engine(database_url)
    server = Server(database_url, _free_port(), tmp_path, procs)
    proc = server.start()
    identify_everyone(server.base_url, range(KILLS * BATCHES_PER_ROUND))

    sent: set[int] = set()  # every batch a client has posted at least once
    for round_ in range(KILLS):
        first = round_ * BATCHES_PER_ROUND
        stream = Stream()
        senders = [
            threading.Thread(
                target=send_until_broken,
                args=(server.base_url, list(range(first + t, first + BATCHES_PER_ROUND, SENDERS)), stream),
                name=f"sender-{t}",
                daemon=True,
            )
            for t in range(SENDERS)
        ]
        before = last_change(engine)
        for thread in senders:
            thread.start()
        kill_after = rng.randint(*KILL_AFTER)

        def time_to_kill(stream: Stream = stream, proc: Proc = proc, kill_after: int = kill_after) -> bool:
            return stream.answered_count >= kill_after or bool(stream.other) or not proc.alive()

        wait_until(time_to_kill, 30, f"{kill_after} batches answered {context}", interval=0.002)
        proc.signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL, proc.stderr
        settled(engine)
        for thread in senders:
            thread.join(30)
            assert not thread.is_alive(), f"{thread.name} still sends after the kill {context}"

        assert stream.other == [], f"{stream.other} {context}"
        # every sender stopped at a batch without an answer, before its last one: killed mid-stream
        assert len(stream.unanswered) == SENDERS, f"{stream.unanswered} {context}"
        assert len(stream.answered) + len(stream.unanswered) < BATCHES_PER_ROUND, context
        sent |= set(stream.answered) | set(stream.unanswered)

        whole = stored_batches(engine, sent)
        assert set(stream.answered) <= whole, (
            f"answered 200 and lost: {set(stream.answered) - whole} {context}"
        )
        this_round = whole & set(range(first, first + BATCHES_PER_ROUND))
        expected = {customer for batch in this_round for customer in customers_of(batch)}
        assert changed_since(engine, before) == expected, context

        # the clients send every unanswered batch again to the restarted server: stored once
        proc = server.start()
        before = last_change(engine)
        with client(server.base_url) as http:
            for batch in sorted(stream.unanswered):
                response = post_batch(http, track_calls(batch))
                assert answered_in_full(response, EVENTS_PER_BATCH), f"{response.text} {context}"
            # an answered batch sent again stores nothing either
            again = post_batch(http, track_calls(stream.answered[0]))
            assert answered_in_full(again, EVENTS_PER_BATCH), f"{again.text} {context}"
        assert stored_batches(engine, sent) == sent, context
        newly = set(stream.unanswered) - whole
        assert changed_since(engine, before) >= {c for batch in newly for c in customers_of(batch)}, context

    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(EVENT)).scalar_one()
    assert total == len(sent) * EVENTS_PER_BATCH, context
    engine.dispose()
