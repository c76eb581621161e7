"""The local outbox folder: every channel writes files instead of talking to a provider.

This is the default when no SMTP (or SMS) URL is configured, so a new installation can run its
playbooks end to end and look at what would have been sent::

    <dir>/email/<name>.eml      the same MIME message the SMTP channel sends (open it in a mail program)
    <dir>/sms/<name>.json       {"channel", "to", "rendered": {"body", "encoding", "segments"}, ...}
    <dir>/webhook/<name>.json   {"channel", "url", "rendered": {"body", "json"}, ...}
    <dir>/task/<name>.json      {"channel", "to" (assignee), "due", "rendered": {"title", "body"}, ...}

``<name>`` comes from the idempotency key: its first 60 characters made file-name safe, ``-`` and 12
hex digits of its SHA-256 (so two keys that clean up to the same text still get two files). Sending
the same delivery again rewrites the same file. Files are written atomically (a temporary file in the
same folder, then ``os.replace``), so a reader never sees half a message. The result's
``provider_id`` is the file's path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from automation.channels.base import Delivery, DeliveryResult
from automation.channels.mime import build_email, envelope_address, message_id
from automation.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from automation.messages.store import CHANNELS

__all__ = ["FileOutbox", "file_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PREFIX = 60


def file_name(idempotency_key: str) -> str:
    """A safe, stable file name stem for an idempotency key: ``<cleaned prefix>-<12 hex digits>``."""
    cleaned = _UNSAFE.sub("_", idempotency_key)[:_PREFIX].strip("._") or "message"
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:12]
    return f"{cleaned}-{digest}"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class FileOutbox:
    """A channel for every channel name that writes each message to a file under ``directory``.

    ``from_address`` and ``domain`` are used as by the SMTP channel (From header, Message-ID);
    ``domain`` defaults to the sender's domain. ``clock`` gives the email Date header.
    """

    name = "filebox"

    def __init__(
        self,
        directory: Path,
        *,
        from_address: str,
        domain: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        try:
            sender = envelope_address(from_address)
        except ValueError:
            raise ConfigError(
                f"the sender {from_address!r} is not an email address (set AUTOMATION_EMAIL_FROM)"
            ) from None
        self.directory = Path(directory)
        self.from_address = from_address
        self.domain = domain or sender.rsplit("@", 1)[1]
        try:
            message_id("check", self.domain)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._clock = clock or (lambda: datetime.now(UTC))

    def path_for(self, delivery: Delivery) -> Path:
        """Where ``delivery`` is (or would be) written."""
        suffix = ".eml" if delivery.channel == "email" else ".json"
        return self.directory / delivery.channel / (file_name(delivery.idempotency_key) + suffix)

    def render(self, delivery: Delivery) -> bytes:
        """The file content for ``delivery``; PermanentDeliveryError when it cannot be delivered."""
        if delivery.channel not in CHANNELS:
            raise PermanentDeliveryError(f"unknown channel {delivery.channel!r}")
        if delivery.channel == "email":
            message = build_email(
                delivery, from_address=self.from_address, domain=self.domain, now=self._clock()
            )
            return message.as_bytes()
        if delivery.channel == "sms" and not delivery.to:
            raise PermanentDeliveryError("no phone number")
        if delivery.channel == "webhook" and not delivery.url:
            raise PermanentDeliveryError("no webhook URL")
        record = {
            "channel": delivery.channel,
            "idempotency_key": delivery.idempotency_key,
            "message_id": delivery.message_id,
            "customer_id": delivery.customer_id,
            "to": delivery.to,
            "url": delivery.url,
            "due": delivery.due,
            "rendered": delivery.rendered.as_payload(),
            "metadata": delivery.metadata,
        }
        text = json.dumps(record, indent=2, ensure_ascii=False, sort_keys=False, default=_json_default)
        return (text + "\n").encode("utf-8")

    async def send(self, delivery: Delivery) -> DeliveryResult:
        """Write the message's file (replacing an earlier copy); provider_id is its path."""
        data = self.render(delivery)
        path = self.path_for(delivery)
        try:
            await asyncio.to_thread(_write_atomic, path, data)
        except OSError as exc:
            # A full disk or a permission problem is about the folder, not the message: retry later.
            raise TransientDeliveryError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return DeliveryResult(provider_id=str(path))

    async def aclose(self) -> None:
        """Nothing to close: files are written and closed per message."""
