"""The aiohttp application of ``automation serve``: the routes of every concern, and a health check.

Each concern is a module of this package with a ``routes(...)`` function (``unsubscribe``,
``tracking``, the click redirect and open pixel of emails, ``segment``, the ``/v1`` ingestion
API, and ``providers``, the email providers' event webhooks); the app adds them, ``GET /healthz``
and ``GET /metrics`` (``metrics``: its middleware counts every request). ``serve`` runs the app
until SIGTERM or SIGINT, then lets the requests in flight finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy import Engine

from automation.errors import ConfigError
from automation.web import metrics, segment, tracking, unsubscribe
from automation.web.providers import ProviderWebhooks
from automation.web.providers import routes as provider_routes
from automation.web.twilio import routes as twilio_routes

log = logging.getLogger("automation.serve")

#: The app's request counts (also how ``serve`` knows which requests are in flight).
METRICS = web.AppKey("metrics", metrics.ServeMetrics)
#: Seconds aiohttp gives a request that started after the requests in flight were waited for (one
#: that came on a kept-alive connection in the same instant) before it is cut off without an answer.
CUT_OFF = 0.5
#: Seconds an idle connection is kept open: longer than a proxy's (nginx: 60 s), so the proxy closes first.
KEEPALIVE = 75.0
_POLL = 0.02


def make_app(
    engine: Engine,
    secret: str,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    write_keys: Sequence[str] = (),
    metrics_token: str = "",
    counts: metrics.ServeMetrics | None = None,
    provider_webhooks: ProviderWebhooks | None = None,
    twilio_auth_token: str = "",
    public_url: str = "http://127.0.0.1:8080",
) -> web.Application:
    """The application, its handlers bound to ``engine``, the signing ``secret``, ``clock``, the
    ingestion API's ``write_keys`` (none: the API is off) and the bearer token of ``/metrics`` (empty:
    it answers 404). ``counts``: where requests are counted (default: new counts). The email
    providers' event webhooks (``providers``) take their secrets from ``provider_webhooks`` (default:
    all off). Twilio's SMS webhooks (``twilio``) check signatures with ``twilio_auth_token`` (empty:
    they answer 404) over ``public_url`` + the request's path."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    counts = counts or metrics.ServeMetrics()
    app = web.Application(middlewares=[metrics.middleware(counts)])
    app[METRICS] = counts
    app.add_routes(unsubscribe.routes(engine, secret, clock))
    app.add_routes(tracking.routes(engine, secret, clock))
    app.add_routes(segment.routes(engine, write_keys, clock, counts))
    app.add_routes(provider_routes(engine, provider_webhooks or ProviderWebhooks(), clock))
    app.add_routes(twilio_routes(engine, twilio_auth_token, public_url, clock))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics.handler(counts, metrics_token))
    return app


def serve(
    app: web.Application,
    host: str,
    port: int,
    shutdown_timeout: float,
    announce: Callable[[], None],
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
    reuse_port: bool = False,
) -> None:
    """Serve ``app`` (from :func:`make_app`) on ``host:port`` until SIGTERM or SIGINT; ``announce()``
    once it listens. A port that cannot be opened is a ``ConfigError``.

    On the signal the listening socket is closed, so new connections are refused, and the requests in
    flight get ``shutdown_timeout`` seconds to finish, including those whose body is still arriving;
    each is answered (a ``/v1`` call after it is written) with ``Connection: close``. A request still
    running then is cancelled and its connection closed without an answer: a sender is never told of
    success for data that was not stored. A second signal stops the wait at once.

    ``stop_signals``: the signals that mean stop; ``reuse_port``: listen with ``SO_REUSEPORT``, next
    to other processes on the same port (``automation serve --workers``).
    """
    asyncio.run(_serve(app, host, port, shutdown_timeout, announce, stop_signals, reuse_port))


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    shutdown_timeout: float,
    announce: Callable[[], None],
    stop_signals: tuple[signal.Signals, ...],
    reuse_port: bool,
) -> None:
    counts = app[METRICS]
    draining = False

    async def close_when_draining(request: web.BaseRequest, response: web.StreamResponse) -> None:
        if draining:  # the headers are made before this hook: say it as well as do it
            response.force_close()
            response.headers["Connection"] = "close"

    app.on_response_prepare.append(close_when_draining)
    # aiohttp's own wait (shutdown_timeout) drops request bodies that arrive after it begins, so the
    # wait for requests in flight happens here, before the runner's cleanup
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=CUT_OFF, keepalive_timeout=KEEPALIVE
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def signalled() -> None:
        (hurry if stop.is_set() else stop).set()

    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        for sig in stop_signals:
            loop.add_signal_handler(sig, signalled)
        announce()
        await stop.wait()
        draining = True
        await site.stop()
        log.info(
            "stopping: no new connections; requests in flight (%d) get up to %gs to finish",
            counts.in_flight,
            shutdown_timeout,
        )
        deadline = loop.time() + shutdown_timeout
        while counts.in_flight and not hurry.is_set() and loop.time() < deadline:
            await asyncio.sleep(_POLL)
        if counts.in_flight:
            log.warning("requests still in flight (%d) are cut off without an answer", counts.in_flight)
    finally:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
