"""Click and open tracking on SQLite and PostgreSQL: the dispatcher rewrites links at send time and
stores them; ``automation serve`` redirects to them (aiohttp TestServer on 127.0.0.1) and records
clicks and opens as facts and events, each request once."""

from __future__ import annotations

import asyncio
import email
import re
from datetime import datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine, insert, select

from automation.channels.base import Delivery, DeliveryResult
from automation.channels.filebox import FileOutbox
from automation.db.tables import EVENT, FEEDBACK, OUTBOX
from automation.messages.tracking import click_token, open_token
from automation.outbox.dispatch import DispatchConfig, Dispatcher
from automation.playbook.models import Tracking
from automation.web.app import make_app
from automation.web.tracking import PIXEL
from tests.integration.known import NOW, TEMPLATES, T, customer

SECRET = "tracking-secret"
BASE = "https://t.example"
TOUR = "https://www.example.com/start"  # the links of templates/welcome.email.j2
SITE = "https://www.example.com"  # and of its layout's text footer
LINK = re.compile(r"https://t\.example/c/([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)")


class Recorder:
    name = "email"

    def __init__(self) -> None:
        self.sent: list[Delivery] = []

    async def send(self, delivery: Delivery) -> DeliveryResult:
        self.sent.append(delivery)
        return DeliveryResult(provider_id=f"p-{delivery.message_id}")

    async def aclose(self) -> None:
        return None


def _queue(engine: Engine, playbook: str = "lifecycle", cid: str = "ada") -> int:
    with engine.begin() as conn:
        conn.execute(insert(T["customer"]), [customer(cid)])
        return int(
            conn.execute(
                insert(OUTBOX)
                .values(
                    idempotency_key=f"{playbook}:{cid}:welcome",
                    playbook=playbook,
                    customer_id=cid,
                    channel="email",
                    template="welcome",
                    stage="acquisition",
                    segment="self_serve",
                    touch="none",
                    step="0",
                    payload={"timezone": "UTC"},
                    status="pending",
                    due_at=NOW,
                    created_at=NOW,
                )
                .returning(OUTBOX.c.id)
            ).scalar_one()
        )


def _send(
    engine: Engine,
    channel: Any,
    tracking: dict[str, Tracking] | None = None,
    tracking_url: str = BASE,
) -> None:
    config = DispatchConfig(worker_id="w", public_url=BASE, secret_key=SECRET, tracking_url=tracking_url)
    dispatcher = Dispatcher(
        engine,
        {"email": channel},
        TEMPLATES,
        config,
        clock=lambda: NOW,
        environ={},
        tracking={"lifecycle": Tracking()} if tracking is None else tracking,
    )
    asyncio.run(dispatcher.drain())


def _row(engine: Engine, outbox_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(OUTBOX).where(OUTBOX.c.id == outbox_id)).one()


def _events(engine: Engine, name: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(EVENT).where(EVENT.c.name == name).order_by(EVENT.c.id)))


def _feedback(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(FEEDBACK).order_by(FEEDBACK.c.id)))


async def _get(
    engine: Engine, paths: list[str], at: list[datetime], headers: dict[str, str] | None = None
) -> list[tuple[int, dict[str, str], bytes]]:
    """GET each path at its time; (status, headers, body) each, redirects not followed."""
    clock = list(at)
    now = [clock[0]]
    app = make_app(engine, SECRET, clock=lambda: now[0])
    out = []
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for path, when in zip(paths, clock, strict=True):
            now[0] = when
            response = await client.get(path, allow_redirects=False, headers=headers or {})
            out.append((response.status, dict(response.headers), await response.read()))
    return out


def get(engine: Engine, *paths: str, at: datetime | list[datetime] = NOW, **headers: str) -> Any:
    times = at if isinstance(at, list) else [at] * len(paths)
    return asyncio.run(_get(engine, list(paths), times, {k.replace("_", "-"): v for k, v in headers.items()}))


def test_links_are_rewritten_at_send_time_and_stored_with_the_message(engine: Engine) -> None:
    outbox_id = _queue(engine)
    recorder = Recorder()
    _send(engine, recorder)
    [delivery] = recorder.sent
    html, text = delivery.rendered.html or "", delivery.rendered.text or ""
    assert TOUR not in html and TOUR not in text
    assert LINK.findall(html) == [click_token(SECRET, outbox_id, 0)]
    assert LINK.findall(text) == [click_token(SECRET, outbox_id, 0), click_token(SECRET, outbox_id, 1)]
    assert delivery.unsubscribe_url and delivery.unsubscribe_url in html  # never rewritten
    assert f"{BASE}/o/" not in html  # opens are off by default
    row = _row(engine, outbox_id)
    assert row.status == "sent"
    assert row.payload == {"timezone": "UTC", "links": [TOUR, SITE]}


def test_tracking_off_or_no_public_url_sends_links_as_written(engine: Engine) -> None:
    off, unset, unknown = (
        _queue(engine, cid="a"),
        _queue(engine, "other", cid="b"),
        _queue(engine, "p3", cid="c"),
    )
    recorder = Recorder()
    _send(engine, recorder, {"lifecycle": Tracking(clicks=False), "other": Tracking()}, tracking_url="")
    _send(engine, recorder, {"lifecycle": Tracking(clicks=False)})  # p3: a playbook the worker does not know
    assert len(recorder.sent) == 3
    for delivery in recorder.sent:
        assert TOUR in (delivery.rendered.html or "") and TOUR in (delivery.rendered.text or "")
        assert "/c/" not in (delivery.rendered.html or "")
    for outbox_id in (off, unset, unknown):
        assert "links" not in _row(engine, outbox_id).payload


def test_a_click_redirects_to_the_link_and_is_recorded_once_per_second(engine: Engine) -> None:
    outbox_id = _queue(engine)
    _send(engine, Recorder())
    path = f"/c/{click_token(SECRET, outbox_id, 0)}"
    later = NOW + timedelta(minutes=5)
    answers = get(
        engine,
        path,
        path,
        path,
        at=[later, later + timedelta(milliseconds=400), later + timedelta(seconds=1)],
    )
    for status, headers, _ in answers:
        assert status == 302
        assert headers["Location"] == TOUR
        assert headers["Referrer-Policy"] == "no-referrer"
    row = _row(engine, outbox_id)
    assert (row.clicks, row.clicked_at) == (2, later)  # the repeat within the second is the same click
    events = _events(engine, "email_clicked")
    assert [e.occurred_at for e in events] == [later, later + timedelta(seconds=1)]
    assert events[0].customer_id == "ada"
    assert events[0].properties == {
        "source": "tracking",
        "playbook": "lifecycle",
        "stage": "acquisition",
        "step": "0",
        "template": "welcome",
        "idempotency_key": "lifecycle:ada:welcome",
        "url": TOUR,
    }


def test_bad_tokens_unknown_messages_and_links_out_of_range_answer_404(engine: Engine) -> None:
    outbox_id = _queue(engine)
    _send(engine, Recorder())
    good = click_token(SECRET, outbox_id, 0)
    head, signature = good.split(".")
    altered = f"{head}.{signature[:-2]}{'AA' if not signature.endswith('AA') else 'BB'}"
    other_link = f"{click_token(SECRET, outbox_id, 2).split('.')[0]}.{signature}"
    bad = [
        click_token("another-secret", outbox_id, 0),  # forged
        altered,
        other_link,  # the payload changed under a valid signature
        click_token(SECRET, outbox_id + 1000, 0),  # a message we never sent
        click_token(SECRET, outbox_id, 2),  # the message has two links
        open_token(SECRET, outbox_id),  # an open token
        "not-a-token",
    ]
    for status, headers, body in get(engine, *(f"/c/{token}" for token in bad)):
        assert status == 404 and "Location" not in headers
        assert b"not valid" in body
    assert _events(engine, "email_clicked") == [] and _feedback(engine) == []


def test_a_click_goes_only_to_the_url_stored_with_its_message(engine: Engine) -> None:
    first, second = _queue(engine, cid="a"), _queue(engine, cid="b")
    with engine.begin() as conn:  # the second message had other links
        conn.execute(
            OUTBOX.update()
            .where(OUTBOX.c.id == second)
            .values(
                payload={"links": ["https://b.example/x", "javascript:alert(1)"]}, status="sent", sent_at=NOW
            )
        )
    _send(engine, Recorder())
    answers = get(
        engine,
        f"/c/{click_token(SECRET, first, 0)}",
        f"/c/{click_token(SECRET, second, 0)}",
        f"/c/{click_token(SECRET, second, 1)}",  # not a web link: refused, never redirected
    )
    assert [(status, headers.get("Location")) for status, headers, _ in answers] == [
        (302, TOUR),
        (302, "https://b.example/x"),
        (404, None),
    ]


def test_a_stored_url_is_percent_encoded_for_the_location_header(engine: Engine) -> None:
    outbox_id = _queue(engine)
    with engine.begin() as conn:
        links = ['https://shop.example/q?name="Ada Lovelace"&city=Zürich']
        conn.execute(OUTBOX.update().where(OUTBOX.c.id == outbox_id).values(payload={"links": links}))
    [(status, headers, _)] = get(engine, f"/c/{click_token(SECRET, outbox_id, 0)}")
    assert status == 302
    assert headers["Location"] == "https://shop.example/q?name=%22Ada%20Lovelace%22&city=Z%C3%BCrich"
    assert [e.properties["url"] for e in _events(engine, "email_clicked")] == links


def test_opens_add_the_pixel_and_record_opens_with_the_machine_heuristic(engine: Engine) -> None:
    outbox_id = _queue(engine)
    recorder = Recorder()
    _send(engine, recorder, {"lifecycle": Tracking(clicks=False, opens=True)})
    html = recorder.sent[0].rendered.html or ""
    pixel = f'<img src="{BASE}/o/{open_token(SECRET, outbox_id)}" width="1" height="1" alt="">'
    assert pixel + "</body>" in html.replace("\n", "")
    assert TOUR in html  # clicks off
    path = f"/o/{open_token(SECRET, outbox_id)}"
    person = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
    prefetch = get(engine, path, at=NOW + timedelta(seconds=1), User_Agent=person)  # too soon for a reader
    human = get(
        engine, path, path, at=[NOW + timedelta(minutes=3)] * 2, User_Agent=person
    )  # twice, same second
    proxy = get(engine, path, at=NOW + timedelta(minutes=4), User_Agent=gmail)
    privacy = get(engine, path, at=NOW + timedelta(minutes=5), User_Agent="Mozilla/5.0")
    for status, headers, body in [*prefetch, *human, *proxy, *privacy]:
        assert (status, body) == (200, PIXEL)
        assert headers["Content-Type"] == "image/gif" and headers["Cache-Control"] == "no-store"
    events = _events(engine, "email_opened")
    assert [(e.occurred_at - NOW, e.properties["machine"]) for e in events] == [
        (timedelta(seconds=1), True),
        (timedelta(minutes=3), False),
        (timedelta(minutes=4), True),
        (timedelta(minutes=5), True),
    ]
    assert events[1].properties["template"] == "welcome" and events[1].properties["source"] == "tracking"
    row = _row(engine, outbox_id)
    assert (row.opens, row.machine_opens, row.opened_at) == (1, 3, NOW + timedelta(minutes=3))


def test_a_bad_open_token_still_answers_the_image_and_records_nothing(engine: Engine) -> None:
    outbox_id = _queue(engine)
    _send(engine, Recorder(), {"lifecycle": Tracking(opens=True)})
    answers = get(
        engine,
        f"/o/{open_token('another-secret', outbox_id)}",
        f"/o/{click_token(SECRET, outbox_id, 0)}",
        f"/o/{open_token(SECRET, outbox_id + 1000)}",  # signed, but no such message
        "/o/garbage",
        at=NOW + timedelta(minutes=3),
    )
    assert [(status, body) for status, _, body in answers] == [(200, PIXEL)] * 4
    assert _events(engine, "email_opened") == [] and _feedback(engine) == []
    assert _row(engine, outbox_id).opens == 0


def test_head_requests_answer_but_record_nothing(engine: Engine) -> None:
    outbox_id = _queue(engine)
    _send(engine, Recorder(), {"lifecycle": Tracking(opens=True)})

    async def head() -> list[int]:
        app = make_app(engine, SECRET, clock=lambda: NOW + timedelta(minutes=3))
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            c = await client.head(f"/c/{click_token(SECRET, outbox_id, 0)}", allow_redirects=False)
            o = await client.head(f"/o/{open_token(SECRET, outbox_id)}")
            return [c.status, o.status]

    assert asyncio.run(head()) == [302, 200]
    assert _feedback(engine) == []


def _parts(message: Message) -> dict[str, str]:
    out = {}
    for part in message.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out[part.get_content_subtype()] = payload.decode(part.get_content_charset() or "utf-8")
    return out


@pytest.mark.parametrize("opens", [False, True])
def test_the_file_outbox_writes_the_tracked_links(engine: Engine, tmp_path: Path, opens: bool) -> None:
    outbox_id = _queue(engine)
    box = FileOutbox(tmp_path / "outbox", from_address="news@shop.example")
    _send(engine, box, {"lifecycle": Tracking(opens=opens)})
    [eml] = (tmp_path / "outbox" / "email").glob("*.eml")
    parts = _parts(email.message_from_bytes(eml.read_bytes()))
    assert set(parts) == {"plain", "html"}
    token = click_token(SECRET, outbox_id, 0)
    for body in parts.values():
        assert f"{BASE}/c/{token}" in body and TOUR not in body
    assert (f"{BASE}/o/{open_token(SECRET, outbox_id)}" in parts["html"]) is opens
    assert _row(engine, outbox_id).payload["links"] == [TOUR, SITE]
