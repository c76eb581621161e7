"""Commands for operating a running installation: ``status``, ``retry-dead``, ``suppress`` and ``tasks``.

The queries live in ``automation.worker.status``, ``automation.outbox`` and ``automation.channels.task``;
this module parses the options, calls them in a transaction of its own and prints the tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from automation.cli._app import App, handle_errors, parse_at, pass_app
from automation.errors import InputError
from automation.outbox import suppressions

if TYPE_CHECKING:
    from automation.worker.status import GoalStatus, PlaybookStatus, QueueStatus


# -- status and dead letters ----------------------------------------------------------------------
@click.command("status")
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
    """Per playbook the last tick, customers per stage and open enrollments; the 7-day conversion rate
    of each goal for treatment and holdout, and the lift; the outbox by channel and status, what is due
    and the oldest due message; the newest dead letters (addresses masked).
    """
    import json

    from automation.worker.status import goal_status, playbook_status, queue_status

    now = parse_at(at_text)
    with app.migrated_engine().connect() as conn:
        playbooks = playbook_status(conn)
        goals = goal_status(conn, now)
        queue = queue_status(conn, now, dead_limit)
    if fmt == "json":
        outbox = queue.as_json()
        at, dead = outbox.pop("at"), outbox.pop("dead")
        data = {
            "at": at,
            "playbooks": [p.as_json() for p in playbooks],
            "goals": [g.as_json() for g in goals],
            "outbox": outbox,
            "dead": dead,
        }
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    _print_status(playbooks, queue, goals)


def _goals_table(goals: list[GoalStatus]) -> Table:
    """Per playbook and goal: conversions / entries of the last 7 days for treatment and holdout, lift."""
    from rich.text import Text

    table = Table(title="Goals (programs entered in the last 7 days)", title_justify="left")
    for name in ("playbook", "goal", "treatment", "holdout", "lift"):
        table.add_column(name, justify="left" if name in ("playbook", "goal") else "right")
    for goal in goals:
        cells = []
        for cohort in ("treatment", "holdout"):
            figures = goal.cohorts.get(cohort)
            cells.append(
                f"{figures.rate:.1%} ({figures.conversions:,}/{figures.entries:,})" if figures else "-"
            )
        lift = goal.lift
        table.add_row(Text(goal.playbook), Text(goal.goal), *cells, "-" if lift is None else f"{lift:+.1%}")
    return table


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


def _print_status(playbooks: list[PlaybookStatus], queue: QueueStatus, goals: list[GoalStatus]) -> None:
    """The tables of ``status``: playbooks, customers per stage, the outbox, what is due, dead letters.

    Names and error texts go in as ``Text``, so brackets in them are printed, not read as markup.
    """
    from rich.text import Text

    from automation.worker.status import ENGAGEMENT, NO_STAGE, ordered_statuses

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
    if goals:
        console.print(_goals_table(goals))

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
    sent = {channel: facts for channel, facts in queue.engagement.items() if any(facts.values())}
    if sent:
        after = Table(title="After sending (messages)", title_justify="left")
        after.add_column("channel")
        for fact in ENGAGEMENT:
            after.add_column(fact.replace("_", " "), justify="right")
        for channel, facts in sent.items():
            after.add_row(Text(channel), *(f"{facts[fact]:,}" for fact in ENGAGEMENT))
        console.print(after)
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


@click.command("retry-dead")
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
    from automation.outbox.retry import parse_since, retry_dead

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


# -- suppressions ---------------------------------------------------------------------------------
@click.group("suppress")
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


# -- tasks for people -----------------------------------------------------------------------------
@click.group("tasks")
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

    if not complete_task(app.migrated_engine(), task_id, parse_at(None)):
        raise InputError(f"no open task with id {task_id}; see `automation tasks list`")
    click.echo(f"task {task_id} done")
