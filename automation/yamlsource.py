"""YAML loading that remembers where every value came from (file, line, column)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from automation.errors import PlaybookError, Problem


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
            if isinstance(node, CommentedMap) and key in node:
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
        if isinstance(node, CommentedMap) and last in node:
            key_line, key_col = node.lc.data[last][:2]
            return key_line + 1, key_col + 1
        line, column, _ = self.locate(loc)
        return line, column


def load(path: Path) -> Source:
    """Read a YAML file; a syntax error becomes a ``PlaybookError`` with the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlaybookError([Problem(path, 0, 0, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlaybookError([Problem(path, 0, 0, f"cannot read the file: {exc}")]) from None
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        lines = text.splitlines()
        source_line = lines[line - 1] if 0 < line <= len(lines) else None
        raise PlaybookError([Problem(path, line, column, f"invalid YAML: {message}", source_line)]) from None
    return Source(path, text, tree, _plain(tree))


def _plain(node: Any, line: int = 1, column: int = 1) -> Any:
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            _, _, val_line, val_col = node.lc.data[key]
            out[str(key)] = _plain(value, val_line + 1, val_col + 1)
        return out
    if isinstance(node, CommentedSeq):
        return [_plain(value, *(n + 1 for n in node.lc.data[i])) for i, value in enumerate(node)]
    if isinstance(node, DoubleQuotedScalarString | SingleQuotedScalarString):
        return PosStr(str(node), line, column + 1)
    if isinstance(node, str):
        return PosStr(str(node), line, column)
    return node
