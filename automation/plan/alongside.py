"""The tick's second PostgreSQL connection: work that runs on a thread while the tick goes on.

A PostgreSQL tick uses two cores: a second connection evaluates half of an incremental tick's
candidates (``automation.plan.evaluate.materialize``), and later serves the planner's lookups while
the tick's own connection writes state, history and the outbox planned so far (``Alongside``). A
connection serves one thread at a time, so each hand-over waits for the other side to finish, also
when it fails.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection


class Background:
    """``work`` run on a thread: ``join`` waits for it, ``result`` returns what it returned or raises
    what it raised."""

    def __init__(self, work: Callable[[], Any], name: str) -> None:
        self._work = work
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._work()
        except BaseException as exc:  # raised again by ``result``, on the caller's thread
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


class Reads(Protocol):
    """What ``Alongside`` needs of the planner: the connection its lookups go through."""

    conn: Connection


@dataclass
class Alongside:
    """Database work that overlaps the planning of a tick (PostgreSQL).

    ``work`` runs on a thread with the tick's connection until the event it is given is set: a tick
    writes the state and history (which read only the tick's table), then the rows planned so far
    (``OutboxSink.write_while``). Meanwhile the planner looks customers, enrollments and messages up
    through ``reader``, a second connection: the server writes on one core while the planner plans on
    the other. ``reader`` does not see what the tick's transaction writes; the planner needs none of
    it: it keeps what it planned itself (a tick's plan is the same written at once or seven rows at a
    time).
    """

    reader: Connection
    work: Callable[[threading.Event], None]

    def run(self, planner: Reads, plan: Callable[[], None]) -> None:
        conn, planner.conn = planner.conn, self.reader
        planning = threading.Event()
        writes = Background(lambda: self.work(planning), "tick-writes")
        try:
            plan()
        finally:  # the tick's connection serves one thread at a time, also on the way out
            planning.set()
            writes.join()
            planner.conn = conn
        writes.result()
