"""The small HTML pages ``automation serve`` answers people with (no scripts, no external assets)."""

from __future__ import annotations

import html

from aiohttp import web

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 32rem; margin: 4rem auto; line-height: 1.5">
<h1 style="font-size: 1.4rem">{title}</h1>{body}</body></html>"""


def page(title: str, body: str, status: int = 200) -> web.Response:
    """A page with an escaped ``title`` and ``body`` HTML that the caller has escaped."""
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body), status=status, content_type="text/html"
    )
