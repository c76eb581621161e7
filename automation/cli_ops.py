"""Commands that change state: tick, dispatch, suppressions, tasks, and the unsubscribe server."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from automation import suppressions
from automation.cli import App, handle_errors, main, parse_at, pass_app
from automation.compiled import compile_playbook
from automation.rendering import TemplateStore
from automation.tick import run_tick
from automation.validation import validate_paths


@main.command("tick")
@click.argument("playbooks", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--at", "at_text", metavar="TIMESTAMP", help="Evaluate as of this ISO 8601 time (default: now)."
)
@pass_app
@handle_errors
def tick_cmd(app: App, playbooks: tuple[Path, ...], at_text: str | None) -> None:
    """Run one tick of each playbook (default: all in playbooks/): record state changes and queue messages.

    Safe to repeat: a second tick at the same moment queues nothing new.
    """
    now = parse_at(at_text)
    templates = TemplateStore(app.settings.templates_dir)
    compiled = validate_paths(list(playbooks) or [app.settings.playbooks_dir], templates)
    engine = app.migrated_engine()
    for item in compiled:
        result = run_tick(engine, compile_playbook(item.loaded, now), app.settings.global_cap)
        s = result.stats
        click.echo(
            f"{result.playbook}: {s['transitions']:,} changed segment or stage, {s['enrolled']:,} enrolled, "
            f"{s['exited']:,} left a program, {s['actions']:,} actions queued ({s['deferred']:,} deferred) "
            f"in {result.seconds:.2f}s"
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
    """Serve one-click unsubscribe links (AUTOMATION_PUBLIC_URL should point here) and /healthz."""
    from aiohttp import web

    from automation.web import make_app

    web.run_app(
        make_app(app.migrated_engine(), app.settings.secret_key),
        host=host,
        port=port,
        print=lambda text: click.echo(f"serving unsubscribe links on http://{host}:{port}"),
    )
