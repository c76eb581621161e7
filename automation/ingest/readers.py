"""Reading CSV and JSON Lines files: one ``(line, row, error)`` at a time, with bounded sizes.

Files are streamed as bytes and decoded line by line (:class:`ByteCounter`), which also counts the
bytes read for progress. Formats are chosen by extension: ``.csv`` (a header row; JSON columns hold
JSON text) or ``.jsonl``/``.ndjson`` (one object a line). A file-level problem (missing or unreadable
file, unknown format, empty file, unknown, repeated or missing CSV column) raises
:class:`~automation.errors.InputError`; a bad row comes back as its line and error, so it never stops
the good rows. JSON Lines has no header, so there an unknown key rejects its row.

Sizes are bounded in every format: a physical line holds at most ``MAX_LINE_BYTES`` bytes (its line
ending not counted; a longer line is skipped without being read whole and rejects its row), and so are
a JSON Lines row and a CSV field (one spanning lines too: a longer field rejects its row).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

from automation.errors import InputError
from automation.ingest.rows import BAD_CHARS, json_loads, json_type, unknown_field

MAX_LINE_BYTES = 131_072  # 128 KiB a physical line, its line ending not counted
_SKIP_CHUNK = 65_536  # bytes read at a time when skipping the rest of a longer line

_INVALID_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of undecodable bytes
_LONG_LINE = f"the line is longer than {MAX_LINE_BYTES:,} bytes"


def open_file(path: Path) -> tuple[BinaryIO, int]:
    """The file opened for reading bytes, and its size (for progress); an unreadable file is an InputError."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return fh, os.fstat(fh.fileno()).st_size


class ByteCounter:
    """Yields the decoded lines of a binary file and counts the bytes read so far.

    A line longer than ``MAX_LINE_BYTES`` is never held whole: the rest of it is skipped in chunks,
    an empty line is yielded in its place, and its number is kept for :meth:`take_long_lines`.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.bytes_read = 0
        self.line = 0  # number of the last line yielded
        self._long: list[int] = []

    def take_long_lines(self) -> list[int]:
        """Numbers of the too long lines yielded since the last call."""
        taken, self._long = self._long, []
        return taken

    def __iter__(self) -> Iterator[str]:
        while raw := self._fh.readline(MAX_LINE_BYTES + 2):  # room for a CRLF line ending
            self.bytes_read += len(raw)
            self.line += 1
            if self.line == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # UTF-8 byte order mark
            if _content_length(raw) > MAX_LINE_BYTES:
                if not raw.endswith(b"\n"):
                    self._skip_rest_of_line()
                self._long.append(self.line)
                yield "\n"
                continue
            # Invalid UTF-8 becomes lone surrogates, so the row holding it is rejected, not the file.
            yield raw.decode("utf-8", errors="surrogateescape")

    def _skip_rest_of_line(self) -> None:
        while chunk := self._fh.readline(_SKIP_CHUNK):
            self.bytes_read += len(chunk)
            if chunk.endswith(b"\n"):
                return


def _content_length(raw: bytes) -> int:
    """Bytes of a line without its line ending."""
    if raw.endswith(b"\r\n"):
        return len(raw) - 2
    return len(raw) - raw.endswith(b"\n")


def file_format(path: Path) -> Literal["csv", "jsonl"]:
    """The format the file's extension names; any other extension is an InputError."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    shown = suffix or "(no extension)"
    raise InputError(f"{path}: unknown file format {shown!r}; use .csv, .jsonl or .ndjson")


def csv_rows(
    path: Path, lines: ByteCounter, fields: tuple[str, ...], required: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line, row, error)`` per data row; file-level problems raise InputError."""
    # No field can be longer than a line, unless it spans lines (a quote left open, say).
    previous_limit = csv.field_size_limit(MAX_LINE_BYTES)
    try:
        reader = csv.reader(lines)
        names = _csv_header(path, reader, lines, fields, required)
        yield from _csv_records(path, reader, lines, names)
    finally:
        csv.field_size_limit(previous_limit)


def _csv_header(
    path: Path,
    reader: Iterator[list[str]],
    lines: ByteCounter,
    fields: tuple[str, ...],
    required: tuple[str, ...],
) -> list[str]:
    """The column names of the header row; a bad header raises InputError."""
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InputError(f"{path}:1: cannot read the CSV header: {exc}") from exc
    if lines.take_long_lines():
        raise InputError(f"{path}:1: the header line is longer than {MAX_LINE_BYTES:,} bytes")
    if header is None:
        raise InputError(f"{path}: the file is empty; expected a header row naming the columns")
    names = [h.strip() for h in header]
    seen: set[str] = set()
    for name in names:
        if BAD_CHARS.search(name):
            raise InputError(f"{path}:1: the header is not valid UTF-8 text")
        if name not in fields:
            raise InputError(f"{path}:1: {unknown_field(name, fields)}")
        if name in seen:
            raise InputError(f"{path}:1: column {name!r} appears twice in the header")
        seen.add(name)
    missing = [r for r in required if r not in seen]
    if missing:
        raise InputError(f"{path}:1: missing required column(s): {', '.join(missing)}")
    return names


def _csv_records(
    path: Path, reader: Iterator[list[str]], lines: ByteCounter, names: list[str]
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line, row, error)`` per data row after the header."""
    last_line = lines.line
    while True:
        error = None
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            cells, error = [], _csv_error(exc)
            if lines.line == last_line:  # nothing was read: do not try again forever
                raise InputError(f"{path}:{last_line + 1}: cannot read the CSV file: {exc}") from exc
        line, last_line = last_line + 1, lines.line
        long_lines = lines.take_long_lines()
        if long_lines:
            yield long_lines[0], None, _LONG_LINE
        elif error is not None:
            yield line, None, error
        elif not cells:  # blank line
            continue
        elif len(cells) != len(names):
            yield line, None, f"has {len(cells)} fields, the header has {len(names)}"
        else:
            yield line, {n: (c if c != "" else None) for n, c in zip(names, cells, strict=True)}, None


def _csv_error(exc: csv.Error) -> str:
    if "field larger than field limit" in str(exc):
        return f"a field is longer than {MAX_LINE_BYTES:,} characters (is a quote left open?)"
    return f"cannot read the CSV row: {exc}"


def jsonl_rows(
    lines: ByteCounter, fields: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line, row, error)`` per non-blank line."""
    for text in lines:
        line = lines.line
        if lines.take_long_lines():
            yield line, None, _LONG_LINE
            continue
        if not text.strip():
            continue
        if _INVALID_UTF8.search(text):
            yield line, None, "not valid UTF-8"
            continue
        try:
            obj = json_loads(text)
        except (ValueError, RecursionError) as exc:
            yield line, None, f"not valid JSON: {exc}"
            continue
        if not isinstance(obj, dict):
            yield line, None, f"expected a JSON object, got {json_type(obj)}"
            continue
        unknown = [k for k in obj if k not in fields]
        if unknown:
            # No header in JSON Lines: an unknown key rejects its row, with the same suggestion.
            yield line, None, unknown_field(unknown[0], fields)
            continue
        yield line, obj, None
