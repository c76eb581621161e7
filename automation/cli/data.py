"""Set-up and data commands: ``db upgrade``, ``import customers``, ``import events`` and ``sample-data``.

Each parses its arguments and calls one function of ``automation.db`` or ``automation.ingest``; a large
import shows a progress bar on a terminal, and rejected rows are reported as ``file:line: reason``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
from sqlalchemy import Engine

from automation.cli._app import App, err_console, handle_errors, pass_app
from automation.db import connect as db
from automation.errors import DataError, InputError

IMPORT_PROGRESS_MIN_BYTES = 1_000_000  # smaller files import in about a second: no bar
IMPORT_MAX_SHOWN_PROBLEMS = 50


# -- the schema -----------------------------------------------------------------------------------
@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@pass_app
@handle_errors
def db_upgrade(app: App) -> None:
    """Create or migrate the schema to the newest version (safe to repeat)."""
    db.upgrade(app.engine)
    click.echo(f"database {app.engine.url.render_as_string()} is at revision {db.head_revision()}")


# -- importing customer data ----------------------------------------------------------------------
@click.group("import")
def import_group() -> None:
    """Import customers and events from CSV or JSON Lines files."""


@import_group.command("customers")
@click.argument("file", type=click.Path())
@click.option(
    "--default-region",
    metavar="CC",
    default=None,
    help="Country code (e.g. US) for phone numbers written without +; without it they are rejected.",
)
@pass_app
@handle_errors
def import_customers_cmd(app: App, file: str, default_region: str | None) -> None:
    """Upsert customers by id from FILE (.csv, .jsonl or .ndjson).

    Exit 0 when every row was imported, 2 when rows were rejected (the others are imported).
    """
    from automation.ingest.importer import import_customers

    _run_import(
        app, file, "customers", lambda e, p: import_customers(e, file, p, default_region=default_region)
    )


@import_group.command("events")
@click.argument("file", type=click.Path())
@pass_app
@handle_errors
def import_events_cmd(app: App, file: str) -> None:
    """Append events from FILE (.csv, .jsonl or .ndjson); import their customers first.

    Exit 0 when every row was imported, 2 when rows were rejected (the others are imported).
    """
    from automation.ingest.importer import import_events

    _run_import(app, file, "events", lambda e, p: import_events(e, file, p))


def _run_import(
    app: App, file: str, kind: str, run: Callable[[Engine, Callable[[int, int, int], None]], Any]
) -> None:
    """Run an import with a progress bar for large files; report rejected rows as ``file:line: reason``."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    engine = app.migrated_engine()
    try:
        size = os.path.getsize(file)
    except OSError:
        size = 0  # the importer reports the unreadable file
    bar = Progress(
        TextColumn(f"importing {kind}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]:,} rows"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=size < IMPORT_PROGRESS_MIN_BYTES or not err_console.is_terminal,
    )
    with bar:
        task = bar.add_task(kind, total=size, rows=0)

        def progress(rows: int, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, rows=rows)

        report = run(engine, progress)
    click.echo(report.summary())
    if report.rejected:
        lines = [problem.render() for problem in report.problems[:IMPORT_MAX_SHOWN_PROBLEMS]]
        if report.rejected > len(lines):
            lines.append(f"... and {report.rejected - len(lines):,} more")
        raise DataError("\n".join(lines))


# -- sample data ----------------------------------------------------------------------------------
@click.command("sample-data")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--customers", "count", type=click.IntRange(min=1), default=1000, help="Number of customers.")
@click.option("--seed", type=int, default=42, help="Random seed: the same seed writes the same files.")
@click.option(
    "--now", "now_text", metavar="ISO", default=None, help="Reference time (default: now; naive is UTC)."
)
@handle_errors
def sample_data_cmd(outdir: str, count: int, seed: int, now_text: str | None) -> None:
    """Write synthetic OUTDIR/customers.csv and OUTDIR/events.jsonl for trying a playbook."""
    from automation.ingest.sample_data import generate_sample_data

    now = None
    if now_text is not None:
        try:
            now = datetime.fromisoformat(now_text)
        except ValueError:
            raise InputError(
                f"--now {now_text!r} is not an ISO 8601 timestamp (e.g. 2025-06-15T09:00:00Z)"
            ) from None
    summary = generate_sample_data(outdir, count, seed, now)
    click.echo(
        f"wrote {summary.customers:,} customers to {summary.customers_path} "
        f"and {summary.events:,} events to {summary.events_path}"
    )
