"""Signed webhooks, following the Standard Webhooks convention (https://www.standardwebhooks.com).

Every request is a ``POST`` of the rendered JSON body, byte for byte as signed, with::

    Content-Type: application/json
    webhook-id: msg_<32 hex>           stable per message: derived from the idempotency key, so a retry
                                       carries the same id and a receiver can drop duplicates
    webhook-timestamp: <unix seconds>  when this attempt was signed
    webhook-signature: v1,<base64>     base64(HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>"))
    Idempotency-Key: <idempotency key>

The secret is ``whsec_<base64>``, as the convention serialises symmetric secrets: the key is the decoded
bytes, which the specification wants random and 24 to 64 bytes long. Nothing else is accepted, so every
receiver using a Standard Webhooks library (``standardwebhooks`` on PyPI and its siblings) verifies what we
send. Receivers check requests with :func:`verify`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json as jsonlib
import logging
import re
import time
from collections.abc import Awaitable, Mapping
from datetime import datetime

import httpx

from automation.channels.base import Delivery, DeliveryResult
from automation.channels.http import Answer, raise_for_delivery, send_errors
from automation.errors import ConfigError, PermanentDeliveryError

__all__ = [
    "MAX_KEY_BYTES",
    "MIN_KEY_BYTES",
    "NEW_SECRET_COMMAND",
    "SECRET_PREFIX",
    "WebhookChannel",
    "message_id",
    "secret_key",
    "sign",
    "signature_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24  # the specification: "at least 24 bytes (192 bits, 512 maximum)"
MAX_KEY_BYTES = 64
NEW_SECRET_COMMAND = (
    "python -c \"import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
)
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
DEFAULT_TOLERANCE = 300  # seconds a receiver accepts between the signed timestamp and its clock
_URL_CACHE = 256  # parsed webhook URLs kept per channel

log = logging.getLogger(__name__)


def secret_key(secret: str, *, source: str = "the webhook secret") -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret: the decoded bytes (24 to 64 of them).

    Anything else raises ``ConfigError`` naming ``source`` and saying how to make a good secret: a
    receiver's Standard Webhooks library decodes every secret this way, so a secret it would read
    differently (no prefix, URL-safe base64, stray characters) or a key too short for the specification
    would make every signature fail on the other side. Base64 padding may be left out, as the libraries
    accept that too."""
    if not secret.startswith(SECRET_PREFIX):
        shown = "is empty" if not secret else "does not start with whsec_"
        raise _bad_secret(source, shown)
    encoded = secret[len(SECRET_PREFIX) :]
    if not _BASE64.fullmatch(encoded):
        raise _bad_secret(source, "is not standard base64 after whsec_")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _bad_secret(source, "is not standard base64 after whsec_") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise _bad_secret(source, f"decodes to {len(key)} bytes")
    return key


def _bad_secret(source: str, what: str) -> ConfigError:
    """The one error for every unusable secret: what is wrong, the rule, and a command that makes one."""
    return ConfigError(
        f"{source} {what}: it must be whsec_ followed by the base64 of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} "
        f"random bytes (Standard Webhooks); make one with: {NEW_SECRET_COMMAND}"
    )


def message_id(idempotency_key: str) -> str:
    """The ``webhook-id`` of a message: the same for every attempt of the same idempotency key."""
    return "msg_" + hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``"<msg_id>.<timestamp>.<body>"``; ``secret`` is a secret string
    (see :func:`secret_key`) or the key bytes."""
    key = secret if isinstance(secret, bytes) else secret_key(secret)
    content = f"{msg_id}.{timestamp}.".encode() + _as_bytes(body)
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(
    secret: str | bytes, msg_id: str, body: bytes | str, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one request (timestamp defaults to now)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: float = DEFAULT_TOLERANCE,
    now: datetime | float | None = None,
) -> bool:
    """True when ``headers`` carry a valid Standard Webhooks signature of ``body`` made with ``secret``
    and a timestamp within ``tolerance`` seconds of ``now`` (default: the current time).

    Header names are matched case-insensitively; ``webhook-signature`` may hold several space-separated
    signatures (during a secret rotation) and one valid ``v1`` signature is enough. The comparison is
    constant-time. Pass the raw request body: re-serialised JSON will not match.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        return False
    try:
        timestamp = int(stamp.strip())
    except ValueError:
        return False
    if now is None:
        current = time.time()
    elif isinstance(now, datetime):
        current = now.timestamp()
    else:
        current = float(now)
    if abs(current - timestamp) > tolerance:
        return False
    try:
        expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1].encode("ascii")
    except ConfigError:
        return False
    valid = False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, value.encode("ascii", "replace")):
            valid = True  # no early return: every candidate is compared
    return valid


class WebhookChannel:
    """The ``webhook`` channel: POSTs ``delivery.rendered.body`` to ``delivery.url``, signed.

    ``provider_id`` is the receiver's JSON ``id`` when it answers with one, else the ``webhook-id``.
    ``client`` comes from :func:`automation.channels.http.make_client` and is closed by whoever created
    it (pass ``owns_client=True`` to have :meth:`aclose` close it)."""

    name = "webhook"

    def __init__(self, client: httpx.AsyncClient, *, secret: str, owns_client: bool = False) -> None:
        self._client = client
        self._key = secret_key(secret)
        self._mac = hmac.new(self._key, digestmod=hashlib.sha256)
        self._owns_client = owns_client
        self._urls: dict[str, tuple[httpx.URL, list[tuple[bytes, bytes]]]] = {}
        self._defaults: tuple[httpx.Headers, dict[str, str]] | None = None

    def body_of(self, delivery: Delivery) -> bytes:
        """The exact bytes to send: the rendered body, or the rendered JSON value serialised."""
        rendered = delivery.rendered
        if rendered.body is not None:
            return rendered.body.encode("utf-8")
        if rendered.json is not None:
            return jsonlib.dumps(rendered.json, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        raise PermanentDeliveryError("the rendered webhook has no body")

    def _target(self, url: str) -> tuple[httpx.URL, list[tuple[bytes, bytes]]]:
        """The parsed URL and its ``Host`` header (parsed once per distinct URL: a playbook has few
        webhook targets)."""
        target = self._urls.get(url)
        if target is None:
            parsed = httpx.URL(url)
            target = (parsed, [(b"Host", parsed.netloc)] if parsed.host else [])
            if len(self._urls) >= _URL_CACHE:
                self._urls.clear()
            self._urls[url] = target
        return target

    def _sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """:func:`sign` with this channel's key, from a keyed HMAC prepared once."""
        mac = self._mac.copy()
        mac.update(f"{msg_id}.{timestamp}.".encode())
        mac.update(body)
        return "v1," + base64.b64encode(mac.digest()).decode("ascii")

    async def send(self, delivery: Delivery) -> DeliveryResult:
        """POST one signed webhook; 2xx is success, see :func:`raise_for_delivery` for the rest."""
        url = delivery.url
        if not url:
            raise PermanentDeliveryError("no webhook URL")
        body = self.body_of(delivery)
        key = delivery.idempotency_key
        msg_id = message_id(key)
        timestamp = int(time.time())
        with send_errors("webhook"):
            answer = await self._post(url, msg_id, timestamp, self._sign(msg_id, timestamp, body), key, body)
        if not 200 <= answer.status < 300:
            raise_for_delivery(answer.response())
        provider_id = msg_id
        content = answer.body
        # a JSON object with an "id" key spells it "id" or with an escape: without either, none is read
        if content and (b'"id"' in content or b"\\" in content):
            try:
                payload = jsonlib.loads(content)
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                receiver_id = payload.get("id")
                if (
                    isinstance(receiver_id, str | int)
                    and not isinstance(receiver_id, bool)
                    and receiver_id != ""
                ):
                    provider_id = str(receiver_id)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("webhook %s accepted by %s", msg_id, self._target(url)[0].host)
        return DeliveryResult(provider_id=provider_id)

    def _post(
        self, url: str, msg_id: str, timestamp: int, signature: str, key: str, body: bytes
    ) -> Awaitable[Answer]:
        """POST with the client's default headers and the signed ones: straight through aiohttp when the
        client offers it (:func:`automation.channels.http.make_client`'s does), else through httpx. Not
        a coroutine itself: it hands back the transport's, one frame less for every resumption."""
        client = self._client
        fast = getattr(client, "post_bytes", None)
        if fast is not None:
            defaults = self._defaults
            if defaults is None or defaults[0] is not client.headers:
                # aiohttp decodes gzip and deflate itself: ask for nothing else
                merged = {**dict(client.headers.items()), "accept-encoding": "gzip, deflate"}
                defaults = self._defaults = (client.headers, merged)
            headers = defaults[1].copy()
            headers["webhook-id"] = msg_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = signature
            headers["Content-Type"] = "application/json"
            headers["Idempotency-Key"] = key
            pending: Awaitable[Answer] | None = fast(url, headers, body)
            if pending is not None:
                return pending
        signed = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        }
        return self._post_httpx(url, signed, body)

    async def _post_httpx(self, url: str, signed: dict[str, str], body: bytes) -> Answer:
        """The same request through httpx (a client without :meth:`post_bytes`, or behind a proxy)."""
        client = self._client
        # A complete request: Host, the client's default headers, ours and Content-Length, as httpx
        # would arrange them; built from bytes, it skips httpx's header and body preparation.
        target, host = self._target(url)
        request = httpx.Request(
            "POST",
            target,
            headers=[
                *host,
                *client.headers.raw,
                *((name.encode("ascii"), value.encode("utf-8")) for name, value in signed.items()),
                (b"Content-Length", str(len(body)).encode("ascii")),
            ],
            stream=httpx.ByteStream(body),
            extensions={"timeout": client.timeout.as_dict()},
        )
        request.read()
        direct = getattr(client, "send_direct", None)
        response = await direct(request) if direct is not None else await client.send(request)
        return Answer(response.status_code, response.headers, response.content, url)

    async def aclose(self) -> None:
        """Close the HTTP client if this channel owns it."""
        if self._owns_client:
            await self._client.aclose()
