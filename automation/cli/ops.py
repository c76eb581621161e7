"""Commands that change state: tick, dispatch, suppressions, tasks, and the unsubscribe server."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from automation.authoring.validate import validate_paths
from automation.cli import App, handle_errors, main, parse_at, pass_app
from automation.messages.store import TemplateStore
from automation.outbox import suppressions
from automation.rules.compiled import compile_playbook
from automation.worker.tick import run_tick


@main.command("tick")
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
    templates = TemplateStore(app.settings.templates_dir)
    compiled = validate_paths(list(playbooks) or [app.settings.playbooks_dir], templates)
    engine = app.migrated_engine()
    for item in compiled:
        result = run_tick(
            engine,
            compile_playbook(item.loaded, now),
            app.settings.global_cap,
            full=full,
            full_every=app.settings.full_tick_every,
        )
        s = result.stats
        click.echo(
            f"{result.playbook}: evaluated {result.evaluated}: "
            f"{s['transitions']:,} changed segment or stage, {s['enrolled']:,} enrolled, "
            f"{s['exited']:,} left a program, {s['actions']:,} actions queued "
            f"({s['deferred']:,} deferred) in {result.seconds:.2f}s"
        )


# -- suppressions ---------------------------------------------------------------------------------
@main.group("suppress")
def suppress_group() -> None:
    """Consent: channels a customer must not receive."""


@suppress_group.command("add")
@click.argument("customer_id")
@click.option("--channel", type=click.Choice(suppressions.CHANNELS), default="email")
@click.option("--reason", type=click.Choice(suppressions.REASONS), default="manual")
@click.option("--note", default=None, help="Free text kept with the suppression.")
@pass_app
@handle_errors
def suppress_add(app: App, customer_id: str, channel: str, reason: str, note: str | None) -> None:
    """Stop CHANNEL messages to CUSTOMER_ID (checked when planning and again when sending)."""
    with app.migrated_engine().begin() as conn:
        new = suppressions.add(conn, customer_id, channel, reason, parse_at(None), note)
    click.echo(
        f"{customer_id}: {channel} suppressed ({reason})"
        if new
        else f"{customer_id}: {channel} was already suppressed"
    )


@suppress_group.command("remove")
@click.argument("customer_id")
@click.option("--channel", type=click.Choice(suppressions.CHANNELS), default="email")
@pass_app
@handle_errors
def suppress_remove(app: App, customer_id: str, channel: str) -> None:
    """Allow CHANNEL messages to CUSTOMER_ID again."""
    with app.migrated_engine().begin() as conn:
        removed = suppressions.remove(conn, customer_id, channel)
    click.echo(
        f"{customer_id}: {channel} allowed again"
        if removed
        else f"{customer_id}: {channel} was not suppressed"
    )


@suppress_group.command("list")
@click.option("--customer", "customer_id", default=None)
@click.option("--channel", type=click.Choice(suppressions.CHANNELS), default=None)
@pass_app
@handle_errors
def suppress_list(app: App, customer_id: str | None, channel: str | None) -> None:
    """List suppressions, newest first."""
    with app.migrated_engine().connect() as conn:
        rows = suppressions.list_all(conn, customer_id, channel)
    table = Table("customer", "channel", "reason", "since", "note")
    for row in rows:
        table.add_row(
            row.customer_id, row.channel, row.reason, f"{row.created_at:%Y-%m-%d %H:%M}", row.note or ""
        )
    Console(highlight=False).print(table)
    click.echo(f"{len(rows)} suppression(s)")


# -- the unsubscribe endpoint ---------------------------------------------------------------------
@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@pass_app
@handle_errors
def serve_cmd(app: App, host: str, port: int) -> None:
    """Serve one-click unsubscribe links (AUTOMATION_PUBLIC_URL should point here) and /healthz.

    Requests are not logged one by one (their paths hold unsubscribe tokens); a request the HTTP
    parser refuses (an over-long URL or header) is answered 400 and logged as one warning.
    """
    import logging

    from aiohttp import web

    from automation import logs
    from automation.web.app import make_app

    logs.setup("text", logging.INFO)
    logs.quiet_bad_requests()
    web.run_app(
        make_app(app.migrated_engine(), app.settings.secret_key),
        host=host,
        port=port,
        access_log=None,
        print=lambda text: click.echo(f"serving unsubscribe links on http://{host}:{port}"),
    )


# -- dispatching ----------------------------------------------------------------------------------
@main.command("dispatch")
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
    )

    async def run() -> DispatchStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        dispatcher = Dispatcher(
            engine,
            built.channels,
            TemplateStore(app.settings.templates_dir),
            config,
            clock=(lambda: fixed) if fixed else (lambda: parse_at(None)),
            environ=app.settings.environ,
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
    for (channel, status, error), n in total.reasons.most_common(10):
        click.echo(f"  {n:,} {channel} {status}: {error}", err=True)
    if len(total.reasons) > 10:
        click.echo(f"  ... and {len(total.reasons) - 10} other reasons (see `automation status`)", err=True)
    if total.count("dead"):
        raise SystemExit(1)


def _by_status(stats: object) -> dict[str, int]:
    from automation.outbox.dispatch import DispatchStats

    assert isinstance(stats, DispatchStats)
    out: dict[str, int] = {}
    for (_, status), n in stats.outcomes.items():
        out[status] = out.get(status, 0) + n
    return out


# -- tasks for people -----------------------------------------------------------------------------
@main.group("tasks")
def tasks_group() -> None:
    """Tasks for people (high-touch steps), for teams without a CRM."""


@tasks_group.command("list")
@click.option("--status", type=click.Choice(["open", "done"]), default="open", show_default=True)
@click.option("--assignee", default=None, help="Only tasks for this address.")
@pass_app
@handle_errors
def tasks_list(app: App, status: str, assignee: str | None) -> None:
    """List tasks, with their customer, assignee and due date."""
    from automation.channels.task import list_tasks

    rows = list_tasks(app.migrated_engine(), status=status, assignee=assignee)
    table = Table("id", "due", "assignee", "customer", "title", "playbook")
    for row in rows:
        due = f"{row.due_at:%Y-%m-%d %H:%M}" if row.due_at else "-"
        table.add_row(str(row.id), due, row.assignee or "-", row.customer_id, row.title, row.playbook)
    Console(highlight=False).print(table)
    click.echo(f"{len(rows)} {status} task(s)")


@tasks_group.command("done")
@click.argument("task_id", type=int)
@pass_app
@handle_errors
def tasks_done(app: App, task_id: int) -> None:
    """Mark task TASK_ID done."""
    from automation.channels.task import complete_task
    from automation.errors import InputError

    if not complete_task(app.migrated_engine(), task_id, parse_at(None)):
        raise InputError(f"no open task with id {task_id}; see `automation tasks list`")
    click.echo(f"task {task_id} done")


# -- the daemon -----------------------------------------------------------------------------------
@main.command("run")
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

        async def run_once() -> object:
            try:
                await asyncio.to_thread(daemon.tick_all, now)
                return await daemon.drain(lambda: now)
            finally:
                await built.aclose()

        stats = asyncio.run(run_once())
        _report_once(app, daemon, now, stats)
        return

    async def forever() -> object:
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


def _report_once(app: App, daemon: object, now: object, stats: object) -> None:
    """What ``run --once`` did: per playbook the tick, then what was sent, held back and why."""
    from sqlalchemy import func, select

    from automation.db.tables import metadata
    from automation.outbox.dispatch import DispatchStats
    from automation.worker.daemon import Daemon

    assert isinstance(daemon, Daemon) and isinstance(stats, DispatchStats)
    for name, result in daemon.last_ticks.items():
        s = result.stats
        click.echo(
            f"{name}: {s['transitions']:,} changed segment or stage, {s['enrolled']:,} enrolled, "
            f"{s['exited']:,} left a program, {s['actions']:,} actions queued"
        )
    by_status = _by_status(stats)
    summary = ", ".join(f"{n:,} {status}" for status, n in sorted(by_status.items())) or "nothing due"
    click.echo(f"dispatched {stats.claimed:,} messages: {summary}")
    outbox = metadata.tables["outbox"]
    reason = func.coalesce(outbox.c.last_error, "")
    query = (
        select(outbox.c.channel, outbox.c.status, reason, func.count())
        .where(outbox.c.status.in_(["pending", "suppressed", "skipped", "dead", "retry"]))
        .group_by(outbox.c.channel, outbox.c.status, reason)
        .order_by(func.count().desc())
    )
    with daemon.engine.connect() as conn:
        rows = conn.execute(query).all()
    held = [r for r in rows if r[1] != "pending" or r[2]]
    if held:
        click.echo("held back or failed:")
        for channel, status, why, n in held[:15]:
            label = "deferred" if status == "pending" else status
            click.echo(f"  {n:>6,} {channel:<8} {label:<10} {_reason_group(why)}")
    if by_status.get("dead"):
        raise SystemExit(1)


def _reason_group(reason: str) -> str:
    """Group per-customer reasons: "quiet hours until 08:00 Asia/Tokyo" stays, ids are not shown."""
    return reason or "-"


# -- status and dead letters ----------------------------------------------------------------------
def _took(seconds: float | None) -> str:
    """A duration for people: 0.42s, 45s, 12m 5s, 3h 12m, 2d 4h."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


@main.command("status")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--dead",
    "dead_limit",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Recent dead letters to list (0: none).",
)
@click.option("--at", "at_text", metavar="TIMESTAMP", help="Treat this ISO 8601 time as now (what is due).")
@pass_app
@handle_errors
def status_cmd(app: App, fmt: str, dead_limit: int, at_text: str | None) -> None:
    """Per playbook the last tick, customers per stage and open enrollments; the outbox by channel and
    status, what is due and the oldest due message; the newest dead letters (addresses masked).
    """
    import json

    from automation.worker.status import playbook_status, queue_status

    now = parse_at(at_text)
    with app.migrated_engine().connect() as conn:
        playbooks = playbook_status(conn)
        queue = queue_status(conn, now, dead_limit)
    if fmt == "json":
        outbox = queue.as_json()
        at, dead = outbox.pop("at"), outbox.pop("dead")
        data = {"at": at, "playbooks": [p.as_json() for p in playbooks], "outbox": outbox, "dead": dead}
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    _print_status(playbooks, queue)


def _print_status(playbooks: object, queue: object) -> None:
    from rich.text import Text

    from automation.worker.status import NO_STAGE, PlaybookStatus, QueueStatus, ordered_statuses

    assert isinstance(playbooks, list) and isinstance(queue, QueueStatus)
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 160
    if not playbooks:
        click.echo("no playbook has ticked yet (`automation tick` or `automation run`)")
    else:
        ticks = Table(title="Playbooks", title_justify="left")
        for name in ("playbook", "ticks", "last tick (UTC)", "took", "changed", "enrolled", "left"):
            ticks.add_column(name, justify="left" if name in ("playbook", "last tick (UTC)") else "right")
        for name in ("actions", "deferred", "customers", "open enrollments"):
            ticks.add_column(name, justify="right")
        stages = Table(title="Customers per stage", title_justify="left")
        stages.add_column("playbook")
        stages.add_column("stage")
        stages.add_column("customers", justify="right")
        for pb in playbooks:
            assert isinstance(pb, PlaybookStatus)
            last = pb.last_tick
            changes = (
                [f"{last.changes[k]:,}" for k in ("transitions", "enrolled", "exited", "actions", "deferred")]
                if last
                else ["-"] * 5
            )
            ticks.add_row(
                Text(pb.playbook),
                f"{pb.ticks:,}",
                f"{last.started_at:%Y-%m-%d %H:%M:%S}" if last else "never",
                _took(last.seconds) if last else "-",
                *changes,
                f"{pb.customers:,}",
                f"{pb.open_enrollments:,}",
            )
            for stage, n in sorted(pb.stages.items(), key=lambda item: (item[0] == NO_STAGE, item[0])):
                stages.add_row(Text(pb.playbook), Text(stage), f"{n:,}")
        console.print(ticks)
        if stages.row_count:
            console.print(stages)

    by_channel = queue.by_channel()
    if not by_channel:
        click.echo("the outbox is empty")
    else:
        columns = ordered_statuses(queue.by_status())
        outbox = Table(title="Outbox", title_justify="left")
        outbox.add_column("channel")
        for status in columns:
            outbox.add_column(status, justify="right")
        outbox.add_column("total", justify="right", style="bold")
        for channel, row in by_channel.items():
            outbox.add_row(Text(channel), *(f"{row.get(s, 0):,}" for s in columns), f"{sum(row.values()):,}")
        totals = queue.by_status()
        outbox.add_row("total", *(f"{totals[s]:,}" for s in columns), f"{queue.total:,}", style="bold")
        console.print(outbox)
    oldest = queue.oldest_due
    if oldest is None:
        click.echo(f"due now: nothing (as of {queue.at:%Y-%m-%d %H:%M:%S} UTC)")
    else:
        click.echo(
            f"due now: {queue.due:,} message(s); the oldest "
            f"(#{oldest.id}, {oldest.channel}, {oldest.status}) has waited {_took(oldest.age_seconds)}"
        )
    dead_total = queue.by_status().get("dead", 0)
    if queue.dead:
        dead = Table(title="Dead letters, newest first", title_justify="left")
        for name in ("id", "last due (UTC)", "playbook", "channel", "customer", "template", "attempts"):
            dead.add_column(name, justify="right" if name in ("id", "attempts") else "left")
        dead.add_column("error", overflow="fold")
        for d in queue.dead:
            dead.add_row(
                str(d.id),
                f"{d.when:%Y-%m-%d %H:%M}",
                Text(d.playbook),
                Text(d.channel),
                Text(d.customer_id),
                Text(d.template),
                str(d.attempts),
                Text(d.last_error or "-"),
            )
        console.print(dead)
    if dead_total:
        click.echo(f"{dead_total:,} dead letter(s) in all; `automation retry-dead` requeues them")


@main.command("retry-dead")
@click.option(
    "--since",
    "since_text",
    metavar="TIME|DURATION",
    help="Only messages last due since then: an ISO 8601 time or a duration back from now (24h, 30m, 7d).",
)
@click.option("--channel", type=click.Choice(suppressions.CHANNELS), default=None, help="Only this channel.")
@click.option("--playbook", default=None, help="Only this playbook's messages.")
@click.option("--at", "at_text", metavar="TIMESTAMP", help="Treat this ISO 8601 time as now.")
@pass_app
@handle_errors
def retry_dead_cmd(
    app: App, since_text: str | None, channel: str | None, playbook: str | None, at_text: str | None
) -> None:
    """Put dead letters back in the queue: pending, due now, attempts reset, a fresh time-to-live.

    Their last error is kept as "requeued: <error>" until they are sent. Fix the cause first (a
    missing variable, a provider outage): messages that fail permanently again go back to dead.
    """
    from automation.worker.status import parse_since, retry_dead

    now = parse_at(at_text)
    since = parse_since(since_text, now) if since_text is not None else None
    with app.migrated_engine().begin() as conn:
        count = retry_dead(conn, now, since=since, channel=channel, playbook=playbook)
    scope = [
        f"{name} {value}"
        for name, value in (
            ("last due since", f"{since:%Y-%m-%d %H:%M:%S} UTC" if since else None),
            ("channel", channel),
            ("playbook", playbook),
        )
        if value
    ]
    click.echo(f"requeued {count:,} dead letter(s)" + (f" ({', '.join(scope)})" if scope else ""))


# -- authoring: schema, lint, init ----------------------------------------------------------------
@main.command("schema")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file."
)
@handle_errors
def schema_cmd(output: Path | None) -> None:
    """Print the JSON Schema of the playbook format (for editor completion and checks)."""
    from automation.playbook.schema import schema_json

    text = schema_json()
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


# -- explain one customer -------------------------------------------------------------------------
@main.command("explain")
@click.argument("customer_id")
@click.option(
    "--playbook",
    "playbook_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Explain this playbook only (default: all in playbooks/).",
)
@click.option(
    "--at", "at_text", metavar="TIMESTAMP", help="Evaluate as of this ISO 8601 time (default: now)."
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_app
@handle_errors
def explain_cmd(
    app: App, customer_id: str, playbook_path: Path | None, at_text: str | None, fmt: str
) -> None:
    """Why CUSTOMER_ID is in its segment and stage, and what would be sent to it now, and why not.

    Every segment and stage rule with its value and the value of each sub-expression, the program and
    step, the actions the next tick would plan (with the daemon's reasons) and the customer's outbox.
    Writes nothing. Exit 2 for an unknown customer.
    """
    import json

    from automation.authoring.explain import explain, render_text
    from automation.authoring.validate import check_playbook

    now = parse_at(at_text)
    templates = TemplateStore(app.settings.templates_dir)
    if playbook_path is not None:
        compiled = [check_playbook(playbook_path, templates, now)]
    else:
        compiled = [
            compile_playbook(item.loaded, now)
            for item in validate_paths([app.settings.playbooks_dir], templates)
        ]
    with app.migrated_engine().connect() as conn:
        result = explain(conn, compiled, customer_id, app.settings.global_cap)
        conn.rollback()
    if fmt == "json":
        click.echo(json.dumps(result.as_json(), indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(render_text(result))


@main.command("lint")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--strict", is_flag=True, help="Treat warnings as errors (exit 2 on any finding).")
@pass_app
@handle_errors
def lint_cmd(app: App, paths: tuple[Path, ...], strict: bool) -> None:
    """Find likely mistakes in playbooks (default: playbooks/) and their templates.

    Prints `file:line:col: warning|error: message` and a fix for each finding; also reports what
    `automation validate` rejects. Exit 0 with only warnings, 2 with any error.
    """
    import sys

    from automation.authoring.lint import lint_paths

    result = lint_paths(
        list(paths) or [app.settings.playbooks_dir],
        TemplateStore(app.settings.templates_dir),
        app.settings.environ,
        global_cap=app.settings.global_cap is not None,
    )
    for finding in result.findings:
        click.echo(finding.render())
    click.echo(
        f"{len(result.files)} playbook(s): {result.errors} error(s), {result.warnings} warning(s)", err=True
    )
    if result.errors or (strict and result.warnings):
        sys.exit(2)


@main.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="lifecycle", help="Name of the playbook (playbooks/NAME.yaml).")
@click.option("--customers", type=click.IntRange(min=1), default=200, help="Sample customers to generate.")
@click.option("--seed", type=int, default=42, help="Random seed of the sample data.")
@handle_errors
def init_cmd(directory: Path, name: str, customers: int, seed: int) -> None:
    """Create a new project in DIRECTORY (new or empty): a playbook, its templates and sample data."""
    from automation.authoring.scaffold import init_project

    made = init_project(directory, name, customers, seed, with_tests="test" in main.commands)
    for path in made.files:
        click.echo(f"created {path}")
    click.echo(
        f"created {made.sample.customers_path} ({made.sample.customers:,} customers) and "
        f"{made.sample.events_path} ({made.sample.events:,} events)"
    )
    click.echo(f"next: cd {directory} && automation validate && automation lint (see {directory}/README.md)")


# -- playbook tests -------------------------------------------------------------------------------
@main.command("test")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@pass_app
@handle_errors
def test_cmd(app: App, paths: tuple[Path, ...]) -> None:
    """Run playbook tests (default: every *.test.yaml in playbooks/) on a simulated clock.

    Each test runs its playbook in a throwaway SQLite database through the worker's own tick and
    dispatch, with channels that only record. Exit 0 when every checkpoint holds, 1 when one does not
    (expected vs actual, with file:line), 2 for a malformed test file.
    """
    from automation.authoring.journeys import run_tests

    results = run_tests(list(paths) or [app.settings.playbooks_dir], app.settings.templates_dir)
    failed = 0
    for result in results:
        if result.ok:
            click.echo(f"{result.path}: ok ({result.checkpoints} checkpoints)")
            continue
        failed += 1
        click.echo(f"{result.path}: FAILED ({len(result.failures)} of {result.checkpoints} checkpoints)")
        for failure in result.failures:
            click.echo(failure)
    click.echo(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        raise SystemExit(1)
