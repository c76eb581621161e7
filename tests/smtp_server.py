"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 with a free port, recording what it receives.

    with SmtpTestServer() as server:
        ...send to server.url (smtp://127.0.0.1:<port>)...
        server.messages[0].message["Subject"]
        server.fail_next(451, stage="data")     # the next message gets "451 ..." after DATA
        server.fail_next(550, stage="rcpt")     # the next message's recipient is refused
        server.drop_next()                      # the server hangs up instead of answering DATA
        server.stall_next(2.0)                  # the server waits 2 s before answering DATA
        server.drop_connections()               # close every open connection (idle ones too)
        server.sessions, server.peak_connections

STARTTLS: ``SmtpTestServer(tls_context=server_ssl_context(cert, key), require_starttls=True)``;
implicit TLS: ``SmtpTestServer(ssl_context=...)``; ``credentials=("user", "pass")`` requires AUTH
(only with one of the TLS contexts: aiosmtpd warns about AUTH over plain connections).
:func:`make_certificate` writes a self-signed certificate for 127.0.0.1/localhost with the
``openssl`` command (None when it is not installed).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage
    session: int  # 1-based number of the connection it came on
    tls: bool  # whether the connection was encrypted (STARTTLS or implicit TLS)
    login: str | None  # the user that authenticated, if any


@dataclass
class _Action:
    kind: str  # "fail" | "drop" | "stall"
    stage: str  # "mail" | "rcpt" | "data"
    count: int
    code: int = 0
    text: str = ""
    seconds: float = 0.0


class RecordingHandler:
    """aiosmtpd handler: records messages and sessions; replays planned failures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.sessions = 0
        self.peak_connections = 0
        self._numbers: dict[int, int] = {}  # id(server) -> session number, for connections that EHLOed
        self._open: dict[int, SMTP] = {}  # connections that EHLOed and are still open
        self._live: dict[int, SMTP] = {}  # every open connection (also ones that never said EHLO)
        self._plan: deque[_Action] = deque()

    # -- planning (called from the test thread)

    def plan(self, action: _Action) -> None:
        with self.lock:
            self._plan.append(action)

    def _take(self, stage: str) -> _Action | None:
        with self.lock:
            if not self._plan or self._plan[0].stage != stage:
                return None
            action = self._plan[0]
            action.count -= 1
            if action.count <= 0:
                self._plan.popleft()
            return action

    # -- connection tracking (server thread)

    def opened(self, server: SMTP) -> None:
        with self.lock:
            if id(server) not in self._numbers:
                self.sessions += 1
                self._numbers[id(server)] = self.sessions
            self._open[id(server)] = server
            self.peak_connections = max(self.peak_connections, len(self._open))

    def connected(self, server: SMTP) -> None:
        with self.lock:
            self._live[id(server)] = server

    def closed(self, server: SMTP) -> None:
        with self.lock:
            self._open.pop(id(server), None)
            self._live.pop(id(server), None)

    def open_servers(self, *, all_connections: bool = False) -> list[SMTP]:
        with self.lock:
            return list((self._live if all_connections else self._open).values())

    @property
    def open_connections(self) -> int:
        with self.lock:
            return len(self._open)

    # -- aiosmtpd hooks (server thread)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        self.opened(server)
        return responses

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str) -> str:
        session.host_name = hostname
        self.opened(server)
        return f"250 {server.hostname}"

    async def _act(self, server: SMTP, stage: str) -> str | None:
        action = self._take(stage)
        if action is None:
            return None
        if action.kind == "stall":
            await asyncio.sleep(action.seconds)
            return None
        if action.kind == "drop":
            if server.transport is not None:
                server.transport.close()
            return "421 4.4.2 connection dropped"  # never arrives: the transport is closed
        return f"{action.code} {action.text}"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = await self._act(server, "mail")
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = await self._act(server, "rcpt")
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await self._act(server, "data")
        if reply is not None:
            return reply
        content = envelope.original_content or b""
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        transport = server.transport
        with self.lock:
            number = self._numbers.get(id(server), 0)
            self.messages.append(
                Received(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    raw=content,
                    message=parsed,
                    session=number,
                    tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
                    login=login,
                )
            )
        return "250 2.0.0 OK queued"


class _TrackedSMTP(SMTP):
    def __init__(self, handler: RecordingHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._recorder = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._recorder.connected(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._recorder.closed(self)
        super().connection_lost(error)


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _TrackedSMTP(self.handler, **self.SMTP_kwargs)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class SmtpTestServer:
    """Context manager around aiosmtpd's threaded Controller; see the module docstring."""

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.handler = RecordingHandler()
        self.port = free_port()
        self.host = HOST
        self.implicit_tls = ssl_context is not None
        kwargs: dict[str, Any] = {"server_hostname": "mx.test"}
        if tls_context is not None:
            kwargs["tls_context"] = tls_context
            kwargs["require_starttls"] = require_starttls
        if credentials is not None:
            user, password = credentials

            def authenticator(
                server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
            ) -> AuthResult:
                ok = isinstance(auth_data, LoginPassword) and (
                    auth_data.login.decode(),
                    auth_data.password.decode(),
                ) == (user, password)
                return AuthResult(success=ok, handled=False, auth_data=auth_data)

            if tls_context is None and ssl_context is None:
                raise ValueError("credentials need tls_context (STARTTLS) or ssl_context (implicit TLS)")
            kwargs["authenticator"] = authenticator
            kwargs["auth_required"] = True
        self._controller = _Controller(
            self.handler, hostname=HOST, port=self.port, ssl_context=ssl_context, **kwargs
        )
        self.running = False

    @property
    def url(self) -> str:
        """``smtp://127.0.0.1:<port>`` (or ``smtps://`` for an implicit-TLS server)."""
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{self.host}:{self.port}"

    def start(self) -> SmtpTestServer:
        self._controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        """Close every connection (so no socket is left for the garbage collector), then stop."""
        if self.running:
            self.running = False
            self._close_connections(all_connections=True)
            self._controller.stop()

    def __enter__(self) -> SmtpTestServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what happened

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    @property
    def sessions(self) -> int:
        """How many SMTP sessions (connections that said EHLO/HELO) the server has seen."""
        with self.handler.lock:
            return self.handler.sessions

    @property
    def peak_connections(self) -> int:
        """The most sessions that were open at the same time."""
        with self.handler.lock:
            return self.handler.peak_connections

    # -- what to do next

    def fail_next(self, code: int, count: int = 1, *, stage: str = "data", text: str | None = None) -> None:
        """Answer the next ``count`` messages with ``code`` at MAIL, RCPT or (default) DATA."""
        if stage not in ("mail", "rcpt", "data"):
            raise ValueError(f"unknown stage {stage!r}")
        default = "4.3.0 try again later" if code < 500 else "5.1.1 <user@example.com>: recipient rejected"
        self.handler.plan(_Action("fail", stage, count, code=code, text=text or default))

    def drop_next(self, count: int = 1, *, stage: str = "data") -> None:
        """Close the connection instead of answering the next ``count`` messages."""
        self.handler.plan(_Action("drop", stage, count))

    def stall_next(self, seconds: float, count: int = 1) -> None:
        """Wait ``seconds`` before answering DATA of the next ``count`` messages."""
        self.handler.plan(_Action("stall", "data", count, seconds=seconds))

    def drop_connections(self) -> int:
        """Close every open session from the server side; returns how many were closed."""
        return self._close_connections(all_connections=False)

    def _close_connections(self, *, all_connections: bool, timeout: float = 5.0) -> int:
        servers = self.handler.open_servers(all_connections=all_connections)
        loop = self._controller.loop
        closed = threading.Event()

        def close_all() -> None:
            for server in servers:
                if all_connections:
                    # Stopping: abort, also the socket under a STARTTLS layer, whose orderly TLS
                    # shutdown would not finish before the loop stops (leaving an unclosed socket).
                    for transport in (server.transport, getattr(server, "_original_transport", None)):
                        if isinstance(transport, asyncio.Transport):
                            transport.abort()
                elif server.transport is not None:
                    server.transport.close()
            # The transports finish closing in callbacks scheduled by close(); signal after them.
            loop.call_soon(loop.call_soon, closed.set)

        loop.call_soon_threadsafe(close_all)
        closed.wait(timeout)
        return len(servers)


# ------------------------------------------------------------------------------------------- TLS


def make_certificate(directory: Path) -> tuple[Path, Path] | None:
    """Write a self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem).

    Uses the ``openssl`` command; None when it is not installed or cannot make the certificate.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [
        openssl,
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return cert, key


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context for :class:`SmtpTestServer`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
