"""Group commit on a real SQLite database: waiting jobs share a transaction, a refused one fails alone."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import IntegrityError

from automation.db.connect import make_engine
from automation.web.group_commit import GroupCommit


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'group.sqlite'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, txn INTEGER)")
    COMMITS.clear()
    event.listen(engine, "commit", lambda conn: COMMITS.append(1))
    return engine


COMMITS: list[int] = []  # one entry per commit of the fixture's engine


def _insert(item: int, gate: threading.Event | None = None):  # type: ignore[no-untyped-def]
    def job(conn: Connection) -> int:
        if gate is not None:
            gate.wait(5)
        # the commits so far: the same for every job of one transaction
        conn.execute(text("INSERT INTO item (id, txn) VALUES (:id, :txn)"), {"id": item, "txn": len(COMMITS)})
        return item

    return job


def _stored(engine: Engine) -> list[tuple[int, int]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text("SELECT id, txn FROM item ORDER BY id"))]


def test_jobs_waiting_together_share_one_transaction(sqlite_engine: Engine) -> None:
    group = GroupCommit[int](sqlite_engine)
    gate = threading.Event()

    async def go() -> list[int]:
        first = asyncio.ensure_future(group.run(_insert(1, gate)))  # holds the thread while the rest queue
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(group.run(_insert(n))) for n in range(2, 7)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(go()) == [1, 2, 3, 4, 5, 6]
    stored = _stored(sqlite_engine)
    assert [item for item, _txn in stored] == [1, 2, 3, 4, 5, 6]
    assert [txn for _item, txn in stored] == [0, 1, 1, 1, 1, 1] and len(COMMITS) == 2


def test_a_refused_job_fails_alone_and_the_others_commit(sqlite_engine: Engine) -> None:
    group = GroupCommit[int](sqlite_engine)
    gate = threading.Event()

    async def go() -> list[int | BaseException]:
        first = asyncio.ensure_future(group.run(_insert(1, gate)))
        await asyncio.sleep(0.05)
        # 1 again: a duplicate key, refused by the database inside the shared transaction
        rest = [asyncio.ensure_future(group.run(_insert(n))) for n in (2, 1, 3)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(go())
    assert results[:2] == [1, 2] and results[3] == 3
    assert isinstance(results[2], IntegrityError)
    assert [item for item, _txn in _stored(sqlite_engine)] == [1, 2, 3]


def test_a_job_whose_caller_has_gone_before_it_started_is_not_run(sqlite_engine: Engine) -> None:
    group = GroupCommit[int](sqlite_engine)
    gate = threading.Event()

    async def go() -> None:
        first = asyncio.ensure_future(group.run(_insert(1, gate)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(group.run(_insert(2)))
        await asyncio.sleep(0.01)
        gone.cancel()
        kept = asyncio.ensure_future(group.run(_insert(3)))
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, kept)

    asyncio.run(go())
    assert [item for item, _txn in _stored(sqlite_engine)] == [1, 3]
