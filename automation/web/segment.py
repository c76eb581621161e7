"""The Segment HTTP Tracking API: ``POST /v1/identify``, ``/v1/track``, ``/v1/batch`` (and the ignored
``/v1/page``, ``/v1/screen``, ``/v1/group``, ``/v1/alias``).

Authentication is Segment's: the write key as the HTTP Basic user name (empty password), or
``Authorization: Bearer <key>``, or a ``writeKey`` field in the body. The keys come from
``AUTOMATION_WRITE_KEYS``; without any the routes answer 404 (the API is off, never open). Bodies are
at most 32 KB per call and 500 KB per batch, after ``Content-Encoding: gzip`` is undone. Every error
is JSON ``{"error": "..."}``. What a call writes is decided in :mod:`automation.ingest.segment` and
validated by :mod:`automation.ingest.rows`, like an imported row.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from automation.ingest.rows import json_loads
from automation.ingest.segment import Call, CallError, combine_customers, merge_attributes, parse_call
from automation.ingest.writer import (
    prepare_events_once,
    stored_attributes,
    write_customers,
    write_prepared_events,
)
from automation.masking import mask_text
from automation.web.group_commit import GroupCommit

if TYPE_CHECKING:
    from automation.web.metrics import ServeMetrics

log = logging.getLogger("automation.web.segment")

#: Bytes of one call's body (and of each call in a batch), and of a batch's body, after decompression.
CALL_MAX, BATCH_MAX = 32 * 1024, 500 * 1024
_READ_CHUNK = 64 * 1024
_MISSING_KEY = "missing write key (HTTP Basic user name, Bearer token or a writeKey field)"
_COMPACT = (",", ":")
SINGLE_TYPES = ("identify", "track", "page", "screen", "group", "alias")
#: Statuses that refuse a single call for what it is (malformed, invalid, too large, encoded oddly):
#: counted as a rejected call; a call refused for its key (401) or by the database (503) is not.
_CALL_REFUSED = frozenset({400, 413, 415})


class ApiError(Exception):
    """A request answered with ``status`` and the JSON body ``{"error": reason}``; ``close``: the
    connection is closed after the answer (its body was not read to the end)."""

    def __init__(self, status: int, reason: str, close: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.close = status, reason, close


def _error(status: int, reason: str, close: bool = False) -> web.Response:
    response = web.json_response({"error": reason}, status=status)
    if close:
        response.force_close()
    return response


@dataclass
class _Outcome:
    """What a batch did: how many calls were accepted, which were refused and why."""

    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, index: int, reason: str) -> None:
        self.rejected.append({"index": index, "reason": reason})


class _DrainFilter(logging.Filter):
    """Drops aiohttp's record of the broken compressed body it meets again while draining a request
    this module has already answered 400 and logged as one warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        broken = isinstance(error, RequestPayloadError) and isinstance(error.__cause__, ContentEncodingError)
        return not broken


def _quiet_drain() -> None:
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _DrainFilter) for f in logger.filters):
        logger.addFilter(_DrainFilter())


def routes(
    engine: Engine,
    write_keys: Sequence[str],
    clock: Callable[[], datetime],
    counts: ServeMetrics | None = None,
) -> list[web.RouteDef]:
    """The ``/v1`` routes; with no write keys they answer 404. ``counts``: where the accepted and
    rejected calls are counted (``automation_ingest_events_total``)."""
    keys = tuple(key.encode() for key in write_keys if key)
    _quiet_drain()
    # SQLite takes one writer at a time: requests that arrive together share a commit
    group = GroupCommit[_Outcome](engine) if engine.dialect.name == "sqlite" else None

    async def store(calls: list[tuple[int, Call]]) -> _Outcome:
        job = _job(engine.dialect, calls)
        try:
            if group is not None:
                return await group.run(job)
            return await asyncio.to_thread(_in_transaction, engine, job)
        except DBAPIError as exc:
            log.warning("the database refused a call: %s", mask_text(str(exc.orig)))
            raise ApiError(503, "the database refused the call; send it again later") from None

    async def single(request: web.Request) -> web.Response:
        call_type = request.path.rsplit("/", 1)[-1]  # the route: /v1/<type>
        try:
            body, _size = await _authorized_body(request, keys, CALL_MAX)
            call = _parse(body, clock(), call_type)
            outcome = await store([(0, call)])
        except ApiError as exc:
            if counts is not None and exc.status in _CALL_REFUSED:
                counts.calls(call_type, 0, 1)
            return _refused(request, exc)
        if counts is not None:
            counts.calls(call_type, outcome.accepted, len(outcome.rejected))
        if outcome.rejected:
            return _refused(request, ApiError(400, outcome.rejected[0]["reason"]))
        return web.json_response({"success": True})

    async def batch(request: web.Request) -> web.Response:
        try:
            body, size = await _authorized_body(request, keys, BATCH_MAX)
            items = body.get("batch")
            if not isinstance(items, list):
                raise ApiError(400, "batch: expected a JSON array of calls")
            outcome, calls = _parse_batch(items, clock(), check_sizes=size > CALL_MAX)
            stored = await store(calls)
        except ApiError as exc:
            return _refused(request, exc)
        outcome.accepted = stored.accepted
        rejected = sorted(outcome.rejected + stored.rejected, key=lambda r: int(r["index"]))
        if counts is not None:
            counts.batch(items, (int(r["index"]) for r in rejected))
        return web.json_response(
            {"success": not rejected, "accepted": outcome.accepted, "rejected": rejected}
        )

    async def off(request: web.Request) -> web.Response:
        return _error(404, "not found: the ingestion API is off (no AUTOMATION_WRITE_KEYS configured)")

    if not keys:
        return [web.post("/v1/{type}", off)]
    return [
        web.post("/v1/batch", batch),
        *(web.post(f"/v1/{name}", single) for name in SINGLE_TYPES),
        web.post("/v1/{type}", off),  # an unknown call type: as if the route did not exist
    ]


def _refused(request: web.Request, exc: ApiError) -> web.Response:
    """One warning line (addresses masked, never the key), then the JSON error."""
    log.warning("%s %s refused (%d): %s", request.method, request.path, exc.status, mask_text(exc.reason))
    return _error(exc.status, exc.reason, exc.close)


async def _authorized_body(
    request: web.Request, keys: tuple[bytes, ...], limit: int
) -> tuple[dict[str, Any], int]:
    """The request's JSON object and its size in bytes, after checking its size and its write key."""
    header_key = _header_key(request.headers.get("Authorization"))
    raw = await _read(request, limit)
    if header_key is not None:
        _check_key(header_key, keys)
    try:
        body = json_loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if header_key is None:
            raise ApiError(401, _MISSING_KEY) from None
        raise ApiError(400, f"body: not valid JSON: {exc}") from None
    if header_key is None:
        key = body.get("writeKey") if isinstance(body, dict) else None
        if not isinstance(key, str) or not key:
            raise ApiError(401, _MISSING_KEY)
        _check_key(key, keys)
    if not isinstance(body, dict):
        raise ApiError(400, f"body: expected a JSON object, got {type(body).__name__}")
    return body, len(raw)


def _header_key(header: str | None) -> str | None:
    """The write key an ``Authorization`` header carries (Basic user name or Bearer token)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "Authorization: not valid HTTP Basic credentials") from None
        return decoded.partition(":")[0]
    raise ApiError(401, "Authorization: expected Basic or Bearer")


def _check_key(key: str, keys: tuple[bytes, ...]) -> None:
    """Compare with every configured key in constant time; 401 when none matches."""
    given = key.encode("utf-8", "replace")
    matched = False
    for known in keys:
        matched |= hmac.compare_digest(given, known)
    if not matched:
        raise ApiError(401, "invalid write key")


async def _read(request: web.Request, limit: int) -> bytes:
    """The body (aiohttp undoes ``Content-Encoding: gzip`` as it streams), refused with 413 beyond
    ``limit`` bytes: the size on the wire and the decompressed size are both capped."""
    too_large = ApiError(413, f"body: larger than {limit // 1024} KB", close=True)
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise ApiError(415, f"Content-Encoding: {encoding!r} is not supported (use gzip)")
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except RequestPayloadError:  # a broken compressed stream, or a body cut short
        raise ApiError(400, f"body: cannot be read as {encoding}", close=True) from None
    return b"".join(chunks)


def _parse(body: Any, received: datetime, call_type: str | None) -> Call:
    try:
        return parse_call(body, received, call_type)
    except CallError as exc:
        raise ApiError(400, str(exc)) from None


def _parse_batch(
    items: list[Any], received: datetime, check_sizes: bool = True
) -> tuple[_Outcome, list[tuple[int, Call]]]:
    """The calls of a batch that are well formed; the others rejected with their index.

    ``check_sizes``: measure each call against :data:`CALL_MAX` (not needed when the whole body is
    within it)."""
    outcome = _Outcome()
    calls: list[tuple[int, Call]] = []
    for index, item in enumerate(items):
        if check_sizes and len(json.dumps(item, ensure_ascii=False, separators=_COMPACT).encode()) > CALL_MAX:
            outcome.reject(index, f"call: larger than {CALL_MAX // 1024} KB")
            continue
        try:
            calls.append((index, parse_call(item, received)))
        except CallError as exc:
            outcome.reject(index, str(exc))
    return outcome, calls


def _job(dialect: Dialect, calls: list[tuple[int, Call]]) -> Callable[[Connection], _Outcome]:
    """The writes of ``calls`` as a function of the connection: customers first (so a batch may
    identify, then track), then the events.

    The events are converted to their stored form here, before any transaction or lock, so that
    the database's time is spent on the statements alone."""
    customers = [call.customer for _i, call in calls if call.customer is not None]
    events = [(index, call.event) for index, call in calls if call.event is not None]
    prepared = prepare_events_once(dialect, events) if events else None

    def write(conn: Connection) -> _Outcome:
        outcome = _Outcome()  # made here: a job that is run again starts afresh
        if customers:
            rows = combine_customers(customers)
            with_attributes = [row["id"] for row in rows if "attributes" in row]
            stored = stored_attributes(conn, with_attributes) if with_attributes else {}
            write_customers(conn, merge_attributes(rows, stored))
        if prepared is not None:
            write_prepared_events(conn, prepared, lambda i, reason: outcome.reject(i, f"userId: {reason}"))
        outcome.accepted = len(calls) - len(outcome.rejected)
        return outcome

    return write


def _in_transaction(engine: Engine, job: Callable[[Connection], _Outcome]) -> _Outcome:
    with engine.begin() as conn:
        return job(conn)
