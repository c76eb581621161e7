"""The small HTTP server: one-click unsubscribe (RFC 8058) and a health check.

``POST /unsubscribe/<token>`` (what mail clients send for ``List-Unsubscribe-Post``) and the form on
``GET /unsubscribe/<token>`` record a suppression for the token's customer and channel. Tokens are
signed with ``AUTOMATION_SECRET_KEY``; a forged or altered token is refused.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy import Engine

from automation.errors import InputError
from automation.messages.unsubscribe import verify
from automation.outbox import suppressions

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 32rem; margin: 4rem auto; line-height: 1.5">
<h1 style="font-size: 1.4rem">{title}</h1>{body}</body></html>"""


def make_app(
    engine: Engine, secret: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> web.Application:
    async def unsubscribe_form(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if verify(secret, token) is None:
            return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", status=404)
        form = (
            f'<form method="post" action="/unsubscribe/{html.escape(token)}">'
            '<p>Stop receiving these messages?</p><button type="submit">Unsubscribe</button></form>'
        )
        return _page("Unsubscribe", form)

    async def unsubscribe(request: web.Request) -> web.Response:
        found = verify(secret, request.match_info["token"])
        if found is None:
            return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", status=404)
        customer_id, channel = found
        try:
            with engine.begin() as conn:
                suppressions.add(
                    conn, customer_id, channel, "unsubscribed", clock(), note="one-click unsubscribe"
                )
        except InputError:
            return _page("Link not valid", "<p>This unsubscribe link is no longer valid.</p>", status=404)
        return _page(
            "You are unsubscribed",
            f"<p>You will not receive {html.escape(channel)} messages from us any more.</p>",
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/unsubscribe/{token}", unsubscribe_form)
    app.router.add_post("/unsubscribe/{token}", unsubscribe)
    app.router.add_get("/healthz", healthz)
    return app


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body), status=status, content_type="text/html"
    )
