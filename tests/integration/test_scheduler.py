"""The worker's jobs: one per playbook, coalesced, never overlapping, interval or cron as written."""

from __future__ import annotations

import asyncio
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from automation.config import Settings
from automation.outbox.dispatch import DispatchConfig
from automation.worker.daemon import Daemon
from automation.worker.scheduler import Worker
from tests.conftest import ROOT
from tests.integration.known import NOW


def make_worker(engine: Engine, folder: Path) -> Worker:
    daemon = Daemon(
        engine, Settings(templates_dir=ROOT / "templates"), {}, [folder], DispatchConfig(worker_id="s")
    )
    daemon.load()
    return Worker(daemon, clock=lambda: NOW)


def test_jobs_follow_the_playbooks_and_reload_keeps_the_last_good_set(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    text = (ROOT / "playbooks" / "lifecycle.yaml").read_text()
    (tmp_path / "lifecycle.yaml").write_text(text)
    (tmp_path / "nightly.yaml").write_text(
        text.replace("name: lifecycle", "name: nightly").replace("every 15 minutes", 'cron "0 3 * * *"')
    )

    async def scenario() -> None:
        worker = make_worker(sqlite_engine, tmp_path)
        worker.scheduler = AsyncIOScheduler()
        worker.scheduler.start(paused=True)
        worker.schedule_jobs()
        jobs = {job.id: job for job in worker.scheduler.get_jobs()}
        assert set(jobs) == {"tick:lifecycle", "tick:nightly"}
        every = jobs["tick:lifecycle"]
        assert isinstance(every.trigger, IntervalTrigger) and every.trigger.interval.total_seconds() == 900
        assert isinstance(jobs["tick:nightly"].trigger, CronTrigger)
        for job in jobs.values():
            assert job.coalesce is True and job.max_instances == 1 and job.misfire_grace_time is None

        # a broken playbook on reload: reported, and the previous jobs stay
        (tmp_path / "nightly.yaml").write_text(text.replace("orders_count >= 2", "ordres_count >= 2"))
        worker._reload()
        assert {job.id for job in worker.scheduler.get_jobs()} == {"tick:lifecycle", "tick:nightly"}
        # a removed playbook on a good reload: its job goes
        (tmp_path / "nightly.yaml").unlink()
        worker._reload()
        assert {job.id for job in worker.scheduler.get_jobs()} == {"tick:lifecycle"}
        worker.scheduler.shutdown(wait=False)

    asyncio.run(scenario())
