"""Shared HTTP plumbing for the SMS, webhook and CRM channels.

* :func:`make_client` builds one ``httpx.AsyncClient`` per process, on the aiohttp transport
  (``httpx-aiohttp``), with a connection limit and a per-operation timeout (connect, read, pool
  wait). Its ``post_bytes`` posts prebuilt bytes straight through the transport's aiohttp session
  (what webhooks use) and its ``send_direct`` sends an httpx request past the client's layers.
* :func:`raise_for_delivery` turns an HTTP response into nothing (2xx) or a delivery error.
* :func:`send_errors` turns network failures (timeouts, refused or dropped connections, protocol
  errors) into :class:`~automation.errors.TransientDeliveryError`.

Error messages name the host and the status, never the full URL (webhook URLs often carry tokens), and
body excerpts go through :func:`automation.masking.mask_text`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, NamedTuple

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions
from multidict import CIMultiDict

from automation.channels.base import parse_retry_after, transient_status
from automation.errors import PermanentDeliveryError, TransientDeliveryError
from automation.masking import mask_text

__all__ = ["EXCERPT_CHARS", "Answer", "body_excerpt", "make_client", "raise_for_delivery", "send_errors"]

EXCERPT_CHARS = 200  # how much of an error response body goes into the error message


class _NoCookies(httpx.Cookies):
    """Delivery requests never carry or keep cookies (and skip the cost of parsing them)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


_DECODED = ("content-encoding", "content-length")  # describe the body as sent, not as read


class Answer(NamedTuple):
    """A read response, its body decoded (what :meth:`_DeliveryClient.post_bytes` returns)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str

    def response(self) -> httpx.Response:
        """The same as an httpx response (for error reporting: :func:`raise_for_delivery`)."""
        return httpx.Response(
            self.status,
            headers=[(k, v) for k, v in self.headers.items() if k.lower() not in _DECODED],
            content=self.body,
            request=httpx.Request("POST", self.url),
        )


class _DeliveryClient(httpx.AsyncClient):
    """An AsyncClient without a cookie jar: webhooks and provider APIs are stateless."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cookies = _NoCookies()

    def _merge_cookies(self, cookies: Any = None) -> Any:
        return None

    def send_direct(self, request: httpx.Request) -> Awaitable[httpx.Response]:
        """Send a complete request straight through the transport and return the read response: delivery
        needs none of the client's redirect, auth, cookie or event-hook layers, and skipping them is a
        large share of the cost. Timeouts come from the request's ``timeout`` extension.

        Not a coroutine itself: it hands back the transport's, one frame less for every resumption."""
        transport = self._transport
        if isinstance(transport, _DeliveryTransport) and transport.proxy is None:
            return transport.send_read(request)
        return self._send_through(request)

    def post_bytes(self, url: str, headers: Mapping[str, str], body: bytes) -> Awaitable[Answer] | None:
        """POST ``body`` to ``url`` straight through aiohttp, with no httpx request or response built:
        the answer comes back as an :class:`Answer`. None when this client cannot (a proxy, or another
        transport): use :meth:`send_direct` then. Network errors are aiohttp's or ``TimeoutError``
        (:class:`send_errors` maps both)."""
        transport = self._transport
        if not isinstance(transport, _DeliveryTransport) or transport.proxy is not None:
            return None
        return transport.post_bytes(url, headers, body, self.timeout)

    async def _send_through(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response


_CACHE_LIMIT = 256  # distinct URLs and timeouts remembered (webhook targets are few)


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


class _DeliveryTransport(AiohttpTransport):
    """httpx-aiohttp's transport with a shorter path for delivery (:meth:`send_read`): the request goes to
    aiohttp with its headers as they are, the target URL and the timeout object are reused between
    requests to the same place, and the body is read before the response is handed back (every delivery
    reads it), so no stream adapter sits between aiohttp and httpx. ``handle_async_request`` (what
    ``client.send()`` uses) is the unchanged httpx-aiohttp path."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._urls: dict[str, yarl.URL] = {}
        self._timeouts: dict[tuple[Any, Any, Any], aiohttp.ClientTimeout] = {}

    def get_client(self) -> aiohttp.ClientSession:
        """The base transport's session, but without a cookie jar: nothing a receiver sets is kept."""
        connector = aiohttp.TCPConnector(
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            limit=self.limits.max_connections or 100,  # aiohttp's default when none is set
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    def _timeout(self, limits: Mapping[str, Any]) -> aiohttp.ClientTimeout:
        key = (limits.get("connect"), limits.get("read"), limits.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
            _remember(self._timeouts, key, timeout)
        return timeout

    def _url(self, text: str) -> yarl.URL | str:
        url: yarl.URL | str | None = self._urls.get(text)
        if url is None:
            try:
                url = yarl.URL(text)
            except ValueError:
                return text  # aiohttp raises its own error for it
            _remember(self._urls, text, url)
        return url

    def _session(self) -> aiohttp.ClientSession:
        session = self.client
        if not isinstance(session, aiohttp.ClientSession):
            session = self.client = self.get_client()
        return session

    async def post_bytes(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout: httpx.Timeout
    ) -> Answer:
        """See :meth:`_DeliveryClient.post_bytes`."""
        async with self._session().request(
            "POST",
            self._url(url),
            headers=headers,
            data=body,
            allow_redirects=False,
            compress=False,
            timeout=self._timeout(timeout.as_dict()),
        ) as answer:
            content = await answer.read()
        return Answer(answer.status, answer.headers, content, url)

    async def send_read(self, request: httpx.Request) -> httpx.Response:
        session = self._session()
        extensions = request.extensions
        timeout = self._timeout(extensions.get("timeout") or {})
        url = self._url(str(request.url))
        raw = request.headers.raw
        try:  # ASCII, as nearly always; else the encoding httpx settles on
            headers = CIMultiDict([(k.decode("ascii"), v.decode("ascii")) for k, v in raw])
        except UnicodeDecodeError:
            encoding = request.headers.encoding
            headers = CIMultiDict([(k.decode(encoding), v.decode(encoding)) for k, v in raw])
        try:
            content: bytes | None = request.content or None
        except httpx.RequestNotRead:
            content = await request.aread() or None
        with map_aiohttp_exceptions():
            async with session.request(
                request.method,
                url,
                headers=headers,
                data=content,
                allow_redirects=False,
                auto_decompress=False,  # httpx decodes, as on the regular path
                compress=False,
                timeout=timeout,
                server_hostname=extensions.get("sni_hostname"),
            ) as answer:
                body = await answer.read()
        response_extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if answer.reason:
            response_extensions["reason_phrase"] = answer.reason.encode()
        response = httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            stream=httpx.ByteStream(body),
            request=request,
            extensions=response_extensions,
        )
        response.read()  # decodes a Content-Encoding, as aread() does
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
    return _DeliveryClient(
        transport=_DeliveryTransport(limits=limits),
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


class send_errors:  # used like a function: ``with send_errors("webhook"):``
    """Wrap a request: network failures become ``TransientDeliveryError``.

    Timeouts, refused and dropped connections, protocol errors (httpx's ``TransportError`` family, the
    aiohttp client errors the transport lets through, ``asyncio`` timeouts) are transient. A URL that can
    never work (unsupported scheme, malformed) is permanent. Delivery errors raised inside pass through.
    Messages never quote the URL (it may carry a token).
    """

    __slots__ = ("what",)

    def __init__(self, what: str = "request") -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        what = self.what
        if isinstance(exc, httpx.UnsupportedProtocol | aiohttp.NonHttpUrlClientError):
            raise PermanentDeliveryError(
                f"{what} failed: unsupported URL scheme (use http or https)"
            ) from exc
        if isinstance(exc, httpx.InvalidURL | aiohttp.InvalidURL):
            raise PermanentDeliveryError(f"{what} failed: invalid URL") from exc
        if isinstance(exc, httpx.TransportError | aiohttp.ClientError):
            raise TransientDeliveryError(f"{what} failed: {_describe(exc)}") from exc
        if isinstance(exc, TimeoutError):  # asyncio.timeout() / wait_for() around the request
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
