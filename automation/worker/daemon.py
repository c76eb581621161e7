"""What ``automation run`` does, without the scheduler: tick playbooks and drain the outbox at a time.

``Daemon`` holds the validated playbooks and the channels. ``tick_all(now)`` runs one tick of every
playbook (each in its own transaction; on PostgreSQL under an advisory lock, so among several workers
one ticks a playbook at a time and the others skip it), ``drain(now)`` sends what is due. The clock is
a parameter everywhere, which is what time-travel tests and ``run --once --at`` use; only
``automation.worker.scheduler`` reads the real clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from automation.authoring.validate import validate_paths
from automation.channels.base import Channel
from automation.config import Settings
from automation.errors import PlaybookError
from automation.messages.store import TemplateStore
from automation.outbox.dispatch import DispatchConfig, Dispatcher, DispatchStats
from automation.rules.compiled import CompiledPlaybook, compile_playbook
from automation.worker.tick import TickResult, run_tick

log = logging.getLogger("automation.daemon")

#: How many times a SQLite tick is tried when a concurrent writer made its snapshot stale, and the
#: pause before each new try (doubling from the first, at most the last): a burst of imports from other
#: processes commits every few milliseconds, and a tick that waits a little finds a quiet moment.
SQLITE_ATTEMPTS = 10
SQLITE_PAUSE = (0.05, 1.0)


@dataclass
class Loaded:
    """The playbooks and templates in force; replaced whole on a successful reload."""

    playbooks: list[CompiledPlaybook]
    templates: TemplateStore


@dataclass
class Daemon:
    engine: Engine
    settings: Settings
    channels: dict[str, Channel]
    paths: Sequence[Path]
    config: DispatchConfig = field(default_factory=DispatchConfig)
    loaded: Loaded | None = None
    last_ticks: dict[str, TickResult] = field(default_factory=dict)

    def load(self) -> Loaded:
        """Validate playbooks and templates; on error keep what was loaded before and raise."""
        templates = TemplateStore(self.settings.templates_dir)
        playbooks = validate_paths(list(self.paths), templates)
        self.loaded = Loaded(playbooks, templates)
        return self.loaded

    def reload(self) -> bool:
        """Re-validate everything (SIGHUP); on a broken playbook the previous set keeps running."""
        try:
            loaded = self.load()
        except PlaybookError as exc:
            log.error("reload refused, the previous playbooks keep running:\n%s", exc)
            return False
        except Exception:  # a defect, not bad input: keep running what works, with the trace to report
            log.exception("reload failed, the previous playbooks keep running")
            return False
        log.info(
            "reloaded %d playbook(s): %s", len(loaded.playbooks), ", ".join(p.name for p in loaded.playbooks)
        )
        return True

    def tick(self, name: str, now: datetime) -> TickResult | None:
        """One tick of one playbook at ``now``; None when another worker holds its lock."""
        assert self.loaded is not None
        playbook = next(p for p in self.loaded.playbooks if p.name == name)
        compiled = compile_playbook(playbook.loaded, now)
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                key = zlib.crc32(f"automation.worker.tick:{name}".encode())
                if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                    log.info("%s: another worker is ticking it; skipped", name)
                    return None
                try:
                    result = run_tick(
                        self.engine,
                        compiled,
                        self.settings.global_cap,
                        full_every=self.settings.full_tick_every,
                        global_control=self.settings.global_control,
                    )
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
        else:
            result = self._sqlite_tick(compiled)
        self.last_ticks[name] = result
        s = result.stats
        log.info(
            "%s: tick in %.2fs (evaluated %s): %d changed, %d enrolled, %d left, %d actions (%d deferred)",
            name,
            result.seconds,
            result.evaluated,
            s["transitions"],
            s["enrolled"],
            s["exited"],
            s["actions"],
            s["deferred"],
        )
        return result

    def _sqlite_tick(self, compiled: CompiledPlaybook) -> TickResult:
        """A tick on SQLite, run again (up to ``SQLITE_ATTEMPTS`` times) when another process wrote between
        its first read and its first write: SQLite then refuses the write at once ("database is locked")
        and the tick's one transaction is rolled back whole, so running it again is safe.

        The first attempt reads without the write lock, so other writers (``automation serve``, an
        import) go on meanwhile; an attempt after a refusal takes the lock when it begins (``BEGIN
        IMMEDIATE``): other writers then wait for it (their busy timeout), and a steady stream of their
        commits cannot refuse tick after tick."""
        for attempt in range(1, SQLITE_ATTEMPTS + 1):
            try:
                return run_tick(
                    self.engine,
                    compiled,
                    self.settings.global_cap,
                    full_every=self.settings.full_tick_every,
                    global_control=self.settings.global_control,
                    immediate=attempt > 1,
                )
            except OperationalError as exc:
                if attempt == SQLITE_ATTEMPTS or "database is locked" not in str(exc.orig):
                    raise
                log.info("%s: another process wrote meanwhile; the tick runs again", compiled.name)
                first, most = SQLITE_PAUSE
                time.sleep(min(first * 2 ** (attempt - 1), most))
        raise AssertionError("unreachable")

    def tick_all(self, now: datetime) -> list[TickResult]:
        assert self.loaded is not None
        return [r for p in self.loaded.playbooks if (r := self.tick(p.name, now)) is not None]

    def dispatcher(self, clock: Callable[[], datetime]) -> Dispatcher:
        assert self.loaded is not None
        return Dispatcher(
            self.engine,
            self.channels,
            self.loaded.templates,
            self.config,
            clock=clock,
            environ=self.settings.environ,
            tracking={p.name: p.loaded.playbook.tracking for p in self.loaded.playbooks},
        )

    async def drain(self, clock: Callable[[], datetime], stop: asyncio.Event | None = None) -> DispatchStats:
        """Send what is due; stops claiming new batches once ``stop`` is set."""
        return await self.dispatcher(clock).drain(stop)
