"""Click and open tracking of emails: signed tokens, the links rewritten, the open pixel (pure).

At send time the dispatcher passes a rendered email through :func:`track`: every http(s) link of
the HTML part (the ``href`` of ``<a>``) and of the text part (bare URLs) becomes
``<public URL>/c/<token>``, and with opens on a 1x1 image ``<public URL>/o/<token>`` goes before
``</body>``. The links are numbered in the order they first appear (HTML, then text; the same URL
twice is one link); the message keeps that list (the outbox row's ``payload["links"]``), and the
token names only the message and the number, so ``automation serve`` redirects only to a URL the
message really contained, never to one a token carries.

A token is ``<payload>.<signature>``, both urlsafe base64 without padding: the payload is
``c:<outbox id>:<link number>`` or ``o:<outbox id>``, the signature the first 16 bytes of its
HMAC-SHA256 under a key derived from ``AUTOMATION_SECRET_KEY`` (so a tracking token is never an
unsubscribe token, nor the other way round).

Never rewritten: the message's unsubscribe link (and any ``<public URL>/unsubscribe/`` link),
``mailto:``, ``tel:`` and every other scheme, and an ``<a>`` with ``data-track="off"`` (the
attribute itself is removed from the sent HTML, whatever its value).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from automation.errors import AutomationError
from automation.messages.store import RenderedMessage

if TYPE_CHECKING:
    from automation.config import Settings
    from automation.playbook.models import Tracking

log = logging.getLogger("automation.tracking")

__all__ = [
    "Tracked",
    "click_token",
    "open_token",
    "pixel",
    "playbook_tracking",
    "rewrite_html",
    "rewrite_text",
    "track",
    "tracking_url",
    "verify_click",
    "verify_open",
]

_SIGNATURE_BYTES = 16
_KEY_LABEL = b"automation tracking v1"

# an <a ...> start tag, its attribute values quoted or not (a ">" inside quotes does not end it)
_A_TAG = re.compile(r"""<a(?=[\s/>])(?:"[^"]*"|'[^']*'|[^'">])*>""", re.IGNORECASE)
_ATTRIBUTE = re.compile(
    r"""(?P<lead>\s+)(?P<name>[^\s"'>/=]+)(?:\s*=\s*(?P<value>"[^"]*"|'[^']*'|[^\s"'=<>`]+))?"""
)
# a bare URL in text: up to white space, a quote or an angle bracket
_TEXT_URL = re.compile(r"""https?://[^\s<>"']+""", re.IGNORECASE)
_TRAILING = ".,;:!?"
_CLOSERS = {")": "(", "]": "[", "}": "{"}
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _sign(secret: str, payload: str) -> str:
    signature = hmac.new(_key(secret), payload.encode("ascii"), hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    return f"{_b64(payload.encode('ascii'))}.{_b64(signature)}"


def _payload(secret: str, token: str) -> str | None:
    """The signed payload of ``token``, or None when it was not signed with ``secret``."""
    if len(token) > 200 or token.count(".") != 1:
        return None
    head, _ = token.split(".", 1)
    try:
        payload = _unb64(head).decode("ascii")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not payload.isprintable() or not hmac.compare_digest(_sign(secret, payload), token):
        return None
    return payload


def click_token(secret: str, outbox_id: int, index: int) -> str:
    """The token of link number ``index`` (from 0) of message ``outbox_id``."""
    return _sign(secret, f"c:{outbox_id}:{index}")


def open_token(secret: str, outbox_id: int) -> str:
    """The token of the open pixel of message ``outbox_id``."""
    return _sign(secret, f"o:{outbox_id}")


def verify_click(secret: str, token: str) -> tuple[int, int] | None:
    """(outbox id, link number) when ``token`` is a click token signed with ``secret``, else None."""
    payload = _payload(secret, token)
    match = re.fullmatch(r"c:([0-9]{1,18}):([0-9]{1,6})", payload or "")
    return (int(match[1]), int(match[2])) if match else None


def verify_open(secret: str, token: str) -> int | None:
    """The outbox id when ``token`` is an open token signed with ``secret``, else None."""
    payload = _payload(secret, token)
    match = re.fullmatch(r"o:([0-9]{1,18})", payload or "")
    return int(match[1]) if match else None


def _web(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def rewrite_html(text: str, replace_url: Callable[[str], str | None]) -> str:
    """``text`` with the ``href`` of every ``<a>`` replaced by ``replace_url(url)`` (the URL with its
    entities decoded; None keeps it). ``data-track`` attributes are removed; with ``off`` the link
    is kept as written."""

    def tag(match: re.Match[str]) -> str:
        source = match.group(0)
        attributes = list(_ATTRIBUTE.finditer(source, 2, len(source) - 1))
        off = any(
            a["name"].lower() == "data-track" and _value(a["value"]).strip().lower() == "off"
            for a in attributes
        )
        out, last = [], 0
        for a in attributes:
            name = a["name"].lower()
            if name == "data-track":
                out.append(source[last : a.start()])
                last = a.end()
            elif name == "href" and a["value"] is not None and not off:
                url = _value(a["value"]).strip()
                new = replace_url(url) if _web(url) else None
                if new is not None:
                    out.append(source[last : a.start("value")])
                    out.append(f'"{html.escape(new, quote=True)}"')
                    last = a.end("value")
        out.append(source[last:])
        return "".join(out)

    return _A_TAG.sub(tag, text)


def _value(raw: str | None) -> str:
    """An attribute's value as the browser reads it: unquoted, entities decoded."""
    if raw is None:
        return ""
    if raw[:1] in ("'", '"'):
        raw = raw[1:-1]
    return html.unescape(raw)


def rewrite_text(text: str, replace_url: Callable[[str], str | None]) -> str:
    """``text`` with every bare http(s) URL replaced by ``replace_url(url)`` (None keeps it). Trailing
    punctuation (``.``, ``,``, ``)`` without its ``(``, ...) is not part of the URL."""

    def url(match: re.Match[str]) -> str:
        found = match.group(0)
        cut = _trim(found)
        new = replace_url(found[:cut])
        return found if new is None else new + found[cut:]

    return _TEXT_URL.sub(url, text)


def _trim(url: str) -> int:
    """Where the URL ends once sentence punctuation and unbalanced closing brackets are cut off."""
    end = len(url)
    while end > 0:
        last = url[end - 1]
        if last in _TRAILING:
            end -= 1
        elif last in _CLOSERS and url.count(_CLOSERS[last], 0, end) < url.count(last, 0, end):
            end -= 1
        else:
            break
    return end


def pixel(base_url: str, secret: str, outbox_id: int) -> str:
    """The open-tracking image tag of message ``outbox_id``."""
    src = f"{base_url.rstrip('/')}/o/{open_token(secret, outbox_id)}"
    return f'<img src="{src}" width="1" height="1" alt="">'


def _with_pixel(text: str, tag: str) -> str:
    ends = list(_BODY_END.finditer(text))
    if not ends:
        return text + tag
    at = ends[-1].start()
    return text[:at] + tag + text[at:]


class Tracked(NamedTuple):
    """A rendered email with its links rewritten, and the original links, numbered from 0."""

    rendered: RenderedMessage
    links: tuple[str, ...]


@dataclass
class _Links:
    base: str
    secret: str
    outbox_id: int
    keep: frozenset[str]
    found: dict[str, int]

    def __call__(self, url: str) -> str | None:
        if not _web(url) or url in self.keep or url.startswith(f"{self.base}/unsubscribe/"):
            return None
        index = self.found.setdefault(url, len(self.found))
        return f"{self.base}/c/{click_token(self.secret, self.outbox_id, index)}"


def track(
    rendered: RenderedMessage,
    *,
    base_url: str,
    secret: str,
    outbox_id: int,
    clicks: bool,
    opens: bool,
    unsubscribe_url: str = "",
) -> Tracked:
    """``rendered`` (an email) with its links rewritten (``clicks``) and the open pixel (``opens``,
    HTML part only), for message ``outbox_id``; with both off, or no ``base_url``, it is unchanged."""
    base = base_url.strip().rstrip("/")
    if not base or not (clicks or opens):
        return Tracked(rendered, ())
    links = _Links(base, secret, outbox_id, frozenset({unsubscribe_url} - {""}), {})
    body, text = rendered.html, rendered.text
    if clicks:
        body = rewrite_html(body, links) if body else body
        text = rewrite_text(text, links) if text else text
    if opens and body:
        body = _with_pixel(body, pixel(base, secret, outbox_id))
    return Tracked(replace(rendered, html=body, text=text), tuple(links.found))


def playbook_tracking(paths: Sequence[Path]) -> dict[str, Tracking]:
    """Each playbook's ``tracking``, by name, from the playbook files under ``paths`` (for
    ``automation dispatch``, which sends without ticking). A file that does not load is left out
    with a warning: its emails go out with their links as written."""
    from automation.playbook.models import discover, load_playbook

    found: dict[str, Tracking] = {}
    for path in discover([p for p in paths if p.exists()]):
        try:
            playbook = load_playbook(path).playbook
        except (AutomationError, OSError) as exc:
            log.warning("%s: not loaded, its emails are not tracked: %s", path, str(exc).splitlines()[0])
            continue
        found[playbook.name] = playbook.tracking
    return found


def tracking_url(settings: Settings) -> str:
    """Where tracked links and the pixel point: ``AUTOMATION_PUBLIC_URL`` when it is set, else ""
    (links are sent as written: the default address, on this machine, is no public one)."""
    return settings.public_url.strip() if settings.environ.get("AUTOMATION_PUBLIC_URL", "").strip() else ""
