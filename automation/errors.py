"""One root error for everything the project raises on purpose.

    AutomationError
    ├── ConfigError          bad settings (environment, flags)            exit 2
    ├── InputError           bad input a person can fix                    exit 2
    │   ├── PlaybookError    one or more problems in playbooks/templates (file:line:col each)
    │   └── DataError        rejected rows in an import file (file:line each)
    ├── DatabaseError        the database is missing, not migrated or unreachable   exit 1
    └── DeliveryError        a channel could not deliver a message
        ├── TransientDeliveryError   try again later (timeouts, 429, 5xx)
        └── PermanentDeliveryError   never going to work (4xx, invalid address)

The CLI maps these classes to exit codes in one place (``automation.cli``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class AutomationError(Exception):
    """Root of every error raised on purpose by this package."""

    exit_code = 1


class ConfigError(AutomationError):
    exit_code = 2


class InputError(AutomationError):
    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem at a place in a file: rendered like a compiler diagnostic."""

    path: Path | str
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    message: str
    source_line: str | None = None
    severity: str = "error"

    def render(self) -> str:
        where = str(self.path)
        if self.line:
            where += f":{self.line}"
            if self.column:
                where += f":{self.column}"
        text = f"{where}: {self.message}"
        if self.source_line is not None and self.line:
            shown, column = _clip(self.source_line.rstrip("\n"), self.column)
            text += "\n    " + shown
            if column:
                text += "\n    " + " " * (column - 1) + "^"
        return text


SHOWN_LINE = 100  # characters of a source line shown under a problem


def _clip(line: str, column: int) -> tuple[str, int]:
    """At most ``SHOWN_LINE`` characters of ``line`` around ``column``, and the column within them."""
    if len(line) <= SHOWN_LINE:
        return line, column
    start = max(0, min(column - 1 - SHOWN_LINE // 2, len(line) - SHOWN_LINE)) if column else 0
    end = start + SHOWN_LINE
    head, tail = ("..." if start else ""), ("..." if end < len(line) else "")
    return head + line[start:end] + tail, (column - start + len(head) if column else 0)


class PlaybookError(InputError):
    """A playbook (or a template it names) is invalid; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))


class DataError(InputError):
    """An import file had rows that were rejected (the good rows were still imported)."""


class DatabaseError(AutomationError):
    exit_code = 1


class DeliveryError(AutomationError):
    pass


class TransientDeliveryError(DeliveryError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    pass
