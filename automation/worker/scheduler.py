"""The long-running worker: APScheduler runs each playbook's tick on its schedule; a loop drains the outbox.

This is the only module that imports APScheduler and reads the real clock. Each playbook's
``schedule`` becomes a job (interval or cron) with ``coalesce`` (a missed tick runs once, not once per
missed slot), ``max_instances=1`` (a tick never overlaps itself) and no misfire grace limit. Ticks run
in a worker thread so the dispatch loop keeps sending meanwhile.

Reacting: while it runs, the worker looks at the newest ``customer_change`` position (one read of the
primary key's end). On PostgreSQL it listens for the change log's notifications
(``automation.worker.listen``) and looks as soon as one arrives, and otherwise only every
``react_safety`` seconds, a safety net for a notification that never came; on SQLite, and on PostgreSQL
while the listening connection is down, it looks every ``react_poll`` seconds. When the position grew,
the tick job of every ``react: immediately`` playbook is moved to now (``job.modify(next_run_time=...)``),
so a reactive tick is the scheduled one run early, with the same coalescing, ``max_instances=1``, lock
and transaction. At most one tick per playbook starts per ``react_every`` seconds: a burst of writes
becomes one or two ticks. A playbook whose tick is running is moved when it finishes, never doubled.

Signals: SIGHUP re-validates playbooks and templates (a broken one is reported and the previous set
keeps running); SIGTERM and SIGINT stop claiming, let in-flight messages finish or release them, and
exit within ``shutdown_timeout`` seconds.

A tick in progress when the worker stops may finish within that time too; one that does not is given
up: its one transaction is rolled back (the tick runs again at the next start) and the log says so in
one line. Ticks therefore run on daemon threads of their own, not in the loop's executor, which
``asyncio.run`` and the interpreter would wait for at exit however long the tick takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_SUBMITTED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, event
from sqlalchemy.exc import SQLAlchemyError

from automation.outbox.dispatch import DispatchStats
from automation.outbox.lease import next_due, release
from automation.plan.incremental import newest_change
from automation.worker.daemon import Daemon
from automation.worker.listen import LISTEN_RETRY, ChangeListener

log = logging.getLogger("automation.scheduler")

#: Seconds a stopping worker still gives a tick it finds in the middle of its commit.
COMMIT_GRACE = 1.0
#: Seconds between looks at the newest customer change (``react: immediately`` playbooks) when nothing
#: notifies: on SQLite, and on PostgreSQL while the listening connection is down.
REACT_POLL = 0.5
#: Seconds between looks on PostgreSQL while listening: the safety net for a lost notification.
REACT_SAFETY = 5.0
#: Seconds at least between two looks caused by notifications: a stream of writing transactions is
#: looked at twice a second, not once per transaction (ticks start at most once per REACT_EVERY).
REACT_GAP = 0.5
#: Seconds at least between the starts of two ticks of one playbook caused by changes.
REACT_EVERY = 1.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class TickAbandoned(Exception):
    """Raised on the thread of a tick the stopping worker gave up on, so that its transaction rolls back."""


@dataclass(eq=False)
class TickRun:
    """One tick running on a daemon thread of its own, and what a stopping worker may do with it.

    ``future`` resolves in the loop when the thread is done (with the tick's exception if it failed).
    ``abandon`` stops the tick where it is: the statement it runs is interrupted and every later
    statement or commit on its thread raises ``TickAbandoned`` (see ``install_tick_gate``). Its one
    transaction is then rolled back, and the database lock it held is free for the worker's own last
    writes (on SQLite, releasing claimed messages would otherwise wait for the whole tick).
    """

    name: str
    future: asyncio.Future[None]
    task: asyncio.Task[Any] | None = None
    abandoned: bool = False
    committing: bool = False  # a commit began since the thread's transaction did: it may be landing now
    running: Any = None  # the DBAPI connection of the statement the tick thread runs now
    stopped_statement: bool = False  # SQLite: the running statement was aborted once (see _progress)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def began(self) -> None:
        with self.lock:
            self.committing = False

    def executing(self, dbapi_connection: Any) -> None:
        with self.lock:
            if self.abandoned:
                raise TickAbandoned(f"{self.name}: the worker is stopping; the tick is rolled back")
            self.running = dbapi_connection

    def executed(self) -> None:
        with self.lock:
            self.running = None

    def commit(self) -> None:
        with self.lock:
            if self.abandoned:
                raise TickAbandoned(f"{self.name}: the worker is stopping; the tick is rolled back")
            self.committing = True

    def abandon(self) -> bool:
        """Give the tick up unless its commit is under way (then False: it may be written already)."""
        with self.lock:
            if self.committing:
                return False
            self.abandoned = True
            if self.running is not None:  # under the lock: the connection is still the tick's
                _interrupt(self.running)
        if not self.future.done():
            self.future.set_result(None)
        return True


def _interrupt(dbapi_connection: Any) -> None:
    """Abort the statement running on ``dbapi_connection`` (from another thread; never raises).

    On PostgreSQL the server cancels the query. SQLite's own ``interrupt()`` would also abort the
    rollback that follows (it holds until every statement of the connection is reset), keeping the
    write lock; there the tick's progress handler (``_progress``) aborts the one statement instead."""
    with contextlib.suppress(Exception):
        if callable(cancel := getattr(dbapi_connection, "cancel_safe", None)):  # psycopg
            cancel(timeout=1.0)


_PROGRESS_EVERY = 10_000  # SQLite virtual machine steps between looks at whether the tick is given up


def _progress() -> int:
    """SQLite's progress handler on a tick's connection: non-zero once, to abort the statement running
    when the tick was given up; the rollback after it then runs."""
    run = _run_here()
    if run is None or not run.abandoned or run.stopped_statement:
        return 0
    run.stopped_statement = True
    return 1


_current = threading.local()  # .run: the TickRun of the tick thread, unset on every other thread


def _run_here() -> TickRun | None:
    run: TickRun | None = getattr(_current, "run", None)
    return run


def _on_begin(conn: object) -> None:
    if (run := _run_here()) is not None:
        run.began()


def _on_execute(conn: object, cursor: Any, *args: object) -> None:
    if (run := _run_here()) is not None:
        run.executing(cursor.connection)
        if isinstance(cursor.connection, sqlite3.Connection):
            cursor.connection.set_progress_handler(_progress, _PROGRESS_EVERY)


def _on_executed(*args: object) -> None:
    if (run := _run_here()) is not None:
        run.executed()


def _on_commit(conn: object) -> None:
    if (run := _run_here()) is not None:
        run.commit()


_GATE: tuple[tuple[str, Callable[..., None]], ...] = (
    ("begin", _on_begin),
    ("before_cursor_execute", _on_execute),
    ("after_cursor_execute", _on_executed),
    ("handle_error", _on_executed),
    ("commit", _on_commit),
)


def install_tick_gate(engine: Engine) -> None:
    """Let ``TickRun.abandon`` stop a tick's statements and commit on ``engine``. The listeners act only
    on tick threads and stay installed: an abandoned tick's thread may run on after the worker is gone."""
    for name, listener in _GATE:
        if not event.contains(engine, name, listener):
            event.listen(engine, name, listener)


def start_tick(loop: asyncio.AbstractEventLoop, name: str, tick: Callable[[], object]) -> TickRun:
    """Run ``tick`` on a new daemon thread; its ``TickRun`` resolves in ``loop`` when it is done."""
    run = TickRun(name, loop.create_future())

    def settle(error: Exception | None) -> None:
        if run.future.done():  # abandoned: the worker stopped waiting
            return
        if error is None:
            run.future.set_result(None)
        else:
            run.future.set_exception(error)

    def target() -> None:
        _current.run = run
        error: Exception | None = None
        try:
            tick()
        except TickAbandoned:
            pass
        except Exception as exc:
            error = exc
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the worker stopped without it
                loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=target, name=f"tick {name}", daemon=True).start()
    return run


class Worker:
    """Runs a ``Daemon`` until told to stop."""

    def __init__(
        self,
        daemon: Daemon,
        *,
        poll: float = 1.0,
        max_idle: float = 60.0,
        shutdown_timeout: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
        react_poll: float = REACT_POLL,
        react_every: float = REACT_EVERY,
        react_safety: float = REACT_SAFETY,
    ) -> None:
        self.daemon = daemon
        self.poll = poll
        self.max_idle = max_idle
        self.shutdown_timeout = shutdown_timeout
        self.clock = clock
        self.stop = asyncio.Event()
        self.wake = asyncio.Event()
        self.scheduler: AsyncIOScheduler | None = None
        self.totals = DispatchStats()
        self.ticks: set[TickRun] = set()  # the ticks running now
        self.reactor = Reactor(self, react_poll, react_every, safety=react_safety)
        self.serial = threading.Lock() if daemon.engine.dialect.name == "sqlite" else None

    def schedule_jobs(self) -> None:
        assert self.scheduler is not None and self.daemon.loaded is not None
        wanted = set()
        for compiled in self.daemon.loaded.playbooks:
            pb = compiled.loaded.playbook
            trigger = (
                IntervalTrigger(seconds=pb.schedule.every.total_seconds(), timezone=UTC)
                if pb.schedule.every is not None
                else CronTrigger.from_crontab(pb.schedule.cron, timezone=UTC)
            )
            job_id = f"tick:{pb.name}"
            wanted.add(job_id)
            self.scheduler.add_job(
                self._tick,
                trigger,
                args=[pb.name],
                id=job_id,
                name=f"tick {pb.name}",
                replace_existing=True,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=None,
                next_run_time=self.clock(),
            )
        for job in self.scheduler.get_jobs():
            if job.id.startswith("tick:") and job.id not in wanted:
                job.remove()

    async def _tick(self, name: str) -> None:
        """The job of playbook ``name``: one tick on a thread of its own (``start_tick``), awaited here so
        the loop keeps dispatching; a failed tick is logged and runs again at its next time."""
        if self.stop.is_set():  # submitted just before the scheduler was paused
            return
        log.info("%s: tick started", name)
        now = self.clock()
        run = start_tick(
            asyncio.get_running_loop(), name, self._one_at_a_time(lambda: self.daemon.tick(name, now))
        )
        run.task = asyncio.current_task()
        self.ticks.add(run)
        try:
            await run.future
        except Exception:
            log.exception("%s: tick failed; it runs again at the next scheduled time", name)
        finally:
            self.ticks.discard(run)
        self.wake.set()  # new messages may be due now

    def _one_at_a_time(self, tick: Callable[[], object]) -> Callable[[], object]:
        """On SQLite, ``tick`` waits on its thread for any other playbook's tick to finish: two write
        transactions that began as reads cannot both commit there (the second fails with "database is
        locked"), and reacting to a write moves every reactive playbook's tick at once."""
        if self.serial is None:
            return tick
        serial = self.serial

        def serialised() -> object:
            with serial:
                return tick()

        return serialised

    def _reload(self) -> None:
        if self.daemon.reload():
            self.schedule_jobs()

    async def run(self) -> DispatchStats:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        install_tick_gate(self.daemon.engine)
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.scheduler.add_listener(
            self.reactor.on_job, EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED | EVENT_JOB_ERROR
        )
        self.scheduler.start()
        self.schedule_jobs()
        watcher = asyncio.ensure_future(self.reactor.watch(self.stop))
        log.info(
            "running %d playbook(s); dispatching",
            len(self.daemon.loaded.playbooks) if self.daemon.loaded else 0,
        )
        deadline = float("inf")  # loop time by which a stopping worker is gone, once it is stopping
        try:
            while not self.stop.is_set():
                draining = asyncio.ensure_future(self.daemon.drain(self.clock, self.stop))
                stopping = asyncio.ensure_future(self.stop.wait())
                await asyncio.wait([draining, stopping], return_when=asyncio.FIRST_COMPLETED)
                if self.stop.is_set():
                    deadline = loop.time() + self.shutdown_timeout
                if not draining.done():  # stopping: let the batch in flight finish, for a bounded time
                    await asyncio.wait([draining], timeout=self.shutdown_timeout)
                if draining.done():
                    self._add(draining.result())
                else:
                    draining.cancel()
                    # it marks what already finished before unwinding; a moment, then the rest is released
                    await asyncio.wait([draining], timeout=1.0)
                    log.warning(
                        "in-flight messages did not finish within %.0fs; releasing them",
                        self.shutdown_timeout,
                    )
                stopping.cancel()
                if self.stop.is_set():
                    break
                self.wake.clear()
                waits = [asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(self.wake.wait())]
                await asyncio.wait(waits, timeout=self._idle_wait(), return_when=asyncio.FIRST_COMPLETED)
                for waiter in waits:
                    waiter.cancel()
        finally:
            self.scheduler.pause()  # no tick starts while stopping
            self.reactor.close()
            await asyncio.wait([watcher], timeout=self.shutdown_timeout)
            await self._finish_ticks(min(deadline, loop.time() + self.shutdown_timeout))
            self.scheduler.shutdown(wait=False)
            self._release()
        return self.totals

    async def _finish_ticks(self, deadline: float) -> None:
        """Let the ticks in progress finish until ``deadline`` (loop time), then give up the others; one
        line per tick says which. Their jobs then end without cancellation, so the scheduler's shutdown
        has nothing to cancel (it would log a ``CancelledError`` traceback per job)."""
        runs = sorted(self.ticks, key=lambda r: r.name)
        if not runs:
            return
        loop = asyncio.get_running_loop()
        await asyncio.wait([r.future for r in runs], timeout=max(deadline - loop.time(), 0.0))
        for run in runs:
            await self._settle(run)
        await asyncio.wait([r.task for r in runs if r.task is not None])

    async def _settle(self, run: TickRun) -> None:
        """Log what became of ``run`` at the shutdown deadline, giving it up if it is still running."""
        if not run.future.done() and not run.abandon():  # its commit is under way: a moment more
            await asyncio.wait([run.future], timeout=COMMIT_GRACE)
            if not run.future.done() and not run.abandon():
                log.warning(
                    "stopping: the tick of %s was committing when %.0fs ran out; it is written whole or "
                    "not at all (it runs again at the next start)",
                    run.name,
                    self.shutdown_timeout,
                )
                run.future.set_result(None)
                return
        if run.abandoned:
            log.warning(
                "stopping: the tick of %s in progress did not finish within %.0fs and is rolled back "
                "(it runs again at the next start)",
                run.name,
                self.shutdown_timeout,
            )
        elif run.future.exception() is None:
            log.info("stopping: the tick of %s in progress finished first", run.name)

    def _idle_wait(self) -> float:
        """Seconds to sleep before looking at the outbox again: until the next message is due (or a lease
        expires), at least ``poll`` and at most ``max_idle``. A tick wakes the loop at once, so an idle
        worker does no work between ticks."""
        upcoming = next_due(self.daemon.engine)
        if upcoming is None:
            return self.max_idle
        seconds = (upcoming - self.clock()).total_seconds()
        return min(max(seconds, self.poll), self.max_idle)

    def _add(self, stats: DispatchStats) -> None:
        self.totals.claimed += stats.claimed
        self.totals.outcomes.update(stats.outcomes)
        self.totals.reasons.update(stats.reasons)

    def _release(self) -> None:
        """Give back anything this worker still holds so another can take it at once."""
        with self.daemon.engine.begin() as conn:
            released = release(conn, self.daemon.config.worker_id)
        if released:
            log.info("released %d claimed message(s)", released)


class Reactor:
    """Runs the tick jobs of ``react: immediately`` playbooks early when customers were written.

    ``watch`` looks at the newest ``customer_change`` position when notified (PostgreSQL) or when its
    polling interval is up; when it grew, every reactive playbook is due. ``react`` moves the job of
    each due playbook to now, unless a tick of it is running (it is moved when that one finishes: the
    running tick may have read the log before the new rows) or one started less than ``every``
    seconds ago (then it is moved once that time is up). ``on_job`` follows the scheduler's job events,
    which it sends on the loop right after submitting or finishing a job.
    """

    def __init__(
        self,
        worker: Worker,
        poll: float,
        every: float,
        *,
        safety: float = REACT_SAFETY,
        gap: float = REACT_GAP,
        listen_retry: float = LISTEN_RETRY,
    ) -> None:
        self.worker = worker
        self.poll = poll
        self.every = every
        self.safety = safety
        self.gap = gap
        self.listen_retry = listen_retry
        self.due: set[str] = set()  # playbooks with changes no tick has started on yet
        self.busy: set[str] = set()  # playbooks whose tick job is submitted and not finished
        self.moved: set[str] = set()  # playbooks whose job was moved to now and is not submitted yet
        self.started: dict[str, float] = {}  # loop time of each playbook's last tick start
        self.later: asyncio.TimerHandle | None = None
        self.closed = False
        self.unavailable = False  # the last look at the change log failed (warned once)
        self.listener: ChangeListener | None = None  # PostgreSQL, while there are reactive playbooks
        self.nudged = asyncio.Event()  # the listener heard of a change (or started or stopped listening)
        self.found = float("-inf")  # loop time of the last look that found new changes

    def reactive(self) -> list[str]:
        loaded = self.worker.daemon.loaded
        if loaded is None:
            return []
        return [c.name for c in loaded.playbooks if c.loaded.playbook.react == "immediately"]

    async def watch(self, stop: asyncio.Event) -> None:
        """Until ``stop``: look at the change log when nudged or when the polling interval is up, and
        mark the reactive playbooks due if it grew. The listening connection is closed on the way out."""
        loop = asyncio.get_running_loop()
        last = await self._newest()
        try:
            while not stop.is_set():
                await self._follow()
                await self._pause(stop)
                self.nudged.clear()  # a notification from here on makes another look
                if stop.is_set() or not self.reactive():
                    continue
                began = loop.time()
                newest = await self._newest()
                if newest is None:
                    continue
                if last is not None and newest > last:
                    self.found = began
                    self.due.update(self.reactive())
                    self.react()
                last = newest
        finally:
            if self.listener is not None:
                await self.listener.close()
                self.listener = None

    async def _follow(self) -> None:
        """Listen on PostgreSQL while some playbook reacts; stop when none does (after a reload)."""
        wanted = bool(self.reactive()) and self.worker.daemon.engine.dialect.name == "postgresql"
        if wanted and self.listener is None:
            self.listener = ChangeListener(
                self.worker.daemon.engine, self.nudged.set, fallback=self.poll, retry=self.listen_retry
            )
            self.listener.start()
        elif not wanted and self.listener is not None:
            await self.listener.close()
            self.listener = None

    async def _pause(self, stop: asyncio.Event) -> None:
        """Wait for ``stop``, a nudge, or the polling interval: ``safety`` seconds while listening,
        ``poll`` otherwise. A nudge less than ``gap`` seconds after a look that found changes waits for
        the rest: a stream of writing transactions is looked at every ``gap`` seconds, and a first
        write after a quiet spell at once. (Ticks start at most every ``every`` seconds anyway.)"""
        listening = self.listener is not None and self.listener.listening
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.nudged.wait())]
        await asyncio.wait(
            waits, timeout=self.safety if listening else self.poll, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in waits:
            waiter.cancel()
        rest = self.found + self.gap - asyncio.get_running_loop().time()
        if self.nudged.is_set() and rest > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=rest)

    async def _newest(self) -> int | None:
        """The newest change position, or None (one warning per outage, no traceback) when the database
        cannot be read; the next look retries."""
        try:
            newest = await asyncio.to_thread(newest_change, self.worker.daemon.engine)
        except SQLAlchemyError as exc:
            if not self.unavailable:
                log.warning(
                    "cannot read the change log (%s); retrying",
                    type(getattr(exc, "orig", None) or exc).__name__,
                )
            self.unavailable = True
            return None
        if self.unavailable:
            log.info("reading the change log again")
            self.unavailable = False
        return newest

    def react(self) -> None:
        """Move the job of every due playbook that may tick now to now; come back for the others."""
        scheduler = self.worker.scheduler
        if self.closed or scheduler is None:
            return
        loop = asyncio.get_running_loop()
        wanted = set(self.reactive())
        self.due &= wanted
        self.moved &= wanted
        wait = 0.0
        for name in sorted(self.due - self.busy - self.moved):
            left = self.started.get(name, float("-inf")) + self.every - loop.time()
            job = scheduler.get_job(f"tick:{name}")
            if job is None:
                self.due.discard(name)
            elif left > 0:
                wait = left if wait == 0.0 else min(wait, left)
            else:
                self.moved.add(name)
                job.modify(next_run_time=self.worker.clock())
        if wait > 0 and self.later is None:
            self.later = loop.call_later(wait, self._come_back)

    def _come_back(self) -> None:
        self.later = None
        self.react()

    def on_job(self, event: JobEvent) -> None:
        """Scheduler listener: a tick job was submitted (it reads the log from now on) or finished."""
        if not event.job_id.startswith("tick:"):
            return
        name = event.job_id.removeprefix("tick:")
        if event.code == EVENT_JOB_SUBMITTED:
            self.busy.add(name)
            self.moved.discard(name)
            self.due.discard(name)
            self.started[name] = asyncio.get_running_loop().time()
        else:
            self.busy.discard(name)
            if self.due:
                self.react()

    def close(self) -> None:
        """Stop moving jobs (the worker is stopping)."""
        self.closed = True
        if self.later is not None:
            self.later.cancel()
            self.later = None
