"""Twilio's SMS webhooks: ``POST /providers/twilio/status`` and ``POST /providers/twilio/inbound``.

**Status callbacks** (the ``StatusCallback`` the SMS channel sends with each message) carry
``MessageSid``, ``MessageStatus`` and, for a message that did not arrive, ``ErrorCode``:
``delivered`` is recorded as ``delivered``, ``undelivered`` and ``failed`` as ``failed`` with the error
code as the reason, every other status (queued, sending, sent, read, ...) as the message's provider
status. A callback is matched by ``MessageSid`` only, never by the recipient's number: a status is
not guessed onto another message of the same customer. Twilio may send a callback again; the same
``MessageSid`` and ``MessageStatus`` is recorded once. The answer is 200 with an empty body.

**Incoming messages** (the number's "A message comes in" webhook) are recorded as ``replied`` from
the customer with that phone number (``From``): STOP and the other opt-out words suppress SMS, START
lifts it, HELP is recorded. Twilio's ``OptOutType`` (Advanced Opt-Out: STOP, START, HELP, also for
its custom keywords) wins over the word in the body. The answer is an empty TwiML ``<Response/>``:
Twilio sends no reply of ours (its own opt-out replies are configured in Twilio).

**Authentication** is Twilio's request signature: ``X-Twilio-Signature`` is
``base64(HMAC-SHA1(auth token, URL + each POST parameter's name and value, sorted by name))``, where
the URL is the one Twilio called: ``AUTOMATION_PUBLIC_URL`` + the request's path and query as they
arrived (never the ``Host`` header, which the sender chooses). Like Twilio's own helpers, the URL is
accepted with and without the scheme's default port. Without ``AUTOMATION_SMS_AUTH_TOKEN`` both
routes answer 404 (off, never open); a missing or wrong signature is 403 with a JSON reason and
changes nothing; a body over :data:`BODY_MAX` bytes is 413.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from aiohttp import web
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from automation.channels.sms import STATUS_CALLBACK_PATH
from automation.feedback.record import Outcome, Report, record
from automation.masking import mask_phone, mask_text

log = logging.getLogger("automation.web.twilio")

STATUS_PATH = STATUS_CALLBACK_PATH
INBOUND_PATH = "/providers/twilio/inbound"
SIGNATURE_HEADER = "X-Twilio-Signature"
#: Present when a Twilio Webhooks Rule signs with its SharedKey instead of the auth token.
SHARED_KEY_HEADER = "X-Twilio-Webhooks-Signature-Settings"
#: Bytes of a webhook's body: Twilio's are a few hundred; anything larger is refused with 413.
BODY_MAX = 64 * 1024
_MAX_FIELDS = 200
_READ_CHUNK = 16 * 1024
_FORM = "application/x-www-form-urlencoded"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

#: ``MessageStatus`` values recorded as ``failed``.
FAILED_STATUSES = frozenset({"undelivered", "failed"})
_Keyword = Literal["stop", "start", "help"]
_OPT_OUT_TYPES: dict[str, _Keyword] = {"STOP": "stop", "START": "start", "HELP": "help"}

Params = Sequence[tuple[str, str]]


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def signature(auth_token: str, url: str, params: Params) -> str:
    """Twilio's request signature of ``url`` and the POST ``params`` (name, value pairs)."""
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    signed = url
    for name in sorted(values):  # a repeated name: each distinct value, sorted (as Twilio's helpers do)
        signed += "".join(name + value for value in sorted(values[name]))
    mac = hmac.new(auth_token.encode("utf-8"), signed.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def signature_valid(auth_token: str, url: str, params: Params, given: str) -> bool:
    """Whether ``given`` is the signature of ``url`` (with or without the default port) and ``params``;
    compared in constant time."""
    expected = [signature(auth_token, candidate, params) for candidate in _url_variants(url)]
    matched = False
    for value in expected:
        matched |= hmac.compare_digest(value.encode("ascii"), given.strip().encode("utf-8", "replace"))
    return matched


def _url_variants(url: str) -> list[str]:
    """``url`` with and without its scheme's default port (Twilio signs either form)."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    try:
        port = parts.port
    except ValueError:
        return [url]
    if port is None and default is not None:
        with_port = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}"))
        return [url, with_port]
    if port is not None and port == default:
        return [url, urlunsplit(parts._replace(netloc=f"{prefix}{host}"))]
    return [url]


def routes(
    engine: Engine, auth_token: str, public_url: str, clock: Callable[[], datetime]
) -> list[web.RouteDef]:
    """The two webhook routes; without ``auth_token`` they answer 404. ``public_url``: where Twilio
    reaches ``automation serve`` (``AUTOMATION_PUBLIC_URL``), the base of the signed URL."""
    base = public_url.strip().rstrip("/")

    async def store(report: Report) -> Outcome:
        def job() -> Outcome:
            with engine.begin() as conn:
                return record(conn, report, clock())

        try:
            return await asyncio.to_thread(job)
        except DBAPIError as exc:
            log.warning("the database refused a Twilio webhook: %s", mask_text(str(exc.orig)))
            raise _Refused(503, "the database refused the webhook; send it again later") from None

    async def status(request: web.Request) -> web.Response:
        try:
            params = await _verified_params(request, auth_token, base)
            report = status_report(params, clock())
            outcome = await store(report)
        except _Refused as exc:
            return _refused(request, exc)
        log.debug("Twilio status %s for %s: %s", report.status, report.provider_id, outcome)
        return web.Response(status=200)

    async def inbound(request: web.Request) -> web.Response:
        try:
            params = await _verified_params(request, auth_token, base)
            report = inbound_report(params, clock())
            outcome = await store(report)
        except _Refused as exc:
            return _refused(request, exc)
        log.debug("Twilio inbound SMS from %s: %s", mask_phone(report.address or ""), outcome)
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")

    async def off(request: web.Request) -> web.Response:
        reason = "not found: Twilio webhooks are off (no AUTOMATION_SMS_AUTH_TOKEN configured)"
        return web.json_response({"error": reason}, status=404)

    if not auth_token:
        return [web.post(STATUS_PATH, off), web.post(INBOUND_PATH, off)]
    return [web.post(STATUS_PATH, status), web.post(INBOUND_PATH, inbound)]


def status_report(params: Params, now: datetime) -> Report:
    """The fact a status callback reports (400 without ``MessageSid`` or ``MessageStatus``)."""
    form = _first_values(params)
    sid, status = _required(form, "MessageSid"), _required(form, "MessageStatus").lower()
    error_code = form.get("ErrorCode") or None
    kind: Literal["delivered", "failed", "status"]
    if status == "delivered":
        kind = "delivered"
    elif status in FAILED_STATUSES:
        kind = "failed"
    else:
        kind = "status"
    detail = {k: form[k] for k in ("To", "From", "ErrorCode", "AccountSid") if form.get(k)}
    return Report(
        source="twilio",
        channel="sms",
        kind=kind,
        occurred_at=now,
        unique=f"status:{sid}:{status}",
        provider_id=sid,
        status=status,
        reason=error_code if kind == "failed" else None,
        detail=detail,
    )


def inbound_report(params: Params, now: datetime) -> Report:
    """The reply an incoming message is (400 without ``MessageSid`` or ``From``)."""
    form = _first_values(params)
    sid, sender = _required(form, "MessageSid"), _required(form, "From")
    opt_out = (form.get("OptOutType") or "").strip().upper()
    detail = {k: form[k] for k in ("To", "OptOutType", "AccountSid") if form.get(k)}
    return Report(
        source="twilio",
        channel="sms",
        kind="replied",
        occurred_at=now,
        unique=f"inbound:{sid}",
        address=sender,
        body=form.get("Body", ""),
        keyword=_OPT_OUT_TYPES.get(opt_out),
        detail=detail | {"message_sid": sid},
    )


def _first_values(params: Params) -> dict[str, str]:
    form: dict[str, str] = {}
    for name, value in params:
        form.setdefault(name, value)
    return form


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise _Refused(400, f"{name}: missing")
    return value


async def _verified_params(request: web.Request, auth_token: str, base: str) -> list[tuple[str, str]]:
    """The POST parameters of a request whose body fits and whose signature is Twilio's."""
    raw = await _read(request)
    content_type = request.content_type.lower()
    if content_type != _FORM:
        raise _Refused(415, f"Content-Type: expected {_FORM}, got {content_type or 'none'}")
    try:
        params = parse_qsl(
            raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=_MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise _Refused(400, "body: not a form of UTF-8 text") from None
    given = request.headers.get(SIGNATURE_HEADER, "")
    if not given.strip():
        raise _Refused(403, f"missing {SIGNATURE_HEADER}")
    if request.headers.get(SHARED_KEY_HEADER):
        raise _Refused(403, f"{SHARED_KEY_HEADER}: a Webhooks Rule's shared key is not supported")
    if not signature_valid(auth_token, base + request.raw_path, params, given):
        raise _Refused(403, f"invalid {SIGNATURE_HEADER} (is AUTOMATION_PUBLIC_URL the URL Twilio calls?)")
    return params


async def _read(request: web.Request) -> bytes:
    too_large = _Refused(413, f"body: larger than {BODY_MAX // 1024} KB")
    if request.content_length is not None and request.content_length > BODY_MAX:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_READ_CHUNK):
        size += len(chunk)
        if size > BODY_MAX:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _refused(request: web.Request, exc: _Refused) -> web.Response:
    """One warning line (no signature, no number), then the JSON error."""
    log.warning("%s %s refused (%d): %s", request.method, request.path, exc.status, exc.reason)
    response = web.json_response({"error": exc.reason}, status=exc.status)
    if exc.status == 413:
        response.force_close()  # the rest of the body is not read
    return response


__all__ = [
    "BODY_MAX",
    "EMPTY_TWIML",
    "INBOUND_PATH",
    "STATUS_PATH",
    "inbound_report",
    "routes",
    "signature",
    "signature_valid",
    "status_report",
]
