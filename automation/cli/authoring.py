"""Commands for playbook authors: ``validate``, ``lint``, ``preview``, ``explain``, ``test``, ``schema`` and
``init``.

None of them writes to the database: each parses its arguments, calls one function of
``automation.authoring`` (or ``automation.playbook.schema``) and prints what it returns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

from automation.authoring.preview import run_preview
from automation.authoring.preview_table import print_preview
from automation.authoring.validate import check_playbook, validate_paths
from automation.cli._app import EXIT_BAD_INPUT, App, handle_errors, parse_at, pass_app, templates
from automation.errors import InputError
from automation.rules.compiled import compile_playbook


# -- validate and lint ----------------------------------------------------------------------------
@click.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@pass_app
@handle_errors
def validate_cmd(app: App, paths: tuple[Path, ...]) -> None:
    """Check playbooks (default: playbooks/), their rules, and the templates they name."""
    compiled = validate_paths(list(paths) or [app.settings.playbooks_dir], templates(app))
    for item in compiled:
        pb = item.loaded.playbook
        steps = sum(len(steps) for program in pb.programs.values() for steps in program.values())
        click.echo(
            f"{item.loaded.path}: ok ({len(pb.segments)} segments, {len(pb.stages)} stages, "
            f"{steps} program steps, {len(pb.recurring)} recurring rules)"
        )


@click.command("lint")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--strict", is_flag=True, help="Treat warnings as errors (exit 2 on any finding).")
@pass_app
@handle_errors
def lint_cmd(app: App, paths: tuple[Path, ...], strict: bool) -> None:
    """Find likely mistakes in playbooks (default: playbooks/) and their templates.

    Prints `file:line:col: warning|error: message` and a fix for each finding; also reports what
    `automation validate` rejects. Exit 0 with only warnings, 2 with any error.
    """
    from automation.authoring.lint import lint_paths

    result = lint_paths(
        list(paths) or [app.settings.playbooks_dir],
        templates(app),
        app.settings.environ,
        global_cap=app.settings.global_cap is not None,
    )
    for finding in result.findings:
        click.echo(finding.render())
    click.echo(
        f"{len(result.files)} playbook(s): {result.errors} error(s), {result.warnings} warning(s)", err=True
    )
    if result.errors or (strict and result.warnings):
        sys.exit(EXIT_BAD_INPUT)


# -- preview and explain --------------------------------------------------------------------------
@click.command("preview")
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
    compiled = check_playbook(playbook, templates(app), now)
    if html_path is not None:
        from automation.authoring.preview_html import build_report, write_report

        if customer_id is not None:
            raise InputError("--html reports on every customer: leave out --customer")
        with app.migrated_engine().connect() as conn:
            page = build_report(conn, compiled, templates(app), app.settings, limit=max(limit, 0))
            conn.rollback()
        click.echo(write_report(html_path, page).resolve())
        return
    engine = app.migrated_engine()
    with engine.connect() as conn:
        result = run_preview(
            conn, compiled, templates(app), app.settings, customer_id=customer_id, limit=max(limit, 0)
        )
        conn.rollback()
    if fmt == "json":
        click.echo(json.dumps(result.as_json(), indent=2, ensure_ascii=False, default=str))
    else:
        console = Console(highlight=False)
        if not console.is_terminal:
            console.width = 160
        print_preview(console, result)


@click.command("explain")
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
@click.option(
    "--events",
    "events",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    metavar="N",
    help="List the customer's N latest events up to --at (0: leave the section out).",
)
@pass_app
@handle_errors
def explain_cmd(
    app: App, customer_id: str, playbook_path: Path | None, at_text: str | None, fmt: str, events: int
) -> None:
    """Why CUSTOMER_ID is in its segment and stage, and what would be sent to it now, and why not.

    Every segment and stage rule with its value and the value of each sub-expression, the program and
    step, the actions the next tick would plan (with the daemon's reasons), the customer's outbox and
    latest events. Writes nothing. Exit 2 for an unknown customer.
    """
    from automation.authoring.explain import explain, render_text

    now = parse_at(at_text)
    store = templates(app)
    if playbook_path is not None:
        compiled = [check_playbook(playbook_path, store, now)]
    else:
        compiled = [
            compile_playbook(item.loaded, now) for item in validate_paths([app.settings.playbooks_dir], store)
        ]
    with app.migrated_engine().connect() as conn:
        result = explain(
            conn,
            compiled,
            customer_id,
            app.settings.global_cap,
            events=events,
            global_control=app.settings.global_control,
        )
        conn.rollback()
    if fmt == "json":
        click.echo(json.dumps(result.as_json(), indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(render_text(result))


# -- playbook tests -------------------------------------------------------------------------------
@click.command("test")
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


# -- schema and init ------------------------------------------------------------------------------
@click.command("schema")
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


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="lifecycle", help="Name of the playbook (playbooks/NAME.yaml).")
@click.option("--customers", type=click.IntRange(min=1), default=200, help="Sample customers to generate.")
@click.option("--seed", type=int, default=42, help="Random seed of the sample data.")
@handle_errors
def init_cmd(directory: Path, name: str, customers: int, seed: int) -> None:
    """Create a new project in DIRECTORY (new or empty): a playbook, its templates and sample data."""
    from automation.authoring.scaffold import init_project

    # a playbook test (and the README lines about it) only when this CLI has the `test` command
    root = click.get_current_context().find_root().command
    with_tests = isinstance(root, click.Group) and "test" in root.commands
    made = init_project(directory, name, customers, seed, with_tests=with_tests)
    for path in made.files:
        click.echo(f"created {path}")
    click.echo(
        f"created {made.sample.customers_path} ({made.sample.customers:,} customers) and "
        f"{made.sample.events_path} ({made.sample.events:,} events)"
    )
    click.echo(f"next: cd {directory} && automation validate && automation lint (see {directory}/README.md)")
