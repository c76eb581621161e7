"""Shared HTTP plumbing for the SMS, webhook and CRM channels.

* :func:`make_client` builds one ``httpx.AsyncClient`` per process, on the aiohttp transport
  (``httpx-aiohttp``; httpx's own transport is the fallback when that package is missing), with a
  connection limit and a per-operation timeout (connect, read, pool wait).
* :func:`raise_for_delivery` turns an HTTP response into nothing (2xx) or a delivery error.
* :func:`send_errors` turns network failures (timeouts, refused or dropped connections, protocol
  errors) into :class:`~automation.errors.TransientDeliveryError`.

Error messages name the host and the status, never the full URL (webhook URLs often carry tokens), and
body excerpts go through :func:`automation.masking.mask_text`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx

from automation.channels.base import parse_retry_after, transient_status
from automation.errors import PermanentDeliveryError, TransientDeliveryError
from automation.masking import mask_text

__all__ = ["EXCERPT_CHARS", "body_excerpt", "make_client", "raise_for_delivery", "send_errors"]

EXCERPT_CHARS = 200  # how much of an error response body goes into the error message


class _NoCookies(httpx.Cookies):
    """Delivery requests never carry or keep cookies (and skip the cost of parsing them)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class _DeliveryClient(httpx.AsyncClient):
    """An AsyncClient without a cookie jar: webhooks and provider APIs are stateless."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cookies = _NoCookies()

    def _merge_cookies(self, cookies: Any = None) -> Any:
        return None

    async def send_direct(self, request: httpx.Request) -> httpx.Response:
        """Send a complete request straight through the transport: delivery needs none of the client's
        redirect, auth, cookie or event-hook layers, and skipping them is a large share of the cost.
        Timeouts come from the request's ``timeout`` extension."""
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response


def make_client(timeout: float = 10.0, max_connections: int = 20) -> httpx.AsyncClient:
    """An async HTTP client for delivery: aiohttp transport, ``max_connections`` open connections at
    most (all of them kept alive between requests), ``timeout`` seconds for connecting, for each read
    and for waiting for a free connection. Redirects are not followed. Close it with ``aclose()``."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    transport: httpx.AsyncBaseTransport
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:  # pragma: no cover - the dependency is declared; this keeps a broken install usable
        transport = httpx.AsyncHTTPTransport(limits=limits)
    else:
        transport = AiohttpTransport(limits=limits)
    return _DeliveryClient(
        transport=transport,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        headers={"User-Agent": "automation/0.1"},
    )


def _where(response: httpx.Response) -> str:
    try:
        return response.request.url.host or "the server"
    except RuntimeError:  # a response built without a request (tests)
        return "the server"


def body_excerpt(response: httpx.Response, limit: int = EXCERPT_CHARS) -> str:
    """The start of a (read) response body on one line, personal data masked; "" when empty."""
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError, LookupError):
        return ""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + "…"
    return mask_text(text)


def raise_for_delivery(response: httpx.Response) -> None:
    """Return for 2xx; raise ``TransientDeliveryError`` for 408, 425, 429 and 5xx (with ``retry_after``
    from a ``Retry-After`` header) and ``PermanentDeliveryError`` for everything else (other 4xx, and
    redirects, which delivery never follows)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"HTTP {status} from {_where(response)}"
    excerpt = body_excerpt(response)
    if excerpt:
        message += f": {excerpt}"
    if transient_status(status):
        raise TransientDeliveryError(
            message, retry_after=parse_retry_after(response.headers.get("Retry-After"))
        )
    if 300 <= status < 400:
        try:
            target = httpx.URL(response.headers.get("Location", "")).host
        except httpx.InvalidURL:
            target = ""
        message += f" (a redirect{' to ' + target if target else ''}: update the URL)"
    raise PermanentDeliveryError(message)


@contextmanager
def send_errors(what: str = "request") -> Iterator[None]:
    """Wrap a request: network failures become ``TransientDeliveryError``.

    Timeouts, refused and dropped connections, protocol errors (httpx's ``TransportError`` family, the
    aiohttp client errors the transport lets through, ``asyncio`` timeouts) are transient. A URL that can
    never work (unsupported scheme, malformed) is permanent. Delivery errors raised inside pass through.
    Messages never quote the URL (it may carry a token).
    """
    try:
        yield
    except httpx.UnsupportedProtocol as exc:
        raise PermanentDeliveryError(f"{what} failed: unsupported URL scheme (use http or https)") from exc
    except httpx.InvalidURL as exc:
        raise PermanentDeliveryError(f"{what} failed: invalid URL") from exc
    except (httpx.TransportError, aiohttp.ClientError) as exc:
        raise TransientDeliveryError(f"{what} failed: {_describe(exc)}") from exc
    except TimeoutError as exc:  # asyncio.timeout() / wait_for() around the request (3.11+: same class)
        raise TransientDeliveryError(f"{what} failed: timed out") from exc


def _describe(exc: BaseException) -> str:
    """What went wrong on the network, in words. The aiohttp transport maps several aiohttp errors to
    one httpx class (a refused or dropped connection becomes ``ConnectTimeout``): look at the cause."""
    cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
    if isinstance(cause, aiohttp.ServerDisconnectedError | httpx.RemoteProtocolError):
        reason = "the server closed the connection without a response"
    elif isinstance(cause, aiohttp.ClientConnectorError | httpx.ConnectError):
        reason = "could not connect"
    elif isinstance(cause, TimeoutError | httpx.TimeoutException):
        reason = "timed out"
    else:
        reason = "network error"
    detail = str(cause).strip()
    detail = f"{type(cause).__name__}: {detail}" if detail else type(cause).__name__
    return f"{reason} ({mask_text(detail)})"
