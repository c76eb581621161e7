"""The command line: parse arguments, call one function, map errors to exit codes.

Exit codes: 0 ok, 1 failure (database, delivery, internal), 2 bad input (playbook, data, settings).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from sqlalchemy import Engine

from automation.config import Settings
from automation.db import engine as db
from automation.errors import AutomationError

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
