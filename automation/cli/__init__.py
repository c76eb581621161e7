"""The command line: parse arguments, call one function, map errors to exit codes.

Exit codes: 0 ok, 1 failure (database, delivery, internal), 2 bad input (playbook, data, settings).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from sqlalchemy import Engine

from automation.authoring.preview import run_preview
from automation.authoring.preview_table import print_preview
from automation.authoring.validate import check_playbook, validate_paths
from automation.config import Settings
from automation.db import connect as db
from automation.errors import AutomationError, InputError
from automation.messages.store import TemplateStore

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, highlight=False)


class App:
    """What every command needs: settings and (lazily) the database engine."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = db.make_engine(self.settings.database_url)
        return self._engine

    def migrated_engine(self) -> Engine:
        db.require_current(self.engine)
        return self.engine


def handle_errors(func: F) -> F:
    """Turn our errors into a message on stderr and the class's exit code; never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AutomationError as exc:
            err_console.print(str(exc), markup=False, soft_wrap=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


pass_app = click.make_pass_decorator(App)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--database-url",
    envvar="AUTOMATION_DATABASE_URL",
    default="sqlite:///automation.db",
    show_envvar=True,
    help="SQLAlchemy URL of the database (SQLite file or postgresql+psycopg://...).",
)
@click.option(
    "--templates",
    "templates_dir",
    envvar="AUTOMATION_TEMPLATES_DIR",
    default="templates",
    show_envvar=True,
    type=click.Path(file_okay=False),
    help="Folder of Jinja2 templates.",
)
@click.version_option(package_name="automation")
@click.pass_context
@handle_errors
def main(ctx: click.Context, database_url: str, templates_dir: str) -> None:
    """Rules-based campaign automation: playbooks as code, evaluated in the database."""
    settings = Settings.from_env().with_overrides(database_url=database_url, templates_dir=templates_dir)
    ctx.obj = App(settings)


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@pass_app
@handle_errors
def db_upgrade(app: App) -> None:
    """Create or migrate the schema to the newest version (safe to repeat)."""
    db.upgrade(app.engine)
    click.echo(f"database {app.engine.url.render_as_string()} is at revision {db.head_revision()}")


# --- importing customer data -----------------------------------------------------------------

IMPORT_PROGRESS_MIN_BYTES = 1_000_000  # smaller files import in about a second: no bar
IMPORT_MAX_SHOWN_PROBLEMS = 50


@main.group("import")
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
    import os

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from automation.errors import DataError

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


@main.command("sample-data")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--customers", "count", type=click.IntRange(min=1), default=1000, help="Number of customers.")
@click.option("--seed", type=int, default=42, help="Random seed: the same seed writes the same files.")
@click.option(
    "--now", "now_text", metavar="ISO", default=None, help="Reference time (default: now; naive is UTC)."
)
@handle_errors
def sample_data_cmd(outdir: str, count: int, seed: int, now_text: str | None) -> None:
    """Write synthetic OUTDIR/customers.csv and OUTDIR/events.jsonl for trying a playbook."""
    from datetime import datetime

    from automation.errors import InputError
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


# -- playbooks: validate and preview ------------------------------------------------------------
def _templates(app: App) -> TemplateStore:
    return TemplateStore(app.settings.templates_dir)


@main.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@pass_app
@handle_errors
def validate_cmd(app: App, paths: tuple[Path, ...]) -> None:
    """Check playbooks (default: playbooks/), their rules, and the templates they name."""
    compiled = validate_paths(list(paths) or [app.settings.playbooks_dir], _templates(app))
    for item in compiled:
        pb = item.loaded.playbook
        steps = sum(len(steps) for program in pb.programs.values() for steps in program.values())
        click.echo(
            f"{item.loaded.path}: ok ({len(pb.segments)} segments, {len(pb.stages)} stages, "
            f"{steps} program steps, {len(pb.recurring)} recurring rules)"
        )


@main.command("preview")
@click.argument("playbook", type=click.Path(path_type=Path))
@click.option(
    "--at", "at_text", metavar="TIMESTAMP", help="Evaluate as of this ISO 8601 time (default: now)."
)
@click.option(
    "--customer", "customer_id", metavar="ID", help="One customer: rule trace and rendered messages."
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--limit", default=20, help="Actions to list (0: all); counts always cover everyone.")
@click.option(
    "--html",
    "html_path",
    metavar="PATH",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a self-contained HTML report (heat map, funnel, plan per day, rendered templates).",
)
@pass_app
@handle_errors
def preview_cmd(
    app: App,
    playbook: Path,
    at_text: str | None,
    customer_id: str | None,
    fmt: str,
    limit: int,
    html_path: Path | None,
) -> None:
    """Show what the next tick of PLAYBOOK would do, without writing anything."""
    now = parse_at(at_text)
    compiled = check_playbook(playbook, _templates(app), now)
    if html_path is not None:
        from automation.authoring.preview_html import build_report, write_report

        if customer_id is not None:
            raise InputError("--html reports on every customer: leave out --customer")
        with app.migrated_engine().connect() as conn:
            page = build_report(conn, compiled, _templates(app), app.settings, limit=max(limit, 0))
            conn.rollback()
        click.echo(write_report(html_path, page).resolve())
        return
    engine = app.migrated_engine()
    with engine.connect() as conn:
        result = run_preview(
            conn, compiled, _templates(app), app.settings, customer_id=customer_id, limit=max(limit, 0)
        )
        conn.rollback()
    if fmt == "json":
        click.echo(json.dumps(result.as_json(), indent=2, ensure_ascii=False, default=str))
    else:
        console = Console(highlight=False)
        if not console.is_terminal:
            console.width = 160
        print_preview(console, result)


def parse_at(text: str | None) -> datetime:
    """``--at``: an ISO 8601 time; naive values are UTC."""
    if not text:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--at {text!r} is not an ISO 8601 time, e.g. 2026-11-22T09:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# commands defined in other modules register themselves on ``main``
from automation.cli import ops  # noqa: E402, F401
