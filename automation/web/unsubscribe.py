"""One-click unsubscribe (RFC 8058).

``POST /unsubscribe/<token>`` (what mail clients send for ``List-Unsubscribe-Post``) and the form on
``GET /unsubscribe/<token>`` record a suppression for the token's customer and channel. Tokens are
signed with ``AUTOMATION_SECRET_KEY``; a forged or altered token is refused with 404.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import datetime

from aiohttp import web
from sqlalchemy import Engine

from automation.errors import InputError
from automation.messages.unsubscribe import verify
from automation.outbox import suppressions
from automation.web.pages import page

_NOT_VALID = "<p>This unsubscribe link is not valid.</p>"


def routes(engine: Engine, secret: str, clock: Callable[[], datetime]) -> list[web.RouteDef]:
    """The unsubscribe form and its one-click ``POST``."""

    async def unsubscribe_form(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if verify(secret, token) is None:
            return page("Link not valid", _NOT_VALID, status=404)
        form = (
            f'<form method="post" action="/unsubscribe/{html.escape(token)}">'
            '<p>Stop receiving these messages?</p><button type="submit">Unsubscribe</button></form>'
        )
        return page("Unsubscribe", form)

    async def unsubscribe(request: web.Request) -> web.Response:
        found = verify(secret, request.match_info["token"])
        if found is None:
            return page("Link not valid", _NOT_VALID, status=404)
        customer_id, channel = found
        try:
            with engine.begin() as conn:
                suppressions.add(
                    conn, customer_id, channel, "unsubscribed", clock(), note="one-click unsubscribe"
                )
        except InputError:
            return page("Link not valid", "<p>This unsubscribe link is no longer valid.</p>", status=404)
        return page(
            "You are unsubscribed",
            f"<p>You will not receive {html.escape(channel)} messages from us any more.</p>",
        )

    return [
        web.get("/unsubscribe/{token}", unsubscribe_form),
        web.post("/unsubscribe/{token}", unsubscribe),
    ]
