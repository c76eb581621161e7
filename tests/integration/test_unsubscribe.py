"""One-click unsubscribe over real HTTP on 127.0.0.1: suppression recorded, forged links refused."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine, select

from automation.db.tables import SUPPRESSION
from automation.messages.unsubscribe import token, unsubscribe_url, verify
from automation.web.app import make_app
from tests.integration.known import NOW

SECRET = "test-secret"


async def _post(engine: Engine, path: str, data: str = "List-Unsubscribe=One-Click") -> tuple[int, str]:
    async with TestClient(
        TestServer(make_app(engine, SECRET, clock=lambda: NOW), host="127.0.0.1")
    ) as client:
        response = await client.post(
            path, data=data, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        return response.status, await response.text()


def test_one_click_post_records_the_suppression(data: Engine) -> None:
    url = unsubscribe_url("http://127.0.0.1:8080", SECRET, "fan", "email")
    status, body = asyncio.run(_post(data, url.removeprefix("http://127.0.0.1:8080")))
    assert status == 200 and "unsubscribed" in body
    with data.connect() as conn:
        table = SUPPRESSION
        rows = conn.execute(select(table).where(table.c.customer_id == "fan")).all()
    assert [(r.customer_id, r.channel, r.reason) for r in rows] == [("fan", "email", "unsubscribed")]
    again, _ = asyncio.run(_post(data, url.removeprefix("http://127.0.0.1:8080")))
    assert again == 200  # repeating the click is harmless


def test_forged_or_altered_tokens_are_refused(data: Engine) -> None:
    good = token(SECRET, "fan", "email")
    forged = token("other-secret", "fan", "email")
    altered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    for bad in (forged, altered, "garbage"):
        status, _ = asyncio.run(_post(data, f"/unsubscribe/{bad}"))
        assert status == 404
    with data.connect() as conn:
        table = SUPPRESSION
        assert conn.execute(select(table).where(table.c.customer_id == "fan")).all() == []


def test_token_round_trip() -> None:
    assert verify(SECRET, token(SECRET, "c-1", "sms")) == ("c-1", "sms")
    assert verify("wrong", token(SECRET, "c-1", "sms")) is None
