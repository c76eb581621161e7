"""The email a delivery becomes: one MIME builder shared by the SMTP channel and the file outbox.

Headers set on every message:

* ``From``, ``To``, ``Subject`` (non-ASCII text is RFC 2047 encoded), ``Date`` (RFC 5322, from ``now``);
  a Subject that contains ``=?`` is encoded whole, so text from customer data that looks like an encoded
  word (``=?utf-8?q?=41dmin?=``) reads as typed instead of being decoded by mail clients
* ``Message-ID``: ``<first 32 hex digits of sha256(idempotency key)@domain>``, so a message sent again
  after a crash carries the same id and receivers can drop the repeat
* ``X-Automation-Key``: the idempotency key, for tracing a received mail back to its outbox row; the
  same key for the providers' event webhooks, which echo their own metadata headers back:
  ``X-SMTPAPI: {"unique_args": {"automation_key": "..."}}`` (SendGrid) and
  ``X-PM-Metadata-automation-key`` (Postmark); see :func:`feedback_headers`
* marketing mail (``delivery.unsubscribe_url`` set): ``List-Unsubscribe: <url>``, and for an ``https``
  URL also ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058 one-click unsubscribe,
  which requires an HTTPS URI)

The body is ``multipart/alternative`` with the text part first and the HTML part second (a message
with only one of them is a single part). Parts that are not plain ASCII with short lines are
quoted-printable or base64 encoded, so the message is 7-bit clean for any SMTP server.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import sys
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.header import Header
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Compat32, Policy
from email.policy import default as _default_policy
from email.utils import format_datetime
from typing import Any

from automation.channels.base import Delivery
from automation.errors import PermanentDeliveryError
from automation.masking import mask_text

__all__ = ["POLICY", "build_email", "build_email_bytes", "envelope_address", "feedback_headers", "message_id"]

_SIMPLE_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$")


class _VerbatimHeader(UnstructuredHeader, BaseHeader):
    """A header written on one line as it is (up to 998 characters) when it is plain ASCII.

    The default folder turns a long word without spaces (an unsubscribe URL with its token) into
    RFC 2047 encoded words, which mail clients do not decode in ``List-Unsubscribe``.
    """

    def fold(self, *, policy: Policy) -> str:
        value = str(self)
        line = f"{self.name}: {value}"
        if value.isascii() and len(line) <= 998 and not any(c in value for c in "\r\n"):
            return line + policy.linesep
        return super().fold(policy=policy)


class _TypedTextHeader(UnstructuredHeader, BaseHeader):
    """An unstructured header whose value is the text exactly as typed.

    The modern email package decodes RFC 2047 encoded words when a header is set and writes ASCII text
    unencoded, so a rendered ``=?utf-8?q?=41dmin?=`` would reach the reader as "Admin". Made with
    :func:`_typed_text`, this header keeps such text as it is and, when it contains ``=?``, writes the
    whole value as encoded words, which a parser decodes back to the typed text.
    """

    @classmethod
    def parse(cls, value: str, kwds: dict[str, object]) -> None:
        super().parse(value, kwds)
        kwds["decoded"] = value  # not decoded: the value is the text to show

    def fold(self, *, policy: Policy) -> str:
        value = str(self)
        if not _looks_encoded(value):
            return super().fold(policy=policy)
        limit = policy.max_line_length or 78
        encoded = Header(value, "utf-8", header_name=self.name).encode(
            linesep=policy.linesep, maxlinelen=limit
        )
        return f"{self.name}: {encoded}{policy.linesep}"


def _looks_encoded(value: str) -> bool:
    """Whether a reader could take part of ``value`` for an RFC 2047 encoded word."""
    return "=?" in value


def _one_line(name: str, value: str) -> str:
    """``value`` for a header; ValueError when it holds a line break (it would end the header)."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"the {name} contains a line break")
    return value


def _typed_text(name: str, value: str) -> _TypedTextHeader:
    """A ``name`` header showing ``value`` as typed (see :class:`_TypedTextHeader`)."""
    return _TypedTextHeader(name, _one_line(name, value))


#: The Postmark metadata header: Postmark echoes it in its webhooks as ``Metadata["automation-key"]``.
_PM_KEY = "X-PM-Metadata-automation-key"


def feedback_headers(idempotency_key: str) -> list[tuple[str, str]]:
    """The headers that tie a provider's event reports to the message: ``X-Automation-Key``, SendGrid's
    ``X-SMTPAPI`` unique argument ``automation_key`` and Postmark's ``X-PM-Metadata-automation-key``."""
    smtpapi = json.dumps({"unique_args": {"automation_key": idempotency_key}}, separators=(", ", ": "))
    return [("X-Automation-Key", idempotency_key), ("X-SMTPAPI", smtpapi), (_PM_KEY, idempotency_key)]


_HEADERS = HeaderRegistry()  # our own registry: mapping types must not change the shared default one
for _name in ("list-unsubscribe", "list-unsubscribe-post", "x-automation-key", "x-smtpapi", _PM_KEY.lower()):
    _HEADERS.map_to_type(_name, _VerbatimHeader)

# 7-bit transfer encodings for the body parts; headers are RFC 2047 encoded as with the default policy,
# except the ASCII List-Unsubscribe* and feedback (X-Automation-Key, ...) headers, never folded or encoded.
POLICY = _default_policy.clone(cte_type="7bit", header_factory=_HEADERS)

_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?$")


def message_id(idempotency_key: str, domain: str) -> str:
    """The deterministic ``Message-ID`` of a delivery: ``<sha256-prefix@domain>``."""
    if not _DOMAIN.match(domain):
        raise ValueError(f"{domain!r} is not a domain name for Message-ID")
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def envelope_address(header_value: str) -> str:
    """The bare address (``user@example.com``) of a header value such as ``Shop <user@example.com>``.

    Raises ValueError when the value is not exactly one address with a local part and a domain.
    """
    if _SIMPLE_ADDRESS.match(header_value):  # the common case, without the header parser
        return header_value
    message = EmailMessage(policy=POLICY)
    try:
        message["To"] = header_value
        addresses: tuple[Address, ...] = message["To"].addresses
    except (ValueError, HeaderParseError, IndexError) as exc:
        raise ValueError(f"invalid email address: {mask_text(header_value)!r}") from exc
    if len(addresses) != 1 or not _valid(addresses[0]):
        raise ValueError(f"invalid email address: {mask_text(header_value)!r}")
    return addresses[0].addr_spec


def _valid(address: Address) -> bool:
    return bool(address.username) and bool(address.domain) and "." in address.domain.strip(".")


def build_email(delivery: Delivery, *, from_address: str, domain: str, now: datetime) -> EmailMessage:
    """Build the MIME message for an email delivery.

    ``from_address`` may carry a display name (``"Shop <news@shop.example>"``); ``domain`` is the
    right-hand side of the Message-ID; ``now`` becomes the Date header (a naive value is UTC).
    Raises PermanentDeliveryError when the delivery has no (valid) recipient or no content.
    """
    if not delivery.to or not delivery.to.strip():
        raise PermanentDeliveryError("no email address")
    rendered = delivery.rendered
    if not rendered.text and not rendered.html:
        raise PermanentDeliveryError("the email has neither a text nor an HTML body")
    try:
        envelope_address(delivery.to)
    except ValueError as exc:
        raise PermanentDeliveryError(str(exc)) from exc

    message = EmailMessage(policy=POLICY)
    try:
        message["From"] = from_address
        message["To"] = delivery.to.strip()
        message["Subject"] = _typed_text("Subject", rendered.subject or "")
        message["Date"] = format_datetime(now if now.tzinfo else now.replace(tzinfo=UTC))
        message["Message-ID"] = message_id(delivery.idempotency_key, domain)
        for name, value in feedback_headers(delivery.idempotency_key):
            message[name] = value
        if delivery.unsubscribe_url:
            url = delivery.unsubscribe_url.strip()
            if any(c in url for c in "<>\r\n \t"):
                raise ValueError(f"unsubscribe URL {url!r} contains characters not allowed in a header")
            message["List-Unsubscribe"] = f"<{url}>"
            if url.lower().startswith("https://"):
                message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    except (ValueError, HeaderParseError) as exc:
        raise PermanentDeliveryError(f"cannot build the email: {mask_text(str(exc))}") from exc

    if rendered.text and rendered.html:
        message.set_content(rendered.text)
        message.add_alternative(rendered.html, subtype="html")
    elif rendered.text:
        message.set_content(rendered.text)
    else:
        message.set_content(rendered.html or "", subtype="html")
    return message


def build_email_bytes(
    delivery: Delivery, *, from_address: str, domain: str, now: datetime
) -> tuple[bytes, str, str]:
    """The same message as :func:`build_email`, serialised: (bytes, envelope recipient, Message-ID).

    Built with the compat32 MIME classes, which are several times faster than ``EmailMessage`` with
    the modern policy; the result carries the same headers and parts (text first, then HTML, each
    quoted-printable UTF-8), and the ASCII List-Unsubscribe* and feedback headers unfolded.
    """
    from email.charset import QP, Charset
    from email.mime.multipart import MIMEMultipart
    from email.mime.nonmultipart import MIMENonMultipart

    if not delivery.to or not delivery.to.strip():
        raise PermanentDeliveryError("no email address")
    rendered = delivery.rendered
    if not rendered.text and not rendered.html:
        raise PermanentDeliveryError("the email has neither a text nor an HTML body")
    to = delivery.to.strip()
    try:
        recipient = envelope_address(to)
    except ValueError as exc:
        raise PermanentDeliveryError(str(exc)) from exc
    try:
        subject = _one_line("Subject", rendered.subject or "")
    except ValueError as exc:
        raise PermanentDeliveryError(f"cannot build the email: {mask_text(str(exc))}") from exc
    url = (delivery.unsubscribe_url or "").strip()
    if any(c in url for c in "<>\r\n \t"):
        raise PermanentDeliveryError(
            f"cannot build the email: unsubscribe URL {url!r} contains characters not allowed in a header"
        )

    charset = Charset("utf-8")
    charset.body_encoding = QP

    def part(text: str, subtype: str) -> MIMENonMultipart:
        body = MIMENonMultipart("text", subtype)
        body.set_payload(text if text.endswith("\n") else text + "\n", charset=charset)
        return body

    def header(name: str, value: str) -> str:
        if value.isascii() and not _looks_encoded(value):
            return value
        return Header(value, "utf-8", header_name=name).encode(linesep="\r\n")

    parts = [part(rendered.text, "plain")] if rendered.text else []
    if rendered.html:
        parts.append(part(rendered.html, "html"))
    if len(parts) == 2:
        # The boundary the generator would make, without its search of the parts for it (a regular
        # expression compiled per message): quoted-printable text never holds "==".
        message: MIMEMultipart | MIMENonMultipart = MIMEMultipart(
            "alternative", boundary=_boundary(), _subparts=parts
        )
    else:
        message = parts[0]
    ident = message_id(delivery.idempotency_key, domain)
    message["From"] = _address(from_address)  # the same for every message: remembered
    message["To"] = _address.__wrapped__(to)
    message["Subject"] = header("Subject", subject)
    message["Date"] = format_datetime(now if now.tzinfo else now.replace(tzinfo=UTC))
    message["Message-ID"] = ident
    for name, value in feedback_headers(delivery.idempotency_key):
        message[name] = value
    if url:
        message["List-Unsubscribe"] = f"<{url}>"
        if url.lower().startswith("https://"):
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    if "MIME-Version" not in message:
        message["MIME-Version"] = "1.0"
    raw = message.as_bytes(policy=_WIRE)
    return raw, recipient, ident


@functools.lru_cache(maxsize=64)
def _address(value: str) -> str:
    """An address header's value: the display name RFC 2047 encoded when it is not ASCII."""
    from email.utils import formataddr, parseaddr

    name, addr = parseaddr(value)
    return formataddr((name, addr), charset="utf-8") if name else addr


def _boundary() -> str:
    """A boundary as ``email.generator`` makes one: fifteen ``=``, 19 random digits, ``==``."""
    return "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="


#: A header value written as it is by compat32's folding: printable ASCII words, single spaces.
_PLAIN_HEADER = re.compile(r"[!-~]+(?: [!-~]+)*")


class _Wire(Compat32):
    """compat32 with CRLF line ends and lines up to 998 characters. A plain ASCII header that fits on
    its line is written directly: ``Header.encode`` writes it unchanged, at many times the cost."""

    def _fold(self, name: str, value: Any, sanitize: bool) -> str:
        if (
            type(value) is str
            and len(name) + len(value) + 2 <= 998
            and _PLAIN_HEADER.fullmatch(value) is not None
        ):
            return f"{name}: {value}\r\n"
        folded: str = super()._fold(name, value, sanitize)  # type: ignore[misc]
        return folded


_WIRE = _Wire(linesep="\r\n", max_line_length=998)
