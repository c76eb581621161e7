"""Import customers and events from CSV or JSON Lines files: the public entry points and the loop.

Files are streamed: rows are read one at a time (:mod:`~automation.ingest.readers`), then validated
(customers column by column, :mod:`~automation.ingest.columns`, by the rules of
:mod:`~automation.ingest.rows`) and written (:mod:`~automation.ingest.writer`) in batches of
``BATCH_SIZE`` rows, each batch in its own transaction, on a thread of its own while the next batch is
read and validated (:class:`_Writer`; batches are still written one after the other). A bad row is
rejected (reported with its line number) and never stops the good rows. A file-level problem raises
:class:`~automation.errors.InputError` before any row is written; a CSV file broken mid-way keeps the
rows before. Customers are upserted by ``id``, rows in file order, with the column rules of
:func:`~automation.ingest.rows.customer_columns`. Events are appended and must name a customer that is
already stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import SingletonThreadPool, StaticPool

from automation.errors import DatabaseError, InputError, Problem
from automation.ingest.columns import customer_rows
from automation.ingest.readers import ByteCounter, csv_rows, file_format, jsonl_rows, open_file
from automation.ingest.rows import (
    CUSTOMER_INPUT_FIELDS,
    EVENT_FIELDS,
    CustomerColumns,
    RowError,
    check_region,
    customer_columns,
    event_row,
)
from automation.ingest.writer import (
    PreparedCustomers,
    prepare_customers,
    write_events,
    write_prepared_customers,
)

__all__ = [
    "CUSTOMER_INPUT_FIELDS",
    "CustomerColumns",
    "ImportReport",
    "ProgressCallback",
    "customer_columns",
    "import_customers",
    "import_events",
]

BATCH_SIZE = 5_000
MAX_STORED_PROBLEMS = 1_000
PROGRESS_EVERY = 1_000  # rows between progress callbacks
LET_WRITER_RUN_EVERY = 64  # rows read between the chances the writing thread gets to run

#: ``progress(rows_processed, bytes_read, total_bytes)``
ProgressCallback = Callable[[int, int, int], None]
#: ``validate(raw_rows, from_text)``: per row, in order, the validated row or its RowError.
Validate = Callable[[Sequence[dict[str, Any]], bool], Sequence[dict[str, Any] | RowError]]

Kind = Literal["customers", "events"]


@dataclass
class ImportReport:
    """What an import did: rows read, imported and rejected, and the first rejected rows."""

    path: Path
    kind: Kind
    read: int = 0
    imported: int = 0  # events written, or distinct customers written
    rejected: int = 0
    problems: list[Problem] = field(default_factory=list)  # at most MAX_STORED_PROBLEMS
    repeated: int = 0  # customer ids given by more than one imported row
    _ids: set[str] = field(default_factory=set, repr=False)  # customer ids written
    _repeated: set[str] = field(default_factory=set, repr=False)

    def count_customers(self, ids: Collection[str], repeated: Iterable[str]) -> None:
        """Count the ids of a written batch; ``repeated``: those more than one row of the batch gave."""
        again = {i for i in ids if i in self._ids}.union(repeated) - self._repeated
        self._repeated |= again
        self._ids.update(ids)
        self.imported, self.repeated = len(self._ids), len(self._repeated)

    def reject(self, line: int, message: str) -> None:
        """Count a rejected row; keep its problem while under the cap."""
        self.rejected += 1
        if len(self.problems) < MAX_STORED_PROBLEMS:
            self.problems.append(Problem(self.path, line, 0, message))

    @property
    def ok(self) -> bool:
        """True when no row was rejected."""
        return self.rejected == 0

    def summary(self) -> str:
        """One line, e.g. ``imported 2,998 customers (1 repeated id: the last row wins), rejected 2 rows``."""
        kind = self.kind if self.imported != 1 else self.kind.removesuffix("s")
        rows = "row" if self.rejected == 1 else "rows"
        repeated = ""
        if self.repeated:
            ids = "id" if self.repeated == 1 else "ids"
            repeated = f" ({self.repeated:,} repeated {ids}: the last row wins)"
        return f"imported {self.imported:,} {kind}{repeated}, rejected {self.rejected:,} {rows}"


# ---------------------------------------------------------------------------------------------
# Public API


def import_customers(
    engine: Engine,
    path: Path | str,
    progress: ProgressCallback | None = None,
    *,
    default_region: str | None = None,
) -> ImportReport:
    """Upsert customers from a CSV or JSON Lines file into ``customer``.

    ``default_region`` (ISO 3166 code such as ``US``) is used to read phone numbers written
    without a leading ``+``; without it such numbers are rejected.
    """
    region = check_region(default_region)

    def validate(raws: Sequence[dict[str, Any]], from_text: bool) -> list[dict[str, Any] | RowError]:
        return customer_rows(raws, region, from_text)

    return _run(engine, Path(path), "customers", progress, validate)


def import_events(engine: Engine, path: Path | str, progress: ProgressCallback | None = None) -> ImportReport:
    """Append events from a CSV or JSON Lines file to ``event``; each must name a stored customer."""
    return _run(engine, Path(path), "events", progress, _event_rows)


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Batch:
    """Valid rows waiting for the next write, and the lines they were read from.

    Customers are keyed by id: a later row for an id already in the batch is merged into the earlier
    one, its columns replacing, as writing the two rows one after the other would.
    """

    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    repeated: set[str] = field(default_factory=set)  # ids given by more than one row of the batch
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    rows: int = 0  # valid rows, customers merged by id still counted
    first_line: int = 0
    last_line: int = 0

    def add(self, kind: Kind, line: int, row: dict[str, Any]) -> None:
        self.rows += 1
        self.first_line = self.first_line or line
        self.last_line = line
        if kind == "events":
            self.events.append((line, row))
            return
        earlier = self.customers.pop(row["id"], None)  # added again last: file order
        if earlier is not None:
            self.repeated.add(row["id"])
            row = earlier | row
        self.customers[row["id"]] = row


def _write(
    conn: Connection, path: Path, kind: Kind, batch: _Batch, customers: PreparedCustomers | None
) -> tuple[int, list[tuple[int, str]]]:
    """Write the batch (its customers as ``customers``, prepared) in one transaction; return how many
    events were written (0 for customers) and the rows the writer rejected, as ``(line, message)``."""
    rejected: list[tuple[int, str]] = []
    written = 0
    try:
        with conn.begin():
            if customers is not None:
                write_prepared_customers(conn, customers)
            else:
                written = write_events(
                    conn, batch.events, lambda line, message: rejected.append((line, message))
                )
    except DBAPIError as exc:
        first, last = batch.first_line, batch.last_line
        raise DatabaseError(
            f"{path}: the database refused the rows of lines {first}-{last} "
            f"(rows before line {first} were imported): {exc.orig}"
        ) from exc
    return written, rejected


class _Writer:
    """Writes batches one after the other, on a thread of its own when the engine's connections may
    move between threads (not an in-memory SQLite database), so that the next batch is read, validated
    and prepared (:func:`~automation.ingest.writer.prepare_customers`, the Python part of the writing)
    while the database works on this one; the writing thread then hardly needs the interpreter. At most
    one batch is being written: :meth:`write` first waits for the one before, and a write that failed
    raises there, before any later batch is written. Every batch is written on the same connection,
    opened by the first."""

    def __init__(self, engine: Engine, path: Path, kind: Kind, report: ImportReport) -> None:
        self._engine, self._path, self._kind, self._report = engine, path, kind, report
        threaded = not isinstance(engine.pool, (SingletonThreadPool, StaticPool))
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="import-writer") if threaded else None
        self._pending: tuple[Future[tuple[int, list[tuple[int, str]]]], _Batch] | None = None
        self._conn: Connection | None = None

    def write(self, batch: _Batch) -> None:
        """Start writing ``batch`` (the caller hands it over and does not change it afterwards)."""
        customers = None
        if self._kind == "customers" and batch.rows:
            customers = prepare_customers(self._engine.dialect, batch.customers.values())
        self.wait()
        if not batch.rows:
            return
        if self._executor is None:
            self._count(batch, self._write(batch, customers))
            return
        self._pending = self._executor.submit(self._write, batch, customers), batch

    def let_run(self) -> None:
        """Let the writing thread run now if it waits for the interpreter.

        It waits on the database most of the time, and the importing thread holds the interpreter while
        it reads and validates: without this, each answer the writing thread gets from the database
        would wait up to the interpreter's switch interval (5 ms) before it is handled."""
        if self._pending is not None:
            time.sleep(0)

    def wait(self) -> None:
        """Wait for the batch being written, count what it wrote, raise what it raised."""
        if self._pending is None:
            return
        future, batch = self._pending
        self._pending = None
        self._count(batch, future.result())

    def close(self) -> None:
        """Wait for the batch being written (its error is the caller's to raise, through :meth:`wait`),
        then close the connection."""
        if self._executor is None:
            self._disconnect()
            return
        self._executor.submit(self._disconnect)
        self._executor.shutdown(wait=True)

    def _write(self, batch: _Batch, customers: PreparedCustomers | None) -> tuple[int, list[tuple[int, str]]]:
        if self._conn is None:
            self._conn = self._engine.connect()
        return _write(self._conn, self._path, self._kind, batch, customers)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _count(self, batch: _Batch, result: tuple[int, list[tuple[int, str]]]) -> None:
        written, rejected = result
        for line, message in rejected:
            self._report.reject(line, message)
        if self._kind == "customers":
            self._report.count_customers(batch.customers.keys(), batch.repeated)
        else:
            self._report.imported += written


def _rows(
    path: Path, fmt: Literal["csv", "jsonl"], kind: Kind, lines: ByteCounter
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line, row, error)`` per row of the file, read with the columns ``kind`` allows and requires."""
    fields: tuple[str, ...] = CUSTOMER_INPUT_FIELDS
    required: tuple[str, ...] = ("id",)
    if kind == "events":
        fields, required = EVENT_FIELDS, ("customer_id", "name", "occurred_at")
    return csv_rows(path, lines, fields, required) if fmt == "csv" else jsonl_rows(lines, fields)


def _run(
    engine: Engine,
    path: Path,
    kind: Kind,
    progress: ProgressCallback | None,
    validate: Validate,
) -> ImportReport:
    fmt = file_format(path)
    fh, total = open_file(path)
    report = ImportReport(path=path, kind=kind)
    writer = _Writer(engine, path, kind, report)
    pending: list[tuple[int, dict[str, Any]]] = []  # rows read, validated a batch at a time

    def flush() -> None:
        batch = _Batch()
        results = validate([raw for _line, raw in pending], fmt == "csv")
        for (line, _raw), result in zip(pending, results, strict=True):
            if isinstance(result, RowError):
                report.reject(line, str(result))
            else:
                batch.add(kind, line, result)
        pending.clear()
        writer.write(batch)

    try:
        with fh:
            lines = ByteCounter(fh)
            try:
                for line, raw, error in _rows(path, fmt, kind, lines):
                    report.read += 1
                    if not report.read % LET_WRITER_RUN_EVERY:
                        writer.let_run()
                    if error is not None:
                        report.reject(line, error)
                    elif raw is not None:
                        pending.append((line, raw))
                        if len(pending) >= BATCH_SIZE:
                            flush()
                    if progress is not None and report.read % PROGRESS_EVERY == 0:
                        progress(report.read, lines.bytes_read, total)
            except InputError:
                flush()  # a CSV file broken mid-way: keep the rows before
                writer.wait()
                raise
            flush()
            writer.wait()
    finally:
        writer.close()
    if progress is not None:
        progress(report.read, lines.bytes_read, max(total, lines.bytes_read))
    # Rows are rejected as their batch is validated, and unknown customers as it is written: put the
    # problems back in file order.
    report.problems.sort(key=lambda p: p.line)
    return report


def _event_rows(raws: Sequence[dict[str, Any]], from_text: bool) -> list[dict[str, Any] | RowError]:
    """Each event row validated (:func:`~automation.ingest.rows.event_row`), or its RowError."""
    results: list[dict[str, Any] | RowError] = []
    for raw in raws:
        try:
            results.append(event_row(raw, from_text))
        except RowError as exc:
            results.append(exc)
    return results
