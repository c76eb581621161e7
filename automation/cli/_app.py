"""What every command shares: the app object (settings, engine), the one error handler, ``--at`` parsing
and the template store.

The command modules import this module and the core packages only, so they can be read, imported and
tested one at a time; ``automation.cli`` assembles them into the ``automation`` group.

Exit codes: 0 ok, 1 failure (database, delivery, internal), 2 bad input (playbook, data, settings).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from sqlalchemy import Engine

from automation.config import Settings
from automation.db import connect as db
from automation.errors import AutomationError, InputError
from automation.messages.store import TemplateStore

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

F = TypeVar("F", bound=Callable[..., Any])

#: Messages for people (errors, progress) go to stderr, so stdout stays the command's output.
err_console = Console(stderr=True, highlight=False)


class App:
    """What every command needs: settings and (lazily) the database engine.

    The engine is made on first use, so commands that never touch the database (``schema``, ``init``,
    ``--help``) work without one.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The engine for ``settings.database_url``, made once."""
        if self._engine is None:
            self._engine = db.make_engine(self.settings.database_url)
        return self._engine

    def migrated_engine(self) -> Engine:
        """The engine, after checking that the schema is at the newest revision (else a clear error)."""
        db.require_current(self.engine)
        return self.engine


def handle_errors(func: F) -> F:
    """Turn our errors into a message on stderr and the class's exit code; never a traceback.

    The one place where ``automation.errors`` classes become exit codes: every command wears it.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AutomationError as exc:
            err_console.print(str(exc), markup=False, soft_wrap=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


#: Passes the ``App`` that the ``automation`` group put on the context.
pass_app = click.make_pass_decorator(App)


def parse_at(text: str | None) -> datetime:
    """``--at``: an ISO 8601 time; naive values are UTC; without one, now."""
    if not text:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--at {text!r} is not an ISO 8601 time, e.g. 2026-11-22T09:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def templates(app: App) -> TemplateStore:
    """The template store of ``--templates`` (``AUTOMATION_TEMPLATES_DIR``)."""
    return TemplateStore(app.settings.templates_dir)
