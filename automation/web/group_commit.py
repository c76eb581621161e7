"""One writing thread whose waiting jobs share a transaction: group commit for SQLite.

SQLite takes one writer at a time, so requests of the ingestion API that arrive together would
each wait for the lock, then pay for their own ``BEGIN`` and ``COMMIT``. Here they queue instead: a
single thread takes every job waiting when it is free (up to ``max_jobs``), runs them one after the
other in one transaction and commits once. A job's caller gets its answer only after that commit,
so an acknowledged write is as durable as with a transaction of its own.

A job is a function of the connection that returns its result and changes nothing outside the
database. If the shared transaction fails, it is rolled back and each of its jobs runs again in a
transaction of its own, so a job that the database refuses fails alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine

T = TypeVar("T")

Job = Callable[[Connection], T]


class GroupCommit(Generic[T]):
    """Run jobs on ``engine`` from one thread, the jobs waiting together in one transaction."""

    def __init__(self, engine: Engine, max_jobs: int = 32) -> None:
        self.engine = engine
        self.max_jobs = max_jobs
        self._queue: queue.SimpleQueue[tuple[Job[T], concurrent.futures.Future[T]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    async def run(self, job: Job[T]) -> T:
        """``job(conn)``'s result once its transaction is committed (or its exception)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._ensure_thread()
        self._queue.put((job, future))
        return await asyncio.wrap_future(future)

    def _ensure_thread(self) -> None:
        with self._start:
            if self._thread is None:
                # a daemon: it holds no acknowledged work when the process ends, since every job's
                # caller waits for its commit (and ``automation serve`` lets callers finish)
                self._thread = threading.Thread(target=self._loop, name="group-commit", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < self.max_jobs:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # a job whose caller has gone (cancelled) before it started is not run
            group = [(job, future) for job, future in group if future.set_running_or_notify_cancel()]
            if group:
                self._commit(group)

    def _commit(self, group: list[tuple[Job[T], concurrent.futures.Future[T]]]) -> None:
        try:
            with self.engine.begin() as conn:
                results = [job(conn) for job, _future in group]
        except Exception as exc:
            if len(group) > 1:
                for item in group:  # alone, so that a refused job fails only itself
                    self._commit([item])
                return
            group[0][1].set_exception(exc)
            return
        for (_job, future), result in zip(group, results, strict=True):
            future.set_result(result)
