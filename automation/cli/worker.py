"""Running commands: ``run`` (the worker), ``tick``, ``dispatch`` and ``serve`` (the unsubscribe server).

Each builds what it needs from the settings and hands over to ``automation.worker``,
``automation.outbox.dispatch`` or ``automation.web``; what is printed at the end (and the exit code 1
when a message went to dead letters) is decided here, from the returned stats.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from automation.authoring.validate import validate_paths
from automation.cli._app import EXIT_FAILURE, App, handle_errors, parse_at, pass_app, templates
from automation.errors import InputError
from automation.rules.compiled import compile_playbook
from automation.worker.tick import run_tick

if TYPE_CHECKING:
    from automation.outbox.dispatch import DispatchStats
    from automation.worker.daemon import Daemon

#: Held-back groups listed by ``run --once`` and failure reasons listed by ``dispatch``.
ONCE_MAX_SHOWN_HELD, DISPATCH_MAX_SHOWN_REASONS = 15, 10


# -- one tick -------------------------------------------------------------------------------------
@click.command("tick")
@click.argument("playbooks", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--at", "at_text", metavar="TIMESTAMP", help="Evaluate as of this ISO 8601 time (default: now)."
)
@click.option(
    "--full", is_flag=True, help="Evaluate every customer, not only those changed since the last tick."
)
@pass_app
@handle_errors
def tick_cmd(app: App, playbooks: tuple[Path, ...], at_text: str | None, full: bool) -> None:
    """Run one tick of each playbook (default: all in playbooks/): record state changes and queue messages.

    Safe to repeat: a second tick at the same moment queues nothing new. A tick evaluates the
    customers whose data changed or whose time-based rules may have flipped since the last tick;
    everyone on the first tick, after a rule change, once a day, and with --full.
    """
    now = parse_at(at_text)
    compiled = validate_paths(list(playbooks) or [app.settings.playbooks_dir], templates(app))
    engine = app.migrated_engine()
    for item in compiled:
        result = run_tick(
            engine,
            compile_playbook(item.loaded, now),
            app.settings.global_cap,
            full=full,
            full_every=app.settings.full_tick_every,
            global_control=app.settings.global_control,
        )
        s = result.stats
        click.echo(
            f"{result.playbook}: evaluated {result.evaluated}: "
            f"{s['transitions']:,} changed segment or stage, {s['enrolled']:,} enrolled, "
            f"{s['exited']:,} left a program, {s['actions']:,} actions queued "
            f"({s['deferred']:,} deferred) in {result.seconds:.2f}s"
        )


# -- dispatching ----------------------------------------------------------------------------------
@click.command("dispatch")
@click.option("--once", is_flag=True, help="Send what is due now, then exit (for cron).")
@click.option("--at", "at_text", metavar="TIMESTAMP", help="Treat this ISO 8601 time as now (with --once).")
@click.option("--poll", default=1.0, show_default=True, help="Seconds between looks at the outbox when idle.")
@pass_app
@handle_errors
def dispatch_cmd(app: App, once: bool, at_text: str | None, poll: float) -> None:
    """Drain the outbox: send due messages through the configured channels.

    Exit code 1 if any message went to dead letters in this run (see `automation status`).
    """
    import asyncio
    import signal

    from automation.channels.registry import build_channels
    from automation.messages.tracking import playbook_tracking, tracking_url
    from automation.outbox.dispatch import DispatchConfig, Dispatcher, DispatchStats

    engine = app.migrated_engine()
    fixed = parse_at(at_text) if at_text else None
    built = build_channels(app.settings, engine)
    for name, how in built.describe.items():
        click.echo(f"{name}: {how}", err=True)
    config = DispatchConfig(
        rates=built.rates,
        concurrency=built.concurrency,
        public_url=app.settings.public_url,
        secret_key=app.settings.secret_key,
        tracking_url=tracking_url(app.settings),
    )

    async def run() -> DispatchStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        dispatcher = Dispatcher(
            engine,
            built.channels,
            templates(app),
            config,
            clock=(lambda: fixed) if fixed else (lambda: parse_at(None)),
            environ=app.settings.environ,
            tracking=playbook_tracking([app.settings.playbooks_dir]),
        )
        total = DispatchStats()
        try:
            while not stop.is_set():
                stats = await dispatcher.drain(stop)
                total.claimed += stats.claimed
                total.outcomes.update(stats.outcomes)
                total.reasons.update(stats.reasons)
                if once:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll)
        finally:
            await built.aclose()
        return total

    total = asyncio.run(run())
    summary = ", ".join(f"{n:,} {status}" for status, n in sorted(_by_status(total).items())) or "nothing due"
    click.echo(f"dispatched {total.claimed:,} messages: {summary}")
    for (channel, status, error), n in total.reasons.most_common(DISPATCH_MAX_SHOWN_REASONS):
        click.echo(f"  {n:,} {channel} {status}: {error}", err=True)
    if (more := len(total.reasons) - DISPATCH_MAX_SHOWN_REASONS) > 0:
        click.echo(f"  ... and {more} other reasons (see `automation status`)", err=True)
    if total.count("dead"):
        raise SystemExit(EXIT_FAILURE)


def _by_status(stats: DispatchStats) -> dict[str, int]:
    """Messages per outcome (sent, retry, dead, ...) over all channels."""
    out: dict[str, int] = {}
    for (_, status), n in stats.outcomes.items():
        out[status] = out.get(status, 0) + n
    return out


# -- the daemon -----------------------------------------------------------------------------------
@click.command("run")
@click.option(
    "--playbooks",
    "playbooks_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder (or file) of playbooks [default: playbooks/, env AUTOMATION_PLAYBOOKS_DIR].",
)
@click.option(
    "--once", is_flag=True, help="One tick of every playbook and a full drain, then exit (for cron)."
)
@click.option("--at", "at_text", metavar="TIMESTAMP", help="With --once: treat this ISO 8601 time as now.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--poll", default=1.0, show_default=True, help="Seconds between looks at the outbox when idle.")
@click.option(
    "--shutdown-timeout", default=30.0, show_default=True, help="Seconds to finish in-flight messages."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus /metrics and /healthz on this port (default: off).",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
@pass_app
@handle_errors
def run_cmd(
    app: App,
    playbooks_dir: Path | None,
    once: bool,
    at_text: str | None,
    log_format: str,
    poll: float,
    shutdown_timeout: float,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run the worker: tick every playbook on its schedule and send what is due.

    SIGHUP reloads playbooks and templates (a broken playbook is reported and the previous version keeps
    running); SIGTERM/SIGINT stop claiming, finish or release in-flight messages, and exit.
    With --once, the exit code is 0 only if nothing failed.
    """
    import asyncio
    import logging

    from automation import logs
    from automation.channels.registry import build_channels
    from automation.messages.tracking import tracking_url
    from automation.outbox.dispatch import DispatchConfig
    from automation.worker.daemon import Daemon
    from automation.worker.scheduler import Worker

    logs.setup(log_format, logging.WARNING if once else logging.INFO)
    engine = app.migrated_engine()
    built = build_channels(app.settings, engine)
    config = DispatchConfig(
        rates=built.rates,
        concurrency=built.concurrency,
        public_url=app.settings.public_url,
        secret_key=app.settings.secret_key,
        tracking_url=tracking_url(app.settings),
    )
    daemon = Daemon(
        engine, app.settings, built.channels, [playbooks_dir or app.settings.playbooks_dir], config
    )
    daemon.load()
    for name, how in built.describe.items():
        if log_format == "json":  # every stderr line is JSON for log collectors
            logging.getLogger("automation.run").info("%s: %s", name, how)
        else:
            click.echo(f"{name}: {how}", err=True)

    if once:
        now = parse_at(at_text)

        async def run_once() -> DispatchStats:
            try:
                await asyncio.to_thread(daemon.tick_all, now)
                return await daemon.drain(lambda: now)
            finally:
                await built.aclose()

        _report_once(daemon, asyncio.run(run_once()))
        return

    async def forever() -> DispatchStats:
        from automation.worker.metrics import serve_metrics

        worker = Worker(daemon, poll=poll, shutdown_timeout=shutdown_timeout)
        metrics = None
        try:
            if metrics_port is not None:
                metrics = await serve_metrics(engine, metrics_host, metrics_port, lambda: worker.totals)
            return await worker.run()
        finally:
            if metrics is not None:
                await metrics.cleanup()
            await built.aclose()

    asyncio.run(forever())
    if log_format == "json":
        logging.getLogger("automation.run").info("stopped")
    else:
        click.echo("stopped", err=True)


def _report_once(daemon: Daemon, stats: DispatchStats) -> None:
    """What ``run --once`` did: per playbook the tick, then what was sent, held back and why."""
    from automation.worker.status import held_back

    for name, result in daemon.last_ticks.items():
        s = result.stats
        click.echo(
            f"{name}: {s['transitions']:,} changed segment or stage, {s['enrolled']:,} enrolled, "
            f"{s['exited']:,} left a program, {s['actions']:,} actions queued"
        )
    by_status = _by_status(stats)
    summary = ", ".join(f"{n:,} {status}" for status, n in sorted(by_status.items())) or "nothing due"
    click.echo(f"dispatched {stats.claimed:,} messages: {summary}")
    with daemon.engine.connect() as conn:
        held = held_back(conn)
    if held:
        click.echo("held back or failed:")
        for group in held[:ONCE_MAX_SHOWN_HELD]:
            label = "deferred" if group.status == "pending" else group.status
            click.echo(f"  {group.count:>6,} {group.channel:<8} {label:<10} {group.reason or '-'}")
    if by_status.get("dead"):
        raise SystemExit(EXIT_FAILURE)


# -- the unsubscribe endpoint ---------------------------------------------------------------------
@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM/SIGINT: seconds requests in flight get to finish before they are cut off.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=64),
    default=1,
    show_default=True,
    help="Server processes sharing the port (SO_REUSEPORT); one process uses at most one CPU core.",
)
@pass_app
@handle_errors
def serve_cmd(app: App, host: str, port: int, shutdown_timeout: float, workers: int) -> None:
    """Serve one-click unsubscribe links (AUTOMATION_PUBLIC_URL should point here) and /healthz, and,
    with AUTOMATION_WRITE_KEYS set, the Segment-compatible /v1/identify, /v1/track and /v1/batch, and,
    with AUTOMATION_METRICS_TOKEN set, Prometheus /metrics (Authorization: Bearer <token>), and the
    email providers' event webhooks /providers/sendgrid/events, /providers/postmark/events and
    /providers/generic/events once their secrets are set (see the feedback guide).

    On SIGTERM or SIGINT it stops accepting connections, lets the requests in flight finish (at most
    --shutdown-timeout seconds) and exits 0. Requests are not logged one by one (their paths hold
    unsubscribe tokens); a request the HTTP parser refuses (an over-long URL or header) is answered
    400 and logged as one warning.
    """
    import logging

    from automation import logs
    from automation.web.app import make_app, serve
    from automation.web.processes import STOP, serve_workers
    from automation.web.providers import ProviderWebhooks

    logs.setup("text", logging.INFO)
    logs.quiet_bad_requests()
    settings = app.settings
    served = ["unsubscribe links"]
    if settings.write_keys:
        served.append("the /v1 ingestion API")
    if settings.metrics_token:
        served.append("/metrics")
    provider_webhooks = ProviderWebhooks.from_settings(settings)  # a key that does not load: exit 2
    served.extend(provider_webhooks.served())
    if settings.sms_auth_token:
        served.append("Twilio's SMS webhooks")
    engine = app.migrated_engine()

    def serve_one(worker: int | None = None) -> None:
        if worker is not None:
            engine.dispose(close=False)  # a forked worker opens connections of its own
        where = f"http://{host}:{port}"
        if worker is not None:
            where += f" (worker {worker + 1} of {workers})"
        web_app = make_app(
            engine,
            settings.secret_key,
            write_keys=settings.write_keys,
            metrics_token=settings.metrics_token,
            twilio_auth_token=settings.sms_auth_token,
            public_url=settings.public_url,
            provider_webhooks=provider_webhooks,
        )
        serve(
            web_app,
            host,
            port,
            shutdown_timeout,
            announce=lambda: click.echo(f"serving {_listed(served)} on {where}"),
            stop_signals=(STOP,) if worker is not None else (signal.SIGTERM, signal.SIGINT),
            reuse_port=worker is not None,
        )

    if workers == 1:
        serve_one()
        click.echo("stopped", err=True)
        return
    if port == 0:
        raise InputError("--workers: needs a fixed --port (each worker listens on the same one)")
    engine.dispose()
    code = serve_workers(workers, serve_one)
    click.echo("stopped", err=True)
    if code:
        raise SystemExit(code)


def _listed(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]
