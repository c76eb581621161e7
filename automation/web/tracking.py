"""Our own click and open tracking of emails: ``GET /c/<token>`` and ``GET /o/<token>``.

``/c/<token>`` looks up link number N of the token's message (the links the dispatcher stored with
the message when it sent it, ``payload["links"]``), records a click with its URL and redirects
there (302, ``Referrer-Policy: no-referrer``). A forged or altered token, an unknown message or a
number out of range answer 404, never a redirect: the server only sends people to a URL the message
really contained.

``/o/<token>`` always answers a 1x1 transparent GIF (``Cache-Control: no-store``), at once, and
records an open for a valid token; a bad token gets the same image and records nothing (so the
answer tells nothing about tokens). An open looks machine-made (``machine``, counted apart on the
message) when it comes within :data:`MACHINE_WINDOW` of sending, or from a user agent of
:data:`MACHINE_AGENTS` (mail providers' image proxies and link scanners).

Each request is its own fact, except a repeat within the same second (a browser's double
request): the fact's ``unique`` is the message, the link number and the second of the request.
``HEAD`` answers as ``GET`` does and records nothing. Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import SQLAlchemyError

from automation.db.tables import OUTBOX
from automation.feedback.record import Report, record
from automation.masking import mask_text
from automation.messages.tracking import verify_click, verify_open
from automation.web.group_commit import GroupCommit
from automation.web.pages import page

log = logging.getLogger("automation.tracking")

#: A transparent 1x1 GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
#: An open this soon after sending is a machine's: a person does not read a message within 2 s.
MACHINE_WINDOW = timedelta(seconds=2)
#: Parts of user agents (compared in lower case) that fetch images without anyone reading:
MACHINE_AGENTS = (
    "googleimageproxy",  # Gmail fetches (and caches) images through its proxy, "via ggpht.com"
    "ggpht.com",
    "yahoomailproxy",  # Yahoo Mail's image proxy
    "bingpreview",  # Outlook.com and Microsoft Defender (Safe Links) previews and scans
    "microsoft office existence discovery",  # Office checking that a link exists
    "mimecast",  # mail security gateways that fetch every image and link
    "barracuda",
    "proofpoint",
)
#: Apple Mail Privacy Protection fetches through Apple's proxies with a bare "Mozilla/5.0" (no
#: engine, no version): that exact agent, or none at all, is taken for a machine.
MACHINE_EXACT = ("", "mozilla/5.0")
#: How long an open waits for its record before the image is answered anyway (the record goes on).
OPEN_WAIT = 0.5

_NOT_VALID = "<p>This link is not valid.</p>"
_NO_STORE = {"Cache-Control": "no-store"}


def machine_agent(user_agent: str) -> bool:
    """Whether ``user_agent`` is one of the image proxies and scanners of :data:`MACHINE_AGENTS`."""
    agent = user_agent.strip().lower()
    return agent in MACHINE_EXACT or any(part in agent for part in MACHINE_AGENTS)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _click(outbox_id: int, index: int, now: datetime, store: bool, conn: Connection) -> str | None:
    """The message's link number ``index`` (None: no such message or link); the click recorded."""
    query = select(OUTBOX.c.payload).where(OUTBOX.c.id == outbox_id, OUTBOX.c.channel == "email")
    payload = conn.execute(query).scalar()
    links = payload.get("links") if isinstance(payload, dict) else None
    if not isinstance(links, list) or not 0 <= index < len(links):
        return None
    url = links[index]
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return None
    if store:
        report = Report(
            source="tracking",
            channel="email",
            kind="clicked",
            occurred_at=now,
            unique=f"click:{outbox_id}:{index}:{int(now.timestamp())}",
            outbox_id=outbox_id,
            url=url,
            detail={"link": index},
        )
        record(conn, report, now)
    return url


def _open(outbox_id: int, now: datetime, user_agent: str, conn: Connection) -> bool:
    """Record an open of the message (False: no such message)."""
    query = select(OUTBOX.c.sent_at).where(OUTBOX.c.id == outbox_id, OUTBOX.c.channel == "email")
    found = conn.execute(query).first()
    if found is None:
        return False
    sent_at = found.sent_at
    soon = sent_at is not None and now - _aware(sent_at) < MACHINE_WINDOW
    machine = soon or machine_agent(user_agent)
    report = Report(
        source="tracking",
        channel="email",
        kind="opened",
        occurred_at=now,
        unique=f"open:{outbox_id}:{int(now.timestamp())}",
        outbox_id=outbox_id,
        machine=machine,
        detail={"user_agent": user_agent[:200]} if user_agent else {},
    )
    record(conn, report, now)
    return True


def _in_transaction(engine: Engine, job: Callable[[Connection], Any]) -> Any:
    with engine.begin() as conn:
        return job(conn)


def _redirect_target(url: str) -> str:
    """``url`` fit for a ``Location`` header: spaces, quotes, controls and non-ASCII percent-encoded."""
    return quote(url, safe=":/?#[]@!$&'()*+,;=%~")


def routes(engine: Engine, secret: str, clock: Callable[[], datetime]) -> list[web.RouteDef]:
    """``GET /c/<token>`` and ``GET /o/<token>`` (see the module's docstring)."""
    # SQLite takes one writer at a time: requests that arrive together share a commit
    group = GroupCommit[Any](engine) if engine.dialect.name == "sqlite" else None
    pending: set[asyncio.Future[Any]] = set()

    async def run(job: Callable[[Connection], Any]) -> Any:
        if group is not None:
            return await group.run(job)
        return await asyncio.to_thread(_in_transaction, engine, job)

    async def click(request: web.Request) -> web.Response:
        found = verify_click(secret, request.match_info["token"])
        if found is None:
            return page("Link not valid", _NOT_VALID, status=404)
        outbox_id, index = found
        job = functools.partial(_click, outbox_id, index, clock(), request.method == "GET")
        try:
            url = await run(job)
        except SQLAlchemyError as exc:
            log.warning("a click could not be looked up: %s", mask_text(str(exc)))
            return page("Try again", "<p>This link cannot be followed right now.</p>", status=503)
        if url is None:
            return page("Link not valid", _NOT_VALID, status=404)
        headers = {"Location": _redirect_target(url), "Referrer-Policy": "no-referrer", **_NO_STORE}
        return web.Response(status=302, headers=headers)

    def done(task: asyncio.Future[Any]) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("an open could not be recorded: %s", mask_text(str(task.exception())))

    async def opened(request: web.Request) -> web.Response:
        outbox_id = verify_open(secret, request.match_info["token"])
        if outbox_id is not None and request.method == "GET":
            agent = request.headers.get("User-Agent", "")
            task = asyncio.ensure_future(run(functools.partial(_open, outbox_id, clock(), agent)))
            pending.add(task)
            task.add_done_callback(done)
            # the image does not wait long for the database: the record goes on meanwhile
            await asyncio.wait([task], timeout=OPEN_WAIT)
        return web.Response(body=PIXEL, content_type="image/gif", headers=_NO_STORE)

    return [web.get("/c/{token}", click), web.get("/o/{token}", opened)]
