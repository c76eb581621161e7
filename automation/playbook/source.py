"""YAML loading that remembers where every value came from (file, line, column).

Playbooks and test files are config that many people edit, so a file is checked against fixed
limits before it is built into values: every event of the parser is checked as the loader reads it
(one pass), and the loader composes the whole document before it builds a value, so it stops at the
first excess, at most ``MAX_DEPTH`` levels into the document:

* at most ``MAX_DOCUMENT_BYTES`` (1 MiB) of text;
* at most ``MAX_DEPTH`` (50) mappings and lists nested in one another;
* anchors and aliases are allowed (``<<: *defaults``, a step list used twice), but an alias counts
  as every value it stands for, and a file holds at most ``MAX_VALUES`` (100,000) values once its
  aliases are expanded, so an alias bomb ("billion laughs") is refused at its first excess;
* no tags but YAML's own plain ones (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``,
  ``!!map``, ``!!seq``): ``!!python/...`` and custom ``!tags`` are refused.

Each excess is a ``PlaybookError`` naming the file, line and column where it happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from automation.errors import PlaybookError, Problem

#: The limits every YAML file is held to (see the module docstring).
MAX_DOCUMENT_BYTES = 1_048_576
MAX_DEPTH = 50
MAX_VALUES = 100_000
_ALLOWED_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq")
)


class PosStr(str):
    """A string from a YAML file that knows its 1-based line and column (of its first character)."""

    line: int
    column: int

    def __new__(cls, value: str, line: int, column: int) -> PosStr:
        obj = super().__new__(cls, value)
        obj.line = line
        obj.column = column
        return obj


@dataclass(frozen=True)
class Source:
    """A loaded YAML file: the plain data (strings are ``PosStr``) and the positions of every key."""

    path: Path
    text: str
    tree: Any  # ruamel's round-trip tree, for mapping error locations back to lines
    data: Any

    def line_text(self, line: int) -> str | None:
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else None

    def problem(self, line: int, column: int, message: str, severity: str = "error") -> Problem:
        return Problem(self.path, line, column, message, self.line_text(line), severity)

    def locate(self, loc: Sequence[int | str]) -> tuple[int, int, bool]:
        """Line and column (1-based) of the value at ``loc``; the flag says whether ``loc`` was found whole.

        For a missing key this points at the mapping that should hold it. Elements of ``loc`` that are
        not in the tree (pydantic adds union tags) are skipped.
        """
        node, line, column, found = self.tree, 1, 1, True
        for key in loc:
            if isinstance(node, CommentedMap) and key in node and key not in node.lc.data:
                node = node[key]  # merged in by ``<<: *anchor``: stay at the merging mapping
            elif isinstance(node, CommentedMap) and key in node:
                key_line, key_col, val_line, val_col = node.lc.data[key]
                child = node[key]
                if isinstance(child, CommentedMap | CommentedSeq) and child:
                    line, column = child.lc.line + 1, child.lc.col + 1
                elif child is None:
                    line, column = key_line + 1, key_col + 1
                else:
                    line, column = val_line + 1, val_col + 1
                node = child
            elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
                item_line, item_col = node.lc.data[key]
                line, column = item_line + 1, item_col + 1
                node = node[key]
            elif isinstance(node, CommentedMap | CommentedSeq):
                found = False
                continue
        return line, column, found

    def key_position(self, loc: Sequence[int | str]) -> tuple[int, int]:
        """Line and column of the key named by the last element of ``loc`` (for unknown fields)."""
        node = self.tree
        for key in loc[:-1]:
            if (
                (isinstance(node, CommentedMap)
                and key in node)
                or (isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node))
            ):
                node = node[key]
        last = loc[-1] if loc else None
        if isinstance(node, CommentedMap) and last in node.lc.data:
            key_line, key_col = node.lc.data[last][:2]
            return key_line + 1, key_col + 1
        line, column, _ = self.locate(loc)
        return line, column


def load(path: Path) -> Source:
    """Read a YAML file within the limits; a syntax error or an excess is a ``PlaybookError`` with the
    file and line."""
    text = _read(path)
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.Parser = _limited(yaml.Parser, _Limits(path, text))
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise PlaybookError([_problem(path, text, line, column, f"invalid YAML: {message}")]) from None
    return Source(path, text, tree, _plain(tree))


def _read(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise PlaybookError(
                [Problem(path, 0, 0, f"the file is {size:,} bytes; the limit is {MAX_DOCUMENT_BYTES:,}")]
            )
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlaybookError([Problem(path, 0, 0, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlaybookError([Problem(path, 0, 0, f"cannot read the file: {exc}")]) from None


def _problem(path: Path, text: str, line: int, column: int, message: str) -> Problem:
    lines = text.splitlines()
    source_line = lines[line - 1] if 0 < line <= len(lines) else None
    return Problem(path, line, column, message, source_line)


class _Limits:
    """The limits, checked on each parser event as the loader reads it (one pass over the text): nesting
    depth, values after alias expansion, and tags. The loader composes the whole document before it
    constructs anything, so an excess stops it before any value is built.

    ``open_counts`` holds, for every mapping or list still open, how many values it holds so far
    (expanded); ``sizes`` the expanded size of every anchored value, which an alias adds again.
    """

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text
        self.open_counts: list[tuple[str | None, int]] = []
        self.sizes: dict[str, int] = {}
        self.total = 0

    def fail(self, event: Any, message: str) -> None:
        mark = event.start_mark
        raise PlaybookError([_problem(self.path, self.text, mark.line + 1, mark.column + 1, message)])

    def __call__(self, event: Any) -> None:
        open_counts, sizes = self.open_counts, self.sizes
        kind = type(event).__name__
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in _ALLOWED_TAGS and kind != "AliasEvent":
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            self.fail(event, f"the tag {shown} is not allowed; write plain YAML values")
        if kind in ("MappingStartEvent", "SequenceStartEvent"):
            if len(open_counts) >= MAX_DEPTH:
                self.fail(event, f"nested more than {MAX_DEPTH} levels deep; the limit is {MAX_DEPTH}")
            open_counts.append((event.anchor, 1))
            added = 1
        elif kind in ("MappingEndEvent", "SequenceEndEvent"):
            anchor, count = open_counts.pop()
            if anchor is not None:
                sizes[anchor] = count
            if open_counts:
                parent_anchor, parent_count = open_counts[-1]
                open_counts[-1] = (parent_anchor, parent_count + count)
            return
        elif kind == "ScalarEvent":
            added = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif kind == "AliasEvent":
            if event.anchor not in sizes:
                self.fail(event, f"the alias *{event.anchor} refers to a value that contains it")
            added = sizes[event.anchor]
        else:
            return
        self.total += added
        if self.total > MAX_VALUES:
            self.fail(
                event,
                f"more than {MAX_VALUES:,} values once aliases are expanded (an alias counts as every "
                "value it stands for); use fewer or smaller aliases",
            )
        if open_counts and kind != "MappingStartEvent" and kind != "SequenceStartEvent":
            parent_anchor, parent_count = open_counts[-1]
            open_counts[-1] = (parent_anchor, parent_count + added)


def _limited(parser: type[Any], limits: _Limits) -> type[Any]:
    """``parser`` (the loader's parser class) handing every event it gives out to ``limits`` first."""

    class LimitedParser(parser):  # type: ignore[misc]
        def get_event(self) -> Any:
            event = super().get_event()
            limits(event)
            return event

    return LimitedParser


def _plain(node: Any, line: int = 1, column: int = 1) -> Any:
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            if key in node.lc.data:
                _, _, val_line, val_col = node.lc.data[key]
                out[str(key)] = _plain(value, val_line + 1, val_col + 1)
            else:  # merged in by ``<<: *anchor``: the position it has in the mapping it comes from
                out[str(key)] = _plain(value, *_merged_position(node, key, line, column))
        return out
    if isinstance(node, CommentedSeq):
        return [_plain(value, *(n + 1 for n in node.lc.data[i])) for i, value in enumerate(node)]
    if isinstance(node, TaggedScalar):  # ``!!str 3``, the only tagged scalar the limits let through
        return PosStr(str(node.value), line, column)
    if isinstance(node, DoubleQuotedScalarString | SingleQuotedScalarString):
        return PosStr(str(node), line, column + 1)
    if isinstance(node, str):
        return PosStr(str(node), line, column)
    return node


def _merged_position(node: CommentedMap, key: Any, line: int, column: int) -> tuple[int, int]:
    """Where the value of a merged-in ``key`` was written; else the merging mapping's position."""
    for source in getattr(node, "merge", None) or ():
        if isinstance(source, CommentedMap) and key in source.lc.data:
            _, _, val_line, val_col = source.lc.data[key]
            return val_line + 1, val_col + 1
    return line, column
