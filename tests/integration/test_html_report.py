"""The HTML report on the known data set, on SQLite and PostgreSQL: content, nothing from outside."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from sqlalchemy import Engine

from automation.authoring.preview_html import build_report
from automation.authoring.validate import check_playbook
from automation.config import Settings
from tests.conftest import ROOT
from tests.integration.known import CUSTOMERS, NOW, TEMPLATES
from tests.integration.test_preview import table_counts

VOID = {"meta", "br", "img", "link", "input", "hr", "col", "source", "wbr", "area", "base", "embed"}


class Page(HTMLParser):
    """Collects elements (tag, attributes, text) and checks that tags nest properly."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'} at {self.getpos()}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def by_id(self, ident: str) -> dict[str, str] | None:
        return next((a for _, a in self.elements if a.get("id") == ident), None)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def report(engine: Engine) -> str:
    compiled = check_playbook(ROOT / "playbooks" / "lifecycle.yaml", TEMPLATES, NOW)
    with engine.connect() as conn:
        html = build_report(conn, compiled, TEMPLATES, Settings(), limit=0)
        conn.rollback()
    return html


def outside(value: str) -> bool:
    return bool(re.match(r"\s*(https?:)?//", value, re.I))


def test_report_content(data: Engine) -> None:
    before = table_counts(data)
    html = report(data)
    assert table_counts(data) == before, "the report must not write"

    page = parse(html)
    assert page.doctype and not page.errors and not page.stack, (page.errors, page.stack)
    for section in ("matrix", "funnel", "plan", "reasons", "templates"):
        assert page.by_id(section) is not None, section

    # the matrix: one row per segment, a cell per stage holding the count, shaded by it
    cells = {(row, a["data-stage"]): a["style"] for row, a in _cells(page)}
    assert len(cells) == 3 * 5
    assert re.search(
        r'data-segment="self_serve">.*?data-stage="acquisition" style="[^"]+">4</td>', html, re.S
    )
    assert re.search(r'data-segment="strategic">.*?data-stage="loyalty" style="[^"]+">2</td>', html, re.S)
    assert re.search(r'data-segment="growth">.*?data-stage="retention" style="[^"]+">1</td>', html, re.S)
    assert cells[("self_serve", "acquisition")] != cells[("self_serve", "loyalty")]  # intensity by count
    assert "rgba(47,111,79,0.000)" in cells[("growth", "acquisition")]  # an empty cell is not shaded

    # the funnel, in stage order, with the known counts
    funnel = re.findall(
        r'class="bar-row funnel-stage" data-stage="([^"]+)">.*?<span class="count">(\d+)</span>', html, re.S
    )
    assert funnel == [
        ("loyalty", "3"),
        ("retention", "2"),
        ("conversion", "1"),
        ("acquisition", "4"),
        ("(none)", "1"),
    ]

    # held back: quiet hours, consent, no email address, no account owner
    reasons = dict(
        re.findall(
            r'class="bar-row reason" data-reason="([^"]+)">.*?<span class="count">(\d+)</span>', html, re.S
        )
    )
    assert reasons == {
        "quiet hours": "1",
        "no email address": "1",
        "consent": "1",
        "no account owner: owner_email is empty": "1",
    }

    # per channel and day: today's messages, tokyo's deferred welcome on the day it may go (23:00 UTC)
    email_row = re.search(r'data-channel="email">(.*?)</tr>', html, re.S)
    assert email_row is not None
    days = re.findall(r'class="day-cell">(\d+)<', email_row.group(1))
    assert len(days) == 7 and days[0] == "6" and set(days[1:]) == {"0"}
    assert "Sun 22 Nov" in html

    # every template of the playbook, rendered for sample customers, each channel shown its own way
    templates = set(re.findall(r'class="template" data-template="([^"]+)" data-channel="([^"]+)"', html))
    assert ("welcome", "email") in templates and ("feedback_survey", "sms") in templates
    assert ("loyalty_points", "webhook") in templates and ("vip_thank_you_call", "task") in templates
    assert len(templates) == 12  # every message step of lifecycle.yaml
    iframes = [a for tag, a in page.elements if tag == "iframe"]
    assert iframes and all(a.get("sandbox") == "" and "<html" in a["srcdoc"] for a in iframes)
    welcome = next(a for a in iframes if "Welcome" in a.get("title", ""))
    assert "Newbie" in welcome["srcdoc"] and "/unsubscribe/" in welcome["srcdoc"]
    assert re.search(r'class="muted sms-meta">GSM-7, 1 segment\(s\)', html)
    assert 'class="subject task-title">' in html and "&#34;event&#34;: &#34;loyalty_points&#34;" in html
    assert "quiet hours until 08:00 Asia/Tokyo" in html  # the sample tells why its message waits

    # addresses are masked everywhere, also inside rendered messages
    for customer in CUSTOMERS:
        if customer["email"]:
            assert customer["email"] not in html
    assert "owner@example.com" not in html and "+14155550100" not in html
    assert "n***@example.com" in html


def _cells(page: Page) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = []
    segment = ""
    for tag, attrs in page.elements:
        if tag == "tr" and "data-segment" in attrs:
            segment = attrs["data-segment"]
        elif tag == "td" and attrs.get("class") == "cell":
            out.append((segment, attrs))
    return out


def test_report_loads_nothing_from_outside(data: Engine) -> None:
    html = report(data)
    page = parse(html)
    assert not [(t, a) for t, a in page.elements if t == "script" or t == "base"]
    for tag, attrs in page.elements:
        for name in ("src", "href", "action", "data", "poster"):
            assert not outside(attrs.get(name, "")), (tag, attrs)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html), "no CSS resources from outside"
    meta = [a for t, a in page.elements if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert meta and "default-src 'none'" in meta[0]["content"]

    # inside the rendered emails only links point outside (the site and the unsubscribe link)
    emails = [a["srcdoc"] for t, a in page.elements if t == "iframe"]
    unsubscribe = 0
    for srcdoc in emails:
        inner = parse(srcdoc)
        for tag, attrs in inner.elements:
            assert tag not in ("script", "iframe", "object", "embed"), tag
            if tag in ("img", "link", "source", "video", "audio"):
                assert not outside(attrs.get("src", "") + attrs.get("href", "")), (tag, attrs)
            if tag == "a" and "/unsubscribe/" in attrs.get("href", ""):
                unsubscribe += 1
    assert unsubscribe == len(emails)
