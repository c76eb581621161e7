"""The worker's reactor: it moves a reactive playbook's tick job to now when the change log grew, never
while that tick runs and at most once per ``every`` seconds, and it survives an unreadable database with
one warning and no traceback.

On PostgreSQL it listens for the change log's notifications: a write wakes it at once with every polling
interval set long, a burst of writing transactions becomes a few ticks, and a listening connection the
server terminates makes it poll until it listens again. On SQLite it polls."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import psycopg
import pytest
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_SUBMITTED, JobEvent
from sqlalchemy import Engine, create_engine, insert, text, update
from sqlalchemy.engine import make_url

from automation.db.connect import make_engine
from automation.db.tables import CUSTOMER, EVENT, STATE
from automation.db.triggers import CHANNEL
from automation.ingest.writer import write_customers
from automation.worker.scheduler import Reactor

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


@dataclass
class FakeJob:
    moves: list[datetime] = field(default_factory=list)
    at: list[float] = field(default_factory=list)  # time.monotonic() of each move

    def modify(self, next_run_time: datetime) -> None:
        self.moves.append(next_run_time)
        self.at.append(time.monotonic())


@dataclass
class FakeScheduler:
    jobs: dict[str, FakeJob]

    def get_job(self, job_id: str) -> FakeJob | None:
        return self.jobs.get(job_id)


def playbook(name: str, react: str) -> Any:
    return SimpleNamespace(name=name, loaded=SimpleNamespace(playbook=SimpleNamespace(react=react)))


def reactor(engine: Any, every: float = 0.2, **options: Any) -> tuple[Reactor, dict[str, FakeJob]]:
    jobs = {"tick:now": FakeJob(), "tick:later": FakeJob()}
    worker = SimpleNamespace(
        daemon=SimpleNamespace(
            engine=engine,
            loaded=SimpleNamespace(
                playbooks=[playbook("now", "immediately"), playbook("later", "on schedule")]
            ),
        ),
        scheduler=FakeScheduler(jobs),
        clock=lambda: NOW,
    )
    return Reactor(cast(Any, worker), poll=options.pop("poll", 0.05), every=every, **options), jobs


def event(code: int, name: str) -> JobEvent:
    return JobEvent(code, f"tick:{name}", "default")


def test_only_reactive_playbooks_move_and_never_while_their_tick_runs() -> None:
    async def scenario() -> None:
        r, jobs = reactor(None)
        r.due.update(r.reactive())
        r.react()
        assert jobs["tick:now"].moves == [NOW] and jobs["tick:later"].moves == []

        r.on_job(event(EVENT_JOB_SUBMITTED, "now"))  # the tick starts: it reads the log from here on
        r.due.update(r.reactive())  # more writes while it runs
        r.react()
        assert len(jobs["tick:now"].moves) == 1  # not doubled
        await asyncio.sleep(0.3)  # past ``every``
        r.on_job(event(EVENT_JOB_EXECUTED, "now"))  # finished: the writes it may have missed get a tick
        assert len(jobs["tick:now"].moves) == 2
        r.close()

    asyncio.run(scenario())


def test_a_burst_moves_a_job_at_most_once_per_interval() -> None:
    async def scenario() -> None:
        r, jobs = reactor(None, every=0.3)
        ran = 0
        for _ in range(20):  # writes every 30 ms; each move runs a tick that starts and finishes at once
            r.due.update(r.reactive())
            r.react()
            await asyncio.sleep(0.03)  # 0.6 s in all
            while ran < len(jobs["tick:now"].moves):
                ran += 1
                r.on_job(event(EVENT_JOB_SUBMITTED, "now"))
                r.on_job(event(EVENT_JOB_EXECUTED, "now"))
        await asyncio.sleep(0.4)  # the last postponed move
        assert 2 <= len(jobs["tick:now"].moves) <= 4
        r.close()

    asyncio.run(scenario())


def test_an_unreadable_change_log_warns_once_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")  # no customer_change table yet

    async def scenario() -> list[int | None]:
        r, _ = reactor(engine)
        seen = [await r._newest(), await r._newest()]
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE customer_change (seq INTEGER PRIMARY KEY, customer_id TEXT)"))
            conn.execute(text("INSERT INTO customer_change (customer_id) VALUES ('c1')"))
        seen.append(await r._newest())
        return seen

    with caplog.at_level(logging.INFO, logger="automation.scheduler"):
        assert asyncio.run(scenario()) == [None, None, 1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["cannot read the change log (OperationalError); retrying"]
    assert all(r.exc_info is None for r in caplog.records)
    assert "reading the change log again" in caplog.messages
    engine.dispose()


# -- the watch itself: polling on SQLite, notifications on PostgreSQL

LONG = 30.0  # seconds: a polling interval no test waits for


def write(engine: Engine, *ids: str) -> float:
    """Upsert customers ``ids`` in one transaction, as the importer and the HTTP API do; the time.monotonic()
    of the commit."""
    with engine.begin() as conn:
        write_customers(conn, [{"id": i, "email": f"{i}@example.com"} for i in ids])
    return time.monotonic()


async def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


async def run_ticks(r: Reactor, job: FakeJob, stop: asyncio.Event) -> None:
    """Each move of ``job`` runs a tick that starts and finishes at once (the scheduler's job events)."""
    ran = 0
    while not stop.is_set():
        while ran < len(job.moves):
            ran += 1
            r.on_job(event(EVENT_JOB_SUBMITTED, "now"))
            r.on_job(event(EVENT_JOB_EXECUTED, "now"))
        await asyncio.sleep(0.005)


def listening(r: Reactor) -> bool:
    return r.listener is not None and r.listener.listening


def test_sqlite_the_watch_polls_and_a_write_moves_the_reactive_job(sqlite_engine: Engine) -> None:
    async def scenario() -> tuple[float, float]:
        r, jobs = reactor(sqlite_engine, poll=0.05)
        stop = asyncio.Event()
        watching = asyncio.ensure_future(r.watch(stop))
        await asyncio.sleep(0.1)
        written = await asyncio.to_thread(write, sqlite_engine, "c1")
        await until(lambda: jobs["tick:now"].moves, 2.0, "the reactive job to move")
        assert r.listener is None  # nothing to listen to on SQLite
        assert jobs["tick:later"].moves == []
        stop.set()
        await watching
        return written, jobs["tick:now"].at[0]

    written, moved = asyncio.run(scenario())
    assert moved - written < 0.5


def pg_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def heard(conn: psycopg.Connection[Any]) -> int:
    """How many notifications ``conn`` receives within 0.3 s."""
    return len(list(conn.notifies(timeout=0.3)))


def test_postgresql_a_writing_transaction_notifies_once_and_other_writes_not_at_all(
    pg_engine: Engine, pg_url: str
) -> None:
    with psycopg.connect(pg_conninfo(pg_url), autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        with pg_engine.begin() as tx:  # several statements on both logged tables: one notification
            write_customers(tx, [{"id": "c1"}, {"id": "c2"}])
            write_customers(tx, [{"id": "c1", "first_name": "Ada"}])
            tx.execute(
                insert(EVENT),
                [
                    {"customer_id": c, "name": "opened", "occurred_at": NOW, "properties": {}}
                    for c in ("c1", "c2")
                ],
            )
        assert heard(conn) == 1
        for customer_id in ("c3", "c4", "c5"):  # one per transaction
            write(pg_engine, customer_id)
        assert heard(conn) == 3
        with pg_engine.begin() as tx:  # a statement that writes no customer, and a tick's kind of write
            tx.execute(update(CUSTOMER).where(CUSTOMER.c.id == "nobody").values(plan="pro"))
            tx.execute(insert(STATE).values(playbook="p", customer_id="c1", stage="fresh"))
        assert heard(conn) == 0


def test_postgresql_a_write_wakes_the_watch_at_once_with_polling_set_long(pg_engine: Engine) -> None:
    def backend_alive(pid: int) -> bool:  # one transaction per look: pg_stat_activity is read once in each
        with pg_engine.connect() as conn:
            sql = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
            return bool(conn.execute(sql, {"pid": pid}).scalar_one())

    async def scenario() -> tuple[float, float]:
        r, jobs = reactor(pg_engine, poll=LONG, safety=LONG, gap=0.0)
        stop = asyncio.Event()
        watching = asyncio.ensure_future(r.watch(stop))
        await until(lambda: listening(r), 5.0, "the watch to listen")
        assert r.listener is not None and r.listener.backend_pid is not None
        pid = r.listener.backend_pid
        assert await asyncio.to_thread(backend_alive, pid)
        await asyncio.sleep(0.1)  # the look that listening began with is over
        written = await asyncio.to_thread(write, pg_engine, "c1")
        await until(lambda: jobs["tick:now"].moves, 2.0, "the reactive job to move")
        assert jobs["tick:later"].moves == []
        stop.set()
        await watching
        assert r.listener is None
        deadline = time.monotonic() + 5.0  # the watch closed the listening connection on its way out
        while await asyncio.to_thread(backend_alive, pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not await asyncio.to_thread(backend_alive, pid)
        return written, jobs["tick:now"].at[0]

    written, moved = asyncio.run(scenario())
    assert moved - written < 0.3


def test_postgresql_a_burst_of_writing_transactions_becomes_a_few_ticks(pg_engine: Engine) -> None:
    every = 0.3

    async def scenario() -> tuple[float, float, FakeJob]:
        r, jobs = reactor(pg_engine, every=every, poll=LONG, safety=LONG)
        stop = asyncio.Event()
        watching = asyncio.ensure_future(r.watch(stop))
        ticking = asyncio.ensure_future(run_ticks(r, jobs["tick:now"], stop))
        await until(lambda: listening(r), 5.0, "the watch to listen")
        began = time.monotonic()
        for i in range(40):  # 40 transactions, one customer each, over about a second
            last = await asyncio.to_thread(write, pg_engine, f"burst-{i}")
            await asyncio.sleep(0.02)
        await asyncio.sleep(every + 0.3)  # the move owed to the last writes
        stop.set()
        await asyncio.gather(watching, ticking)
        return last - began, last, jobs["tick:now"]

    burst, last, job = asyncio.run(scenario())
    print(f"40 transactions in {burst:.2f}s: {len(job.moves)} moves")
    assert 2 <= len(job.moves) <= burst / every + 2
    assert len(job.moves) <= 10
    assert job.at[-1] >= last  # the last writes got a tick of their own


def test_postgresql_a_terminated_listening_connection_falls_back_to_polling_and_listens_again(
    pg_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        r, jobs = reactor(pg_engine, every=0.05, poll=0.05, safety=LONG, gap=0.0, listen_retry=2.0)
        job = jobs["tick:now"]
        stop = asyncio.Event()
        watching = asyncio.ensure_future(r.watch(stop))
        ticking = asyncio.ensure_future(run_ticks(r, job, stop))
        await until(lambda: listening(r), 5.0, "the watch to listen")
        assert r.listener is not None
        first = r.listener.backend_pid
        with pg_engine.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar_one()
        await until(lambda: not listening(r), 2.0, "the watch to notice")

        # polling finds it, well before listening is tried again
        await asyncio.to_thread(write, pg_engine, "while-down")
        await until(lambda: len(job.moves) == 1, 1.0, "the write made while not listening")
        assert not listening(r)

        await until(lambda: listening(r), 5.0, "the watch to listen again")
        assert r.listener.backend_pid not in (None, first)
        await asyncio.sleep(0.1)  # the look that listening again began with is over
        written = await asyncio.to_thread(write, pg_engine, "after")
        await until(lambda: len(job.moves) == 2, 1.0, "the write made after listening again")
        assert job.at[1] - written < 0.3  # a notification: the safety net polls every 30 s
        stop.set()
        await asyncio.gather(watching, ticking)

    with caplog.at_level(logging.INFO, logger="automation.scheduler"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "not listening for changes (OperationalError); polling the change log every 0.05s and trying again"
    ]
    assert "listening for changes again" in caplog.messages
    assert all(r.exc_info is None for r in caplog.records)


def test_an_unreachable_server_is_warned_about_once_however_often_listening_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A local server that closes every connection at once: the watch retries listening with a growing
    pause, and logs one warning for listening and one for reading the log, without tracebacks."""

    async def scenario() -> int:
        accepted = 0

        def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            writer.close()

        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        engine = make_engine(f"postgresql+psycopg://automation@127.0.0.1:{port}/nowhere", pool_pre_ping=False)
        r, _ = reactor(engine, poll=LONG, safety=LONG, listen_retry=0.05)
        stop = asyncio.Event()
        watching = asyncio.ensure_future(r.watch(stop))
        await asyncio.sleep(1.2)  # tries at about 0, 0.05, 0.15, 0.35 and 0.75 s
        assert not listening(r)
        stop.set()
        await watching
        server.close()
        await server.wait_closed()
        engine.dispose()
        return accepted

    with caplog.at_level(logging.INFO, logger="automation.scheduler"):
        accepted = asyncio.run(scenario())
    assert accepted >= 5  # one read of the log and at least four attempts to listen
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warnings == [
        "cannot read the change log (OperationalError); retrying",
        "not listening for changes (OperationalError); polling the change log every 30s and trying again",
    ]
    assert all(r.exc_info is None for r in caplog.records)
