"""Syntax tree of a rule expression. ``pos`` is the 0-based offset of the node in the source text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Union


class RuleError(Exception):
    """A rule that does not parse or does not type-check; ``pos`` is the 0-based offset of the problem."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


@dataclass(frozen=True)
class Literal:
    value: object  # int | float | str | bool | None | timedelta
    kind: str  # number | string | bool | null | duration
    pos: int


@dataclass(frozen=True)
class Field:
    path: tuple[str, ...]
    pos: int

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Node, ...]
    kwargs: tuple[tuple[str, Node], ...]
    pos: int


@dataclass(frozen=True)
class Compare:
    op: str  # == != < <= > >=
    left: Node
    right: Node
    pos: int
    op_pos: int


@dataclass(frozen=True)
class IsNull:
    operand: Node
    negated: bool
    pos: int


@dataclass(frozen=True)
class In:
    operand: Node
    items: tuple[Node, ...]
    negated: bool
    pos: int


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]
    pos: int


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]
    pos: int


@dataclass(frozen=True)
class Not:
    operand: Node
    pos: int


Node = Union[Literal, Field, Call, Compare, IsNull, In, And, Or, Not]  # noqa: UP007

DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta | None:
    """``30d`` -> 30 days; ``12h``, ``90m``, ``2w``, ``45s``. None if ``text`` is not a duration."""
    text = text.strip()
    if len(text) < 2 or text[-1] not in DURATION_UNITS:
        return None
    try:
        amount = float(text[:-1])
    except ValueError:
        return None
    if amount < 0:
        return None
    return timedelta(seconds=amount * DURATION_UNITS[text[-1]])


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        size = DURATION_UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
