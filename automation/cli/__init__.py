"""The command line: the ``automation`` group, its global options, and every command added to it.

The commands live in one module per group (``data``, ``authoring``, ``worker``, ``ops``, ``report``), each
importing only ``automation.cli._app`` (the app object, the error handler) and the core packages; this
module is the only one that knows them all. Commands parse arguments, call one function and leave the
mapping of errors to exit codes to ``_app.handle_errors``.

Exit codes: 0 ok, 1 failure (database, delivery, internal), 2 bad input (playbook, data, settings).
"""

from __future__ import annotations

import click

from automation.cli import authoring, data, ops, report, worker
from automation.cli._app import App, handle_errors
from automation.config import Settings

__all__ = ["main"]


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


COMMANDS: tuple[click.Command, ...] = (
    # set-up and data
    data.db_group,
    data.import_group,
    data.sample_data_cmd,
    # authoring
    authoring.validate_cmd,
    authoring.lint_cmd,
    authoring.test_cmd,
    authoring.preview_cmd,
    authoring.explain_cmd,
    authoring.schema_cmd,
    authoring.init_cmd,
    # running
    worker.run_cmd,
    worker.tick_cmd,
    worker.dispatch_cmd,
    worker.serve_cmd,
    # operating
    ops.status_cmd,
    ops.retry_dead_cmd,
    ops.suppress_group,
    ops.tasks_group,
    report.report_cmd,
)

for _command in COMMANDS:
    main.add_command(_command)
