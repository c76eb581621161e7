"""Prometheus metrics and a health check over HTTP, for ``automation run --metrics-port``.

``GET /metrics`` answers in the Prometheus text exposition format (0.0.4), written here by hand
(``Family`` and ``render``, also used by ``automation serve``'s metrics in ``automation.web.metrics``).
Database-backed gauges are computed on each scrape with a few aggregate queries
(``automation.worker.status``), in a worker thread so the event loop keeps dispatching; dispatch
counters come from this process (the worker's running ``DispatchStats``, updated after each drain
pass). When the database does not answer, the scrape still succeeds with ``automation_database_up 0``
and the process counters.

``GET /healthz`` is 200 ``{"status": "ok"}`` when the database answers ``SELECT 1``, else 503.

Metric names (all prefixed ``automation_``)::

    database_up                                  gauge    1 if the database answered this scrape
    ticks_total{playbook}                        counter  ticks recorded in run_log
    last_tick_timestamp_seconds{playbook}        gauge    evaluation time of the last tick (unix)
    last_tick_duration_seconds{playbook}         gauge    how long the last tick took
    customers{playbook,stage}                    gauge    customers per stage now ("(none)": no stage)
    open_enrollments{playbook}                   gauge    program runs still active
    outbox_messages{channel,status}              gauge    outbox rows by channel and status
    outbox_queue_depth                           gauge    pending or retry messages due now
    outbox_oldest_due_age_seconds                gauge    how long the oldest due message has waited
    conversions{playbook,goal,cohort}            gauge    conversions recorded (treatment, holdout, control)
    dispatch_claimed_total                       counter  messages claimed by this process
    dispatch_messages_total{channel,status}      counter  outcomes in this process (sent, retry, dead, ...)
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy import Engine, text

from automation.errors import ConfigError
from automation.logs import quiet_bad_requests
from automation.outbox.dispatch import DispatchStats
from automation.worker.status import conversion_counts, playbook_status, queue_status

log = logging.getLogger("automation.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "automation_"

StatsSource = Callable[[], DispatchStats | None]


@dataclass
class Family:
    """One metric: its name, type (gauge, counter or histogram), help text and samples (name suffix,
    labels, value); a plain sample's suffix is empty, a histogram's are ``_bucket``, ``_sum`` and
    ``_count``."""

    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append(("", labels, value))
        return self

    def add_histogram(
        self, bounds: Sequence[float], counts: Sequence[int], total: float, **labels: str
    ) -> Family:
        """One histogram: ``counts[i]`` observations fell in bucket ``i`` (at most ``bounds[i]``, above
        the previous bound), and ``counts[-1]`` above the last bound; ``total`` is their sum. The
        buckets are written cumulative, ending with ``le="+Inf"``."""
        running = 0
        for bound, n in zip((*bounds, math.inf), counts, strict=True):
            running += n
            self.samples.append(("_bucket", {**labels, "le": _bound(bound)}, running))
        self.samples.append(("_sum", labels, total))
        self.samples.append(("_count", labels, running))
        return self


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _bound(value: float) -> str:
    """A bucket's ``le`` label as Prometheus' own clients write it: ``0.005``, ``1.0``, ``+Inf``."""
    return "+Inf" if math.isinf(value) else repr(float(value))


def render(families: Iterable[Family]) -> str:
    """The text exposition format: HELP and TYPE lines, then one line per sample."""
    lines: list[str] = []
    for fam in families:
        name = PREFIX + fam.name
        lines.append(f"# HELP {name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {name} {fam.kind}")
        for suffix, labels, value in fam.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                lines.append(f"{name}{suffix}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{name}{suffix} {_number(value)}")
    return "\n".join(lines) + "\n"


def collect_database(engine: Engine, now: datetime) -> list[Family]:
    """The database-backed metrics at ``now`` (blocking: call it from a thread in async code)."""
    ticks = Family("ticks_total", "counter", "Ticks recorded in run_log, per playbook.")
    last_at = Family(
        "last_tick_timestamp_seconds", "gauge", "Evaluation time of the last tick (unix seconds)."
    )
    last_took = Family("last_tick_duration_seconds", "gauge", "How long the last tick of a playbook took.")
    customers = Family("customers", "gauge", 'Customers per playbook and stage now ("(none)": no stage).')
    enrollments = Family("open_enrollments", "gauge", "Program runs (enrollments) still active.")
    outbox = Family("outbox_messages", "gauge", "Outbox messages by channel and status.")
    depth = Family("outbox_queue_depth", "gauge", "Pending or retry messages due now.")
    oldest = Family("outbox_oldest_due_age_seconds", "gauge", "Seconds the oldest due message has waited.")
    after = Family(
        "outbox_engagement_messages",
        "gauge",
        "Sent messages by channel that were delivered, bounced, complained, opened (machine_opened apart) "
        "or clicked, as reported by providers and tracking.",
    )
    goals = Family("conversions", "gauge", "Conversions recorded per playbook, goal and cohort.")
    with engine.connect() as conn:
        playbooks = playbook_status(conn)
        queue = queue_status(conn, now, dead_limit=0)
        converted = conversion_counts(conn)
    for (playbook, goal, cohort), n in sorted(converted.items()):
        goals.add(n, playbook=playbook, goal=goal, cohort=cohort)
    for pb in playbooks:
        ticks.add(pb.ticks, playbook=pb.playbook)
        if pb.last_tick is not None:
            last_at.add(pb.last_tick.started_at.timestamp(), playbook=pb.playbook)
            if pb.last_tick.seconds is not None:
                last_took.add(pb.last_tick.seconds, playbook=pb.playbook)
        for stage, n in pb.stages.items():
            customers.add(n, playbook=pb.playbook, stage=stage)
        enrollments.add(pb.open_enrollments, playbook=pb.playbook)
    for (channel, status), n in sorted(queue.counts.items()):
        outbox.add(n, channel=channel, status=status)
    for channel, facts in sorted(queue.engagement.items()):
        for fact, n in facts.items():
            after.add(n, channel=channel, fact=fact)
    depth.add(queue.due)
    oldest.add(queue.oldest_due.age_seconds if queue.oldest_due else 0.0)
    return [ticks, last_at, last_took, customers, enrollments, outbox, depth, oldest, after, goals]


def collect_dispatch(stats: DispatchStats | None) -> list[Family]:
    """Counters of this process's dispatching (zero when it has not dispatched)."""
    claimed = Family("dispatch_claimed_total", "counter", "Messages claimed from the outbox by this process.")
    outcomes = Family(
        "dispatch_messages_total", "counter", "Dispatch outcomes in this process by channel and status."
    )
    claimed.add(stats.claimed if stats else 0)
    if stats:
        for (channel, status), n in sorted(stats.outcomes.items()):
            outcomes.add(n, channel=channel, status=status)
    return [claimed, outcomes]


def _source(stats: StatsSource | DispatchStats | None) -> StatsSource:
    if stats is None:
        return lambda: None
    if isinstance(stats, DispatchStats):
        fixed = stats
        return lambda: fixed
    return stats


def ping(engine: Engine) -> None:
    """Raise unless the database answers."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def make_metrics_app(
    engine: Engine,
    stats: StatsSource | DispatchStats | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    timeout: float = 10.0,
) -> web.Application:
    """An aiohttp app with ``/metrics`` and ``/healthz``.

    ``stats``: this process's dispatch counts, a ``DispatchStats`` or a callable returning one (read at
    each scrape, e.g. ``lambda: worker.totals``). ``timeout``: seconds a database query may take
    before the scrape or health check gives up on it.
    """
    source = _source(stats)

    async def metrics(request: web.Request) -> web.Response:
        up = Family("database_up", "gauge", "1 if the database answered this scrape, else 0.")
        families: list[Family] = [up]
        try:
            db = await asyncio.wait_for(asyncio.to_thread(collect_database, engine, clock()), timeout)
        except Exception as exc:
            log.warning("metrics: the database did not answer: %s", type(exc).__name__)
            up.add(0)
        else:
            up.add(1)
            families.extend(db)
        families.extend(collect_dispatch(source()))
        return web.Response(body=render(families).encode(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(asyncio.to_thread(ping, engine), timeout)
        except Exception as exc:
            log.warning("healthz: the database did not answer: %s", type(exc).__name__)
            return web.json_response({"status": "unavailable", "error": type(exc).__name__}, status=503)
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def start_metrics_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` in the running event loop; ``await runner.cleanup()`` stops it.
    A request the HTTP parser refuses is logged as one warning (``logs.BadRequestFilter``)."""
    quiet_bad_requests()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def serve_metrics(
    engine: Engine, host: str, port: int, stats: StatsSource | DispatchStats | None = None
) -> web.AppRunner:
    """``make_metrics_app`` served on ``host:port``; a port that cannot be opened is a ``ConfigError``."""
    try:
        runner = await start_metrics_server(make_metrics_app(engine, stats), host, port)
    except OSError as exc:
        raise ConfigError(f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return runner
