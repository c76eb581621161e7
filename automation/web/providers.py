"""The email providers' event webhooks of ``automation serve``: ``POST /providers/sendgrid/events``,
``/providers/postmark/events`` and ``/providers/generic/events``.

Each is off (404) until its secret is configured, and never open:

* SendGrid: the Signed Event Webhook's ECDSA signature, checked with
  ``AUTOMATION_SENDGRID_WEBHOOK_PUBLIC_KEY``; a missing or wrong signature, or a timestamp more than
  10 minutes from our clock, is 403 and changes nothing;
* Postmark: HTTP Basic auth (``AUTOMATION_POSTMARK_WEBHOOK_USER`` and
  ``AUTOMATION_POSTMARK_WEBHOOK_PASSWORD``, put in the webhook URL at Postmark); wrong is 401;
* generic JSON: ``Authorization: Bearer <AUTOMATION_FEEDBACK_TOKEN>``; wrong is 401.

The body (at most :data:`BODY_MAX` bytes, else 413) is read whole, checked, turned into reports by
:mod:`automation.feedback.sendgrid`, :mod:`~automation.feedback.postmark` or
:mod:`~automation.feedback.generic`, and recorded by :func:`automation.feedback.record.record`, all of a
request's reports in one transaction, before the answer: a 200 means the facts are stored. A report
that cannot be read is refused with its index and reason while the others are recorded; a report of a
message we never sent is answered 200 as well (``unmatched``), so the provider stops sending it. When
the database refuses the transaction the answer is 503 and nothing is stored: the provider sends the
request again, and what had been stored before is a duplicate. Every error is JSON ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError

from automation.db.tables import OUTBOX
from automation.errors import ConfigError
from automation.feedback import generic, postmark, sendgrid
from automation.feedback.fields import ReportError
from automation.feedback.record import Report, record
from automation.ingest.rows import json_loads, json_type
from automation.masking import mask_text

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

    from automation.config import Settings

log = logging.getLogger("automation.web.providers")

#: Bytes of a request's body: SendGrid posts batches of up to about 768 KB.
BODY_MAX = 1024 * 1024
_READ_CHUNK = 64 * 1024
_OUTCOMES = ("recorded", "duplicate", "unmatched")


@dataclass(frozen=True)
class ProviderWebhooks:
    """The secrets of the providers' webhooks; an empty one turns its endpoint off."""

    sendgrid_key: EllipticCurvePublicKey | None = None
    postmark_user: str = ""
    postmark_password: str = field(default="", repr=False)
    feedback_token: str = field(default="", repr=False)
    sendgrid_tolerance: timedelta = sendgrid.TOLERANCE

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderWebhooks:
        """From ``AUTOMATION_SENDGRID_WEBHOOK_PUBLIC_KEY``, ``AUTOMATION_POSTMARK_WEBHOOK_USER`` and
        ``_PASSWORD`` and ``AUTOMATION_FEEDBACK_TOKEN``; ConfigError when a key does not load or only
        one of Postmark's user and password is set."""
        key = None
        if settings.sendgrid_webhook_public_key:
            try:
                key = sendgrid.load_public_key(settings.sendgrid_webhook_public_key)
            except ValueError as exc:
                raise ConfigError(f"AUTOMATION_SENDGRID_WEBHOOK_PUBLIC_KEY: {exc}") from None
        user, password = settings.postmark_webhook_user, settings.postmark_webhook_password
        if bool(user) != bool(password):
            names = "AUTOMATION_POSTMARK_WEBHOOK_USER and AUTOMATION_POSTMARK_WEBHOOK_PASSWORD"
            raise ConfigError(f"{names}: set both or neither")
        return cls(key, user, password, settings.feedback_token)

    @property
    def postmark_on(self) -> bool:
        return bool(self.postmark_user and self.postmark_password)

    def served(self) -> list[str]:
        """What is on, for the line ``serve`` prints."""
        on = [("sendgrid", self.sendgrid_key is not None), ("postmark", self.postmark_on),
              ("generic", bool(self.feedback_token))]  # fmt: skip
        return [f"/providers/{name}/events" for name, active in on if active]


class _Refused(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None, close: bool = False):
        super().__init__(reason)
        self.status, self.reason, self.headers, self.close = status, reason, headers or {}, close


@dataclass
class _Batch:
    """A request's reports (with their index) and the ones refused."""

    reports: list[tuple[int, Report]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def add(self, index: int, make: Callable[[], Report]) -> None:
        try:
            self.reports.append((index, make()))
        except ReportError as exc:
            self.rejected.append({"index": index, "reason": str(exc)})


def routes(engine: Engine, hooks: ProviderWebhooks, clock: Callable[[], datetime]) -> list[web.RouteDef]:
    """The three routes, each answering 404 while its secret is not configured."""

    async def store(batch: _Batch) -> web.Response:
        try:
            counts = await asyncio.to_thread(_record_all, engine, batch.reports, clock())
        except DBAPIError as exc:
            log.warning("the database refused provider reports: %s", mask_text(str(exc.orig)))
            raise _Refused(503, "the database refused the reports; send them again later") from None
        answer: dict[str, Any] = {"success": not batch.rejected, "accepted": len(batch.reports)}
        answer.update({name: counts[name] for name in _OUTCOMES})
        answer["rejected"] = batch.rejected
        return web.json_response(answer)

    async def sendgrid_events(request: web.Request) -> web.Response:
        assert hooks.sendgrid_key is not None
        raw = await _read(request)
        why = sendgrid.verify(
            hooks.sendgrid_key,
            raw,
            request.headers.get(sendgrid.SIGNATURE_HEADER),
            request.headers.get(sendgrid.TIMESTAMP_HEADER),
            clock(),
            hooks.sendgrid_tolerance,
        )
        if why is not None:
            raise _Refused(403, f"not signed by SendGrid: {why}")
        events = _json(raw)
        if not isinstance(events, list):
            raise _Refused(400, f"body: expected a JSON array of events, got {json_type(events)}")
        batch = _Batch()
        for index, event in enumerate(events):
            batch.add(index, partial(sendgrid.report, event))
        return await store(batch)

    async def postmark_events(request: web.Request) -> web.Response:
        _basic(request, hooks.postmark_user, hooks.postmark_password)
        body = _json(await _read(request))
        try:
            one = postmark.report(body, clock())
        except ReportError as exc:
            raise _Refused(400, str(exc)) from None
        return await store(_Batch(reports=[(0, one)]))

    async def generic_events(request: web.Request) -> web.Response:
        _bearer(request, hooks.feedback_token)
        body = _json(await _read(request))
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            raise _Refused(400, 'body: expected {"events": [...]}')
        if len(events) > generic.EVENTS_MAX:
            raise _Refused(413, f"events: more than {generic.EVENTS_MAX} in one request")
        received = clock()
        batch = _Batch()
        for index, event in enumerate(events):
            batch.add(index, partial(generic.report, event, received))
        return await store(batch)

    def guarded(
        handler: Callable[[web.Request], Any], active: bool, variable: str
    ) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            if not active:
                return _error(404, f"not found: this webhook is off (no {variable} configured)")
            try:
                response: web.Response = await handler(request)
            except _Refused as exc:
                log.warning("%s %s refused (%d): %s", request.method, request.path, exc.status,
                            mask_text(exc.reason))  # fmt: skip
                return _error(exc.status, exc.reason, exc.headers, exc.close)
            return response

        return handle

    return [
        web.post(
            "/providers/sendgrid/events",
            guarded(
                sendgrid_events, hooks.sendgrid_key is not None, "AUTOMATION_SENDGRID_WEBHOOK_PUBLIC_KEY"
            ),
        ),
        web.post(
            "/providers/postmark/events",
            guarded(postmark_events, hooks.postmark_on, "AUTOMATION_POSTMARK_WEBHOOK_USER"),
        ),
        web.post(
            "/providers/generic/events",
            guarded(generic_events, bool(hooks.feedback_token), "AUTOMATION_FEEDBACK_TOKEN"),
        ),
    ]


def _error(
    status: int, reason: str, headers: dict[str, str] | None = None, close: bool = False
) -> web.Response:
    response = web.json_response({"error": reason}, status=status, headers=headers)
    if close:
        response.force_close()
    return response


async def _read(request: web.Request) -> bytes:
    """The raw body, refused with 413 beyond :data:`BODY_MAX` bytes (as sent and as read)."""
    too_large = _Refused(413, f"body: larger than {BODY_MAX // 1024} KB", close=True)
    if request.content_length is not None and request.content_length > BODY_MAX:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.read(_READ_CHUNK):
            size += len(chunk)
            if size > BODY_MAX:
                raise too_large
            chunks.append(chunk)
    except RequestPayloadError:
        raise _Refused(400, "body: cannot be read", close=True) from None
    return b"".join(chunks)


def _json(raw: bytes) -> Any:
    try:
        return json_loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Refused(400, f"body: not valid JSON: {exc}") from None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


def _basic(request: web.Request, user: str, password: str) -> None:
    """HTTP Basic credentials, compared in constant time; 401 with a challenge when wrong."""
    challenge = {"WWW-Authenticate": 'Basic realm="automation", charset="UTF-8"'}
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        raise _Refused(401, "missing HTTP Basic credentials", challenge)
    try:
        given_user, _, given_password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _Refused(401, "Authorization: not valid HTTP Basic credentials", challenge) from None
    if not (_same(given_user, user) & _same(given_password, password)):
        raise _Refused(401, "wrong user name or password", challenge)


def _bearer(request: web.Request, token: str) -> None:
    challenge = {"WWW-Authenticate": "Bearer"}
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _Refused(401, "missing Authorization: Bearer <token>", challenge)
    if not _same(value.strip(), token):
        raise _Refused(401, "wrong token", challenge)


def _record_all(engine: Engine, reports: list[tuple[int, Report]], now: datetime) -> Counter[str]:
    """Record every report in one transaction; how many were recorded, duplicates and unmatched."""
    counts: Counter[str] = Counter()
    if not reports:
        return counts
    with engine.begin() as conn:
        for _index, report in reports:
            counts[record(conn, _by_message_id(conn, report), now)] += 1
    return counts


def _by_message_id(conn: Connection, report: Report) -> Report:
    """A SendGrid event without our key names the Message-ID we sent (``smtp-id``): the outbox row
    whose provider id it is, when there is one."""
    smtp_id = report.detail.get("smtp_id")
    if report.idempotency_key or not isinstance(smtp_id, str):
        return report
    found = conn.execute(select(OUTBOX.c.id).where(OUTBOX.c.provider_id == smtp_id).limit(1)).scalar()
    return replace(report, outbox_id=int(found)) if found is not None else report
