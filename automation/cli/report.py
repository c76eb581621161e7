"""``automation report``: what a playbook did over a period (steps, goals, holdout, variants, funnel).

The queries and the statistics live in ``automation.report``; this module parses the options, runs
them in a transaction of its own and prints the tables, the JSON or writes the HTML page.
"""

from __future__ import annotations

from pathlib import Path

import click

from automation.cli._app import App, handle_errors, parse_at, pass_app
from automation.errors import InputError


@click.command("report")
@click.argument("playbook")
@click.option(
    "--since",
    "since_text",
    default="30d",
    metavar="TIME|DURATION",
    help="Start of the period: an ISO 8601 time or a duration back from --until (24h, 7d, 30d).",
)
@click.option("--until", "until_text", metavar="TIMESTAMP", help="End of the period (ISO 8601); default now.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the HTML page here.",
)
@pass_app
@handle_errors
def report_cmd(
    app: App, playbook: str, since_text: str, until_text: str | None, fmt: str, html_path: Path | None
) -> None:
    """Steps, goals (treatment against holdout and control), variants and stage transitions of PLAYBOOK
    (its name, or the path of its YAML file) for entries and messages in the period.
    """
    import json

    from automation.outbox.retry import parse_since
    from automation.report import build_report

    try:
        until = parse_at(until_text)
    except InputError:
        raise InputError(
            f"--until {until_text!r} is not an ISO 8601 time, e.g. 2026-11-22T09:00:00Z"
        ) from None
    since = parse_since(since_text, until)
    path = Path(playbook)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        from automation.playbook.models import load_playbook

        playbook = load_playbook(path).playbook.name
    with app.migrated_engine().connect() as conn:
        report = build_report(conn, playbook, since, until)
    if html_path is not None:
        from automation.report.html import write_html

        written = write_html(report, html_path)
        if fmt == "table":
            click.echo(str(written))
            return
    if fmt == "json":
        click.echo(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
        return
    from automation.report.table import print_report

    print_report(report)
