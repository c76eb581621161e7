"""PostgreSQL: hear about customer writes as they commit (``LISTEN automation_change``).

The change-log trigger functions notify ``automation.db.triggers.CHANNEL`` once per transaction that
logged a customer (migration 0007). A ``ChangeListener`` holds one connection of its own for that,
outside the engine's pool and in autocommit mode, made from the engine's URL and options, and calls
``wake`` for every notification: the worker's reactor then looks at the change log as it would after
a poll.

When the connection cannot be made or drops (a restart, a failover, ``pg_terminate_backend``), the
listener logs one warning for the outage, naming only the error's class, and says ``listening`` is
False, which makes the reactor poll at its fast interval; it connects again after ``retry`` seconds,
doubling up to ``retry_max``, and logs one line when it listens again. TCP keepalives make a peer that
vanished without closing the connection an error within about a minute instead of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from automation.db.triggers import CHANNEL

log = logging.getLogger("automation.scheduler")

#: Seconds before the first attempt to listen again after the connection failed; doubled per attempt.
LISTEN_RETRY = 1.0
#: Seconds at most between two attempts to listen again.
LISTEN_RETRY_MAX = 30.0
#: libpq options of the listening connection, unless the database URL sets them.
CONNECTION_DEFAULTS: dict[str, Any] = {
    "application_name": "automation listen",
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def connect_params(engine: Engine) -> dict[str, Any]:
    """psycopg's connection parameters for ``engine``'s database, as its own pool would connect."""
    _args, params = engine.dialect.create_connect_args(engine.url)
    params = {k: v for k, v in params.items() if k != "context"}  # the engine's adapters: sync only
    return CONNECTION_DEFAULTS | params


class ChangeListener:
    """Calls ``wake`` (on the event loop) when a transaction logged customer changes, and when the
    listening starts or stops, so that the caller looks at the change log at once each time."""

    def __init__(
        self,
        engine: Engine,
        wake: Callable[[], None],
        *,
        fallback: float,
        retry: float = LISTEN_RETRY,
        retry_max: float = LISTEN_RETRY_MAX,
    ) -> None:
        self.engine = engine
        self.wake = wake
        self.fallback = fallback  # the caller's polling interval while not listening, for the log
        self.retry = retry
        self.retry_max = retry_max
        self.listening = False
        self.backend_pid: int | None = None  # the server process of the listening connection
        self._task: asyncio.Task[None] | None = None
        self._announced = False  # "listening for changes" was logged once

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = self.retry
        outage = False  # the warning was logged and nothing listened since
        while True:
            try:
                await self._listen(resumed=outage)
                error = "the connection ended"  # notifies() ends with an error: not expected
            except (psycopg.Error, OSError) as exc:
                error = type(exc).__name__  # the message may name the host and the user
            heard, self.listening, self.backend_pid = self.listening, False, None
            if heard:  # it listened: a new outage, retried from the shortest pause
                outage, delay = False, self.retry
                self.wake()  # the caller polls from now on
            if not outage:
                log.warning(
                    "not listening for changes (%s); polling the change log every %gs and trying again",
                    error,
                    self.fallback,
                )
                outage = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    async def _listen(self, *, resumed: bool) -> None:
        conn = await psycopg.AsyncConnection.connect(autocommit=True, **connect_params(self.engine))
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            self.listening = True
            self.backend_pid = conn.info.backend_pid
            if resumed:
                log.info("listening for changes again")
            elif not self._announced:
                log.info("listening for changes (LISTEN %s)", CHANNEL)
            self._announced = True
            self.wake()  # a write between the last look and LISTEN notified nobody
            async for _ in conn.notifies():
                self.wake()
        finally:
            await conn.close()
