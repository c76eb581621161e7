"""The aiohttp application of ``automation serve``: the routes of every concern, and a health check.

Each concern is a module of this package with a ``routes(...)`` function (``unsubscribe``, and
``segment``, the ``/v1`` ingestion API); the app adds them and ``GET /healthz``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy import Engine

from automation.web import segment, unsubscribe


def make_app(
    engine: Engine,
    secret: str,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    write_keys: Sequence[str] = (),
) -> web.Application:
    """The application, its handlers bound to ``engine``, the signing ``secret``, ``clock`` and the
    ingestion API's ``write_keys`` (none: the API is off)."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.add_routes(unsubscribe.routes(engine, secret, clock))
    app.add_routes(segment.routes(engine, write_keys, clock))
    app.router.add_get("/healthz", healthz)
    return app
