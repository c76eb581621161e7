"""A real HTTP server on 127.0.0.1 for tests: stands in for the SMS provider, webhook receivers and CRMs.

    with serve(secret="whsec_...", dedupe_header="Idempotency-Key") as server:
        server.route("/hooks", Reply(202, json={"id": "evt_1"}))
        server.fail_next(2, status=429, retry_after=7)    # the next two requests get 429 + Retry-After: 7
        ... point a client at server.url + "/hooks" ...
        assert server.requests[-1].signature_ok
        assert server.unique_deliveries == 1

It runs ``http.server`` (HTTP/1.1, keep-alive) in a background thread, so it works from sync tests, from
``asyncio.run`` and from any event loop. Every request is recorded (method, path, query, headers with
lower-case names, raw body) with what the server did with it (``outcome``). Failures are queued and used
by the next requests in order:

* ``fail_next(n, status=500 | 429 | 400 | ..., retry_after=None, body=None)``  answer with that status
* ``hang_next(n, seconds=30)``  say nothing for ``seconds`` (longer than the client timeout), then process
  and answer normally (like a slow receiver: the work is done though the client gave up; ``hung`` is
  set); ``close()`` releases hanging requests at once
* ``drop_next(n)``  read the request, then close the connection without any response

Successful answers come from ``route(path, Reply | callable)`` or the default (200, ``{"ok": true}``).
With ``secret`` every request's Standard Webhooks signature is checked by an implementation independent
of ``automation.channels.webhook`` (``signature_ok``); ``reject_bad_signatures=True`` answers 401 to bad
ones. With ``dedupe_header`` a repeated key that was already accepted gets the first answer again and is
not counted: ``deliveries`` / ``unique_deliveries`` are what a real idempotent receiver would process.

For code that sends in the background: ``wait_for(n)`` blocks until ``n`` requests have arrived and
``wait_settled()`` until every request received has been answered. ``fake_twilio()`` is a responder for
``Messages.json``; ``closed_port()`` gives a port where connections are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "LocalServer",
    "Recorded",
    "Reply",
    "closed_port",
    "fake_twilio",
    "serve",
    "standard_webhooks_valid",
]


@dataclass(frozen=True)
class Reply:
    """An answer: ``json`` (serialised) wins over ``body``."""

    status: int = 200
    json: Any = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if self.json is not None:
            headers.setdefault("Content-Type", "application/json")
            return json.dumps(self.json).encode(), headers
        return self.body, headers


Responder = Callable[["Recorded"], Reply]


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float
    signature_ok: bool | None = None  # None when the server has no secret
    outcome: str = "pending"  # ok | failed:<status> | drop | duplicate | bad-signature | error
    hung: bool = False  # held back by hang_next before being answered (and processed) normally
    status: int | None = None  # what was answered (None for a dropped connection)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))

    def basic_auth(self) -> tuple[str, str] | None:
        value = self.header("Authorization") or ""
        scheme, _, encoded = value.partition(" ")
        if scheme.lower() != "basic":
            return None
        user, _, password = base64.b64decode(encoded).decode("utf-8").partition(":")
        return user, password


@dataclass(frozen=True)
class _Failure:
    kind: str  # status | hang | drop
    status: int = 500
    retry_after: int | str | None = None
    body: bytes | None = None
    seconds: float = 30.0


def standard_webhooks_valid(
    secret: str, headers: dict[str, str], body: bytes, tolerance: float = 300
) -> bool:
    """Reference check of a Standard Webhooks signature (written from the spec, not from our code)."""
    msg_id, stamp = headers.get("webhook-id"), headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and stamp and signatures) or not stamp.isdigit():
        return False
    if abs(time.time() - int(stamp)) > tolerance:
        return False
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, msg_id.encode() + b"." + stamp.encode() + b"." + body, hashlib.sha256)
    expected = "v1," + base64.b64encode(mac.digest()).decode()
    return any(hmac.compare_digest(expected, s) for s in signatures.split(" "))


def fake_twilio(prefix: str = "SM") -> Responder:
    """A Messages.json responder: 201 with a new ``sid`` per message (the same sid for a repeated
    ``I-Twilio-Idempotency-Token``), echoing To/From/Body like Twilio does."""
    counter = itertools.count(1)
    sids: dict[str, str] = {}
    lock = threading.Lock()

    def respond(request: Recorded) -> Reply:
        form = request.form()
        token = request.header("I-Twilio-Idempotency-Token") or f"no-token-{id(request)}"
        with lock:
            sid = sids.setdefault(token, f"{prefix}{next(counter):032x}")
        data = {
            "sid": sid,
            "status": "queued",
            "to": form.get("To"),
            "from": form.get("From"),
            "body": form.get("Body"),
        }
        return Reply(201, json=data)

    return respond


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real APIs
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        request = Recorded(
            method=self.command,
            path=parts.path,
            query=parts.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._read_body(),
            at=time.time(),
        )
        owner = self.server.owner
        reply = owner._decide(request)
        if reply is None:  # drop the connection without a response
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload, headers = reply.encoded()
        try:
            self.send_response(reply.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client gave up (after a hang): nothing to answer to
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LocalServer


class LocalServer:
    """See the module docstring. Thread-safe; use :func:`serve` to start and stop one."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        reject_bad_signatures: bool = False,
        dedupe_header: str | None = None,
        default: Reply | Responder | None = None,
    ) -> None:
        self.secret = secret
        self.reject_bad_signatures = reject_bad_signatures
        self.dedupe_header = dedupe_header
        self._default: Reply | Responder = default or Reply(200, json={"ok": True})
        self._routes: dict[str, Reply | Responder] = {}
        self._failures: list[_Failure] = []
        self._requests: list[Recorded] = []
        self._accepted: dict[str, tuple[Recorded, Reply]] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._release = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="local-http", daemon=True
        )

    # -- lifecycle

    def start(self) -> LocalServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- configuration

    def route(self, path: str, answer: Reply | Responder) -> None:
        """Answer requests to ``path`` (any method) with a fixed reply or a function of the request."""
        with self._lock:
            self._routes[path] = answer

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        retry_after: int | str | None = None,
        body: bytes | None = None,
    ) -> None:
        """The next ``n`` requests get ``status`` (with ``Retry-After`` when given)."""
        self._queue(n, _Failure("status", status=status, retry_after=retry_after, body=body))

    def hang_next(self, n: int = 1, seconds: float = 30.0) -> None:
        """The next ``n`` requests get no answer for ``seconds``, then the normal one."""
        self._queue(n, _Failure("hang", seconds=seconds))

    def drop_next(self, n: int = 1) -> None:
        """The next ``n`` requests are read and their connection closed without a response."""
        self._queue(n, _Failure("drop"))

    def _queue(self, n: int, failure: _Failure) -> None:
        with self._lock:
            self._failures.extend([failure] * n)

    # -- results

    @property
    def requests(self) -> list[Recorded]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def deliveries(self) -> list[Recorded]:
        """Accepted requests, one per idempotency key (every accepted request without ``dedupe_header``)."""
        with self._lock:
            return [r for r in self._requests if r.outcome == "ok"]

    @property
    def unique_deliveries(self) -> int:
        return len(self.deliveries)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Recorded]:
        """Block until ``count`` requests have arrived (AssertionError after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} requests, got {len(self._requests)}")
                self._arrived.wait(left)
            return list(self._requests)

    def wait_settled(self, timeout: float = 5.0) -> list[Recorded]:
        """Block until every request received so far has been answered or dropped (hung ones too)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while any(r.outcome == "pending" for r in self._requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("requests still in progress")
                self._arrived.wait(left)
            return list(self._requests)

    # -- the request path (server threads)

    def _decide(self, request: Recorded) -> Reply | None:
        try:
            return self._answer(request)
        finally:
            if request.outcome == "pending":  # a responder raised
                request.outcome = "error"
            with self._arrived:
                self._arrived.notify_all()

    def _answer(self, request: Recorded) -> Reply | None:
        if self.secret is not None:
            request.signature_ok = standard_webhooks_valid(self.secret, request.headers, request.body)
        with self._lock:
            self._requests.append(request)
            self._arrived.notify_all()
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None and failure.kind == "drop":
            request.outcome = "drop"
            return None
        if failure is not None and failure.kind == "status":
            request.outcome = f"failed:{failure.status}"
            request.status = failure.status
            headers = {} if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
            body = failure.body if failure.body is not None else f'{{"error": {failure.status}}}'.encode()
            return Reply(failure.status, body=body, headers={"Content-Type": "application/json", **headers})
        if failure is not None and failure.kind == "hang":
            request.hung = True
            self._release.wait(failure.seconds)
        if self.reject_bad_signatures and request.signature_ok is False:
            request.outcome = "bad-signature"
            request.status = 401
            return Reply(401, json={"error": "invalid signature"})
        key = request.header(self.dedupe_header) if self.dedupe_header else None
        with self._lock:
            if key is not None and key in self._accepted:
                request.outcome = "duplicate"
                reply = self._accepted[key][1]
                request.status = reply.status
                return reply
            answer = self._routes.get(request.path, self._default)
        reply = answer if isinstance(answer, Reply) else answer(request)
        request.status = reply.status
        ok = 200 <= reply.status < 300
        with self._lock:
            if ok and key is not None and key in self._accepted:  # a concurrent twin won the race
                request.outcome = "duplicate"
                return self._accepted[key][1]
            if ok and key is not None:
                self._accepted[key] = (request, reply)
            request.outcome = "ok" if ok else f"failed:{reply.status}"
        return reply


@contextmanager
def serve(
    *,
    secret: str | None = None,
    reject_bad_signatures: bool = False,
    dedupe_header: str | None = None,
    default: Reply | Responder | None = None,
) -> Iterator[LocalServer]:
    """A running :class:`LocalServer` for the ``with`` block."""
    server = LocalServer(
        secret=secret,
        reject_bad_signatures=reject_bad_signatures,
        dedupe_header=dedupe_header,
        default=default,
    )
    with server:
        yield server


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
