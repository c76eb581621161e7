"""Email over SMTP with aiosmtplib: a small pool of reused connections, errors mapped to retry or give up.

The server is one URL (the dispatcher reads it from ``AUTOMATION_SMTP_URL``)::

    smtp://user:pass@smtp.example.com:587?starttls=true   STARTTLS on the submission port
    smtps://user:pass@smtp.example.com:465                TLS from the first byte (implicit TLS)
    smtp://127.0.0.1:1025                                 plain, e.g. a local relay or a test server

* user and password are optional; percent-encode special characters (``p%40ss`` for ``p@ss``).
  Credentials over plain ``smtp://`` to a host other than the local machine are refused unless the
  URL says ``starttls=false`` explicitly (use ``starttls=true`` or ``smtps://`` instead).
* the port defaults to 465 for ``smtps``, 587 with ``starttls=true`` and 25 otherwise.

Query parameters (all optional, unknown ones are an error so that a typo does not go unnoticed):

``starttls``  ``true`` / ``false`` (default ``false``): upgrade the connection with STARTTLS and
              refuse to send when the server does not offer it. Not allowed with ``smtps``.
``from``      default sender, e.g. ``from=Shop%20%3Cnews%40shop.example%3E``; the ``from_address``
              given to :class:`SmtpChannel` (``AUTOMATION_EMAIL_FROM``) takes precedence.
``timeout``   seconds for connecting and for each SMTP command (default 30).
``pool``      connections kept open and used at the same time (default 2, at most 50).
``cafile``    PEM file with CA certificate(s) to trust for TLS in addition to the system's (a private
              relay with its own CA). Server certificates and host names are always verified.

Errors: a 4xx reply, a refused or dropped connection, a timeout, a TLS or login failure raise
``TransientDeliveryError`` (the message is tried again later; login and TLS failures are settings
problems that affect every message, so they must not mark messages as dead). A 5xx reply to the
message itself (sender, recipient or content refused, e.g. ``550`` unknown user, ``553``, ``554``)
raises ``PermanentDeliveryError``, except 530, 534, 535 and 538 (login or encryption required or
refused), which are about the settings and so transient. Server replies are masked
(``j***@example.com``) in error messages.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import aiosmtplib

from automation.channels.base import Delivery, DeliveryResult
from automation.channels.mime import build_email, build_email_bytes, envelope_address, message_id
from automation.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from automation.masking import mask_text

__all__ = ["SmtpChannel", "SmtpSettings"]

log = logging.getLogger("automation.channels.email")

Security = Literal["plain", "starttls", "tls"]
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_PARAMS = ("starttls", "from", "timeout", "pool", "cafile")
MAX_POOL = 50


def _redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (for error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{netloc[1]}").geturl()


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to connect; build it with :meth:`from_url`."""

    host: str
    port: int
    security: Security = "plain"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    from_address: str | None = None
    timeout: float = 30.0
    pool: int = 2
    cafile: Path | None = None

    @classmethod
    def from_url(cls, url: str) -> SmtpSettings:
        """Parse ``smtp://[user:pass@]host[:port][?starttls=true&from=...&timeout=30&pool=2]`` or
        ``smtps://...``; raise ConfigError (without the password) when the URL is not usable."""
        shown = _redact(url.strip())

        def bad(reason: str) -> ConfigError:
            return ConfigError(
                f"SMTP URL {shown!r}: {reason}; expected e.g. smtp://user:pass@smtp.example.com:587"
                "?starttls=true, smtps://user:pass@smtp.example.com:465 or smtp://127.0.0.1:1025"
            )

        try:
            parts = urlsplit(url.strip())
            port_value = parts.port
        except ValueError as exc:
            raise bad(f"invalid host or port ({exc})") from None
        if parts.scheme not in ("smtp", "smtps"):
            raise bad(f"the scheme must be smtp or smtps, not {parts.scheme or 'missing'!r}")
        host = parts.hostname
        if not host:
            raise bad("no host")
        if parts.path not in ("", "/"):
            raise bad(f"unexpected path {parts.path!r}")
        if parts.fragment:
            raise bad("unexpected #fragment")
        try:
            query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise bad("the query string is malformed") from None
        params: dict[str, str] = {}
        for key, value in query:
            if key not in _PARAMS:
                raise bad(f"unknown parameter {key!r} (known: {', '.join(_PARAMS)})")
            if key in params:
                raise bad(f"parameter {key!r} given twice")
            params[key] = value

        starttls: bool | None = None
        if "starttls" in params:
            flag = params["starttls"].lower()
            if flag not in _TRUE + _FALSE:
                raise bad(f"starttls must be true or false, not {params['starttls']!r}")
            starttls = flag in _TRUE
        if parts.scheme == "smtps" and starttls:
            raise bad("smtps already uses TLS; starttls=true is only for smtp://")
        security: Security = "tls" if parts.scheme == "smtps" else "starttls" if starttls else "plain"

        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if username and security == "plain" and starttls is None and not _is_local(host):
            raise bad(
                "the password would travel unencrypted; add ?starttls=true, use smtps://, "
                "or add ?starttls=false if the relay really has no TLS"
            )

        timeout = 30.0
        if "timeout" in params:
            try:
                timeout = float(params["timeout"])
            except ValueError:
                raise bad(f"timeout must be a number of seconds, not {params['timeout']!r}") from None
            if not 0 < timeout <= 3600:
                raise bad("timeout must be more than 0 and at most 3600 seconds")
        pool = 2
        if "pool" in params:
            try:
                pool = int(params["pool"])
            except ValueError:
                raise bad(f"pool must be a whole number, not {params['pool']!r}") from None
            if not 1 <= pool <= MAX_POOL:
                raise bad(f"pool must be between 1 and {MAX_POOL}")
        from_address = params.get("from") or None
        if from_address is not None:
            try:
                envelope_address(from_address)
            except ValueError:
                raise bad(f"from={from_address!r} is not an email address") from None
        cafile = Path(params["cafile"]) if params.get("cafile") else None
        if "cafile" in params and cafile is None:
            raise bad("cafile is empty")

        port = port_value or (465 if security == "tls" else 587 if security == "starttls" else 25)
        return cls(
            host=host,
            port=port,
            security=security,
            username=username,
            password=password,
            from_address=from_address,
            timeout=timeout,
            pool=pool,
            cafile=cafile,
        )


class SmtpChannel:
    """The ``email`` channel: sends through an SMTP server, reusing up to ``settings.pool`` connections.

    ``from_address`` (``"Shop <news@shop.example>"``) defaults to the URL's ``from``; ``domain`` (the
    right-hand side of the Message-ID) defaults to the sender's domain. ``clock`` gives the Date.
    """

    name = "email"

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        from_address: str | None = None,
        domain: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        sender = from_address or settings.from_address
        if not sender:
            raise ConfigError(
                "no sender address for email: set AUTOMATION_EMAIL_FROM (or from= in the SMTP URL)"
            )
        try:
            self._envelope_from = envelope_address(sender)
        except ValueError:
            raise ConfigError(f"the sender {sender!r} is not an email address") from None
        self.from_address = sender
        self.domain = domain or self._envelope_from.rsplit("@", 1)[1]
        try:
            message_id("check", self.domain)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tls: ssl.SSLContext | None = None
        if settings.security != "plain":
            self._tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            if settings.cafile is not None:
                try:
                    self._tls.load_verify_locations(cafile=str(settings.cafile))
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(f"cannot load cafile {settings.cafile}: {exc}") from None
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(settings.pool)
        self.connections_opened = 0  # how many SMTP sessions were started (for tests and stats)

    def build(self, delivery: Delivery) -> EmailMessage:
        """The MIME message :meth:`send` would transmit for ``delivery``."""
        return build_email(delivery, from_address=self.from_address, domain=self.domain, now=self._clock())

    async def send(self, delivery: Delivery) -> DeliveryResult:
        """Send one email; returns its Message-ID. Raises Transient/PermanentDeliveryError."""
        message, recipient, message_id = build_email_bytes(
            delivery, from_address=self.from_address, domain=self.domain, now=self._clock()
        )
        async with self._slots:
            pooled = self._take_idle()
            error, lost = await self._attempt(pooled or await self._connect(), message, recipient)
            if lost and pooled is not None:
                # The server closed the pooled connection while it was idle: one try on a fresh one.
                log.debug("pooled SMTP connection was closed; reconnecting")
                error, lost = await self._attempt(await self._connect(), message, recipient)
        if error is not None:
            raise error
        log.debug("sent %s to %s", message_id, mask_text(recipient))
        return DeliveryResult(provider_id=message_id)

    async def _attempt(
        self, connection: aiosmtplib.SMTP, message: bytes, recipient: str
    ) -> tuple[TransientDeliveryError | PermanentDeliveryError | None, bool]:
        """Send on one connection: (the error to raise or None, whether the connection was lost).

        The connection goes back to the pool when it is still usable (also after a refused
        recipient: aiosmtplib resets the transaction), else it is closed.
        """
        keep = False
        error: TransientDeliveryError | PermanentDeliveryError | None = None
        lost = False
        try:
            await connection.sendmail(self._envelope_from, [recipient], message)
            keep = True
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
            lost = True
            error = TransientDeliveryError(f"SMTP connection lost: {_describe(exc)}")
            error.__cause__ = exc
        except aiosmtplib.SMTPResponseException as exc:
            keep = exc.code != 421  # 421: the server is closing the connection
            error = _response_error(exc)
            error.__cause__ = exc
        except aiosmtplib.SMTPRecipientsRefused as exc:
            keep = True
            refused = exc.recipients[0] if exc.recipients else None
            error = _response_error(refused) if refused else TransientDeliveryError("SMTP recipient refused")
            error.__cause__ = exc
        except aiosmtplib.SMTPNotSupported as exc:  # e.g. a non-ASCII address without SMTPUTF8
            keep = True
            error = PermanentDeliveryError(f"the SMTP server cannot take this message: {_describe(exc)}")
            error.__cause__ = exc
        except ValueError as exc:  # an address aiosmtplib will not put on a command line
            keep = True
            error = PermanentDeliveryError(_describe(exc))
            error.__cause__ = exc
        except (aiosmtplib.SMTPException, OSError) as exc:  # timeouts and the rest: connection unusable
            error = TransientDeliveryError(f"SMTP error: {_describe(exc)}")
            error.__cause__ = exc
        finally:
            if keep and connection.is_connected:
                self._idle.append(connection)
            else:
                _shut(connection)
        return error, lost

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.is_connected:
                return connection
            _shut(connection)
        return None

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        # STARTTLS and login are separate steps (not connect()'s): when one fails, the connection is
        # still ours to shut down (see _shut).
        connection = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            use_tls=s.security == "tls",
            start_tls=False,
            timeout=s.timeout,
            tls_context=self._tls,
            local_hostname=self.domain,
        )
        where = f"{s.host}:{s.port}"
        step = "connect to"
        try:
            await connection.connect()
            if s.security == "starttls":
                step = "start TLS with"
                await connection.starttls()
            if s.username is not None:
                step = "log in to"
                await connection.login(s.username, s.password or "")
        except BaseException as exc:
            _shut(connection)
            if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
                raise TransientDeliveryError(
                    f"SMTP login to {where} refused ({exc.code} {mask_text(exc.message)}): "
                    "check the user and password in the SMTP URL"
                ) from exc
            if isinstance(exc, aiosmtplib.SMTPException | OSError):
                raise TransientDeliveryError(f"cannot {step} SMTP server {where}: {_describe(exc)}") from exc
            raise
        self.connections_opened += 1
        return connection

    async def aclose(self) -> None:
        """Wait for sends in progress, then QUIT every pooled connection."""
        for _ in range(self.settings.pool):
            await self._slots.acquire()
        try:
            idle, self._idle = self._idle, []
            for connection in idle:
                transport = connection.transport
                try:
                    if connection.is_connected:
                        await connection.quit()
                except (aiosmtplib.SMTPException, OSError):
                    pass
                finally:
                    _shut(connection, transport)
        finally:
            for _ in range(self.settings.pool):
                self._slots.release()


def _shut(connection: aiosmtplib.SMTP, transport: asyncio.BaseTransport | None = None) -> None:
    """Close a connection now. A TLS connection is aborted rather than closed: an orderly TLS close
    waits for the server's close_notify, and if the event loop stops first the socket stays open."""
    transport = transport or connection.transport
    connection.close()
    if isinstance(transport, asyncio.Transport) and transport.get_extra_info("sslcontext") is not None:
        transport.abort()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return mask_text(text)


# 5xx replies about the session, not the message: login or TLS required, login refused. Every message
# would get them until the settings are fixed, so they are retried rather than marked dead.
_SESSION_CODES = frozenset({530, 534, 535, 538})


def _response_error(exc: aiosmtplib.SMTPResponseException) -> TransientDeliveryError | PermanentDeliveryError:
    """4xx (and anything unexpected) -> transient; 5xx -> permanent, except login/TLS-required replies."""
    text = f"SMTP {exc.code} {mask_text(exc.message)}".strip()
    if exc.code in _SESSION_CODES:
        return TransientDeliveryError(f"{text} (the server wants a login or TLS: check the SMTP URL)")
    if 500 <= exc.code < 600:
        return PermanentDeliveryError(text)
    return TransientDeliveryError(text)
