"""Signed, per-customer unsubscribe links (the token is an HMAC of customer and channel)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def token(secret: str, customer_id: str, channel: str) -> str:
    payload = f"{customer_id}\x1f{channel}".encode()
    signature = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:18]
    return f"{_b64(payload)}.{_b64(signature)}"


def verify(secret: str, value: str) -> tuple[str, str] | None:
    """(customer id, channel) when ``value`` was signed with ``secret``, else None."""
    try:
        payload_text, _ = value.split(".", 1)
        payload = base64.urlsafe_b64decode(payload_text + "=" * (-len(payload_text) % 4))
        customer_id, channel = payload.decode().split("\x1f", 1)
    except (ValueError, UnicodeDecodeError):
        return None
    if not hmac.compare_digest(token(secret, customer_id, channel), value):
        return None
    return customer_id, channel


def unsubscribe_url(base_url: str, secret: str, customer_id: str, channel: str = "email") -> str:
    return f"{base_url.rstrip('/')}/unsubscribe/{quote(token(secret, customer_id, channel))}"
