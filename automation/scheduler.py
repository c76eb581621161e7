"""The long-running worker: APScheduler runs each playbook's tick on its schedule; a loop drains the outbox.

This is the only module that imports APScheduler and reads the real clock. Each playbook's
``schedule`` becomes a job (interval or cron) with ``coalesce`` (a missed tick runs once, not once per
missed slot), ``max_instances=1`` (a tick never overlaps itself) and no misfire grace limit. Ticks run
in a worker thread so the dispatch loop keeps sending meanwhile.

Signals: SIGHUP re-validates playbooks and templates (a broken one is reported and the previous set
keeps running); SIGTERM and SIGINT stop claiming, let in-flight messages finish or release them, and
exit within ``shutdown_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from automation.daemon import Daemon
from automation.dispatch import DispatchStats
from automation.outbox import next_due, release

log = logging.getLogger("automation.scheduler")


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.daemon.tick, name, self.clock())
        except Exception:
            log.exception("%s: tick failed; it runs again at the next scheduled time", name)
        self.wake.set()  # new messages may be due now

    def _reload(self) -> None:
        if self.daemon.reload():
            self.schedule_jobs()

    async def run(self) -> DispatchStats:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.scheduler.start()
        self.schedule_jobs()
        log.info(
            "running %d playbook(s); dispatching",
            len(self.daemon.loaded.playbooks) if self.daemon.loaded else 0,
        )
        try:
            while not self.stop.is_set():
                draining = asyncio.ensure_future(self.daemon.drain(self.clock, self.stop))
                stopping = asyncio.ensure_future(self.stop.wait())
                await asyncio.wait([draining, stopping], return_when=asyncio.FIRST_COMPLETED)
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
            self.scheduler.shutdown(wait=False)
            self._release()
        return self.totals

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
