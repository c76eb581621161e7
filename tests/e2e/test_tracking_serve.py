"""Click and open tracking as a user runs it: ``automation run --once`` writes tracked emails into the
file outbox, ``automation serve`` (a subprocess on 127.0.0.1) redirects their links and records the
click and the open; a headless Chromium that clicks a link of the email's HTML lands on the page the
template linked to (a local server on 127.0.0.1).
"""

from __future__ import annotations

import email
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine, create_engine, select

from automation.db.tables import EVENT, OUTBOX
from automation.web.tracking import PIXEL
from tests.e2e.test_html_chromium import chromium
from tests.e2e.test_segment_client import _free_port
from tests.e2e.worker_tools import Proc, cli, cli_env, wait_until

AT = "2026-11-22T12:00:00Z"
WAIT = 60.0  # seconds: upper bound for the server to start here
LANDING_TITLE = "Landing page of the test"

PLAYBOOK = """\
name: hello
tracking:
  clicks: true
  opens: true
segments:
  - name: everyone
    touch: none
stages:
  - name: all
    when: "true"
programs:
  all:
    none:
      - email: hello
"""

TEMPLATE = """\
{% block subject %}Hello{% endblock %}
{% block text %}Hi {{ customer.first_name }}, see {{ landing }}?from=text.
Write to us: mailto:help@shop.example
Unsubscribe: {{ unsubscribe_url }}
{% endblock %}
{% block html %}<!doctype html><html><head><title>Hello</title></head><body>
<p>Hi {{ customer.first_name }},</p>
<p><a id="go" href="{{ landing }}?from=email&n=1">Have a look</a></p>
<p><a id="private" data-track="off" href="{{ landing }}?private=1">Not counted</a></p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
{% endblock %}
"""


class Landing(BaseHTTPRequestHandler):
    """The page the email links to; remembers the paths asked for."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        body = f"<!doctype html><html><head><title>{LANDING_TITLE}</title></head><body>here</body></html>"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def landing() -> Iterator[str]:
    Landing.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Landing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/landing"
    finally:
        server.shutdown()
        server.server_close()


class Project:
    def __init__(self, cwd: Path, base: str) -> None:
        self.cwd, self.base = cwd, base
        self.engine: Engine = create_engine(f"sqlite:///{cwd / 'automation.db'}")

    def email(self) -> dict[str, str]:
        [eml] = (self.cwd / "outbox" / "email").glob("*.eml")
        return _parts(email.message_from_bytes(eml.read_bytes()))

    def events(self, name: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(EVENT).where(EVENT.c.name == name).order_by(EVENT.c.id)))


def _parts(message: Message) -> dict[str, str]:
    out = {}
    for part in message.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out[part.get_content_subtype()] = payload.decode(part.get_content_charset() or "utf-8")
    return out


@pytest.fixture
def project(tmp_path: Path, landing: str, procs: list[Proc]) -> Iterator[Project]:
    """A project with one customer and one tracked email sent into the file outbox; serve running."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "hello.yaml").write_text(PLAYBOOK)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "hello.email.j2").write_text(TEMPLATE.replace("{{ landing }}", landing))
    (tmp_path / "customers.csv").write_text(
        "id,email,first_name,timezone,signed_up_at\ncus_1,ada@example.com,Ada,UTC,2026-11-01T00:00:00Z\n"
    )
    env = cli_env(
        AUTOMATION_PUBLIC_URL=base,
        AUTOMATION_SECRET_KEY="tracking-e2e",
        AUTOMATION_TEMPLATES_DIR="templates",
        AUTOMATION_PLAYBOOKS_DIR="playbooks",
    )
    for args in (("db", "upgrade"), ("import", "customers", "customers.csv"), ("run", "--once", "--at", AT)):
        result = cli(*args, cwd=tmp_path, env=env)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    proc = Proc(
        ["serve", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=env, stdout=tmp_path / "out"
    )
    procs.append(proc)
    wait_until(lambda: f"127.0.0.1:{port}" in proc.stdout or not proc.alive(), WAIT, "the server to listen")
    assert proc.alive(), proc.stderr
    project = Project(tmp_path, base)
    try:
        yield project
    finally:
        project.engine.dispose()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _get(url: str) -> tuple[int, Any, bytes]:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_the_sent_email_links_to_serve_which_redirects_and_records(project: Project, landing: str) -> None:
    parts = project.email()
    html, text = parts["html"], parts["plain"]
    clicks = re.findall(rf'href="({re.escape(project.base)}/c/[^"]+)"', html)
    assert len(clicks) == 1  # the opted-out link and the unsubscribe link are as written
    assert f'href="{landing}?private=1"' in html and "data-track" not in html
    assert f'href="{project.base}/unsubscribe/' in html
    assert f"{landing}?from=email" not in html and f"{landing}?from=text" not in text
    assert "mailto:help@shop.example" in text
    [text_click] = re.findall(rf"{re.escape(project.base)}/c/\S+?(?=\.\s)", text)
    [pixel] = re.findall(
        rf'<img src="({re.escape(project.base)}/o/[^"]+)" width="1" height="1" alt="">', html
    )

    status, headers, _ = _get(clicks[0])
    assert status == 302
    assert headers["Location"] == f"{landing}?from=email&n=1"  # the &amp; of the HTML read as &
    assert headers["Referrer-Policy"] == "no-referrer"
    status, headers, _ = _get(text_click)
    assert (status, headers["Location"]) == (302, f"{landing}?from=text")
    status, headers, body = _get(pixel)
    assert (status, body, headers["Content-Type"]) == (200, PIXEL, "image/gif")
    tampered = clicks[0][:-3] + ("AAA" if not clicks[0].endswith("AAA") else "BBB")
    status, headers, _ = _get(tampered)
    assert status == 404 and "Location" not in headers

    assert [e.properties["url"] for e in project.events("email_clicked")] == [
        f"{landing}?from=email&n=1",
        f"{landing}?from=text",
    ]
    opened = wait_until(lambda: project.events("email_opened"), 10, "the open to be recorded")
    assert [(e.customer_id, e.properties["machine"]) for e in opened] == [("cus_1", False)]
    with project.engine.connect() as conn:
        row = conn.execute(select(OUTBOX.c.clicks, OUTBOX.c.opens, OUTBOX.c.payload)).one()
    assert (row.clicks, row.opens) == (2, 1)
    assert row.payload["links"] == [f"{landing}?from=email&n=1", f"{landing}?from=text"]


def test_chromium_clicking_a_tracked_link_lands_on_the_linked_page(
    project: Project, landing: str, tmp_path: Path
) -> None:
    html = project.email()["html"]
    # the email's HTML as a mail program shows it, with a click on its tracked link
    page = tmp_path / "email.html"
    page.write_text(html.replace("</body>", "<script>document.getElementById('go').click()</script></body>"))
    result = chromium(
        "--virtual-time-budget=10000", "--dump-dom", page.as_uri(), profile=tmp_path / "profile"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"<title>{LANDING_TITLE}</title>" in result.stdout
    assert "/landing?from=email&n=1" in Landing.seen
    clicked = project.events("email_clicked")
    assert [e.properties["url"] for e in clicked] == [f"{landing}?from=email&n=1"]
