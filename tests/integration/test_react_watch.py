"""The worker's reactor: it moves a reactive playbook's tick job to now when the change log grew, never
while that tick runs and at most once per ``every`` seconds, and it survives an unreadable database with
one warning and no traceback."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_SUBMITTED, JobEvent
from sqlalchemy import create_engine, text

from automation.worker.scheduler import Reactor

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


@dataclass
class FakeJob:
    moves: list[datetime] = field(default_factory=list)

    def modify(self, next_run_time: datetime) -> None:
        self.moves.append(next_run_time)


@dataclass
class FakeScheduler:
    jobs: dict[str, FakeJob]

    def get_job(self, job_id: str) -> FakeJob | None:
        return self.jobs.get(job_id)


def playbook(name: str, react: str) -> Any:
    return SimpleNamespace(name=name, loaded=SimpleNamespace(playbook=SimpleNamespace(react=react)))


def reactor(engine: Any, every: float = 0.2) -> tuple[Reactor, dict[str, FakeJob]]:
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
    return Reactor(cast(Any, worker), poll=0.05, every=every), jobs


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
