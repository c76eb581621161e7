"""Tick and dispatch through the real channels to local servers: signed webhooks, SMS, retries, dedupe."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, select

from automation.authoring.validate import check_playbook
from automation.channels.registry import build_channels
from automation.config import Settings
from automation.db.tables import OUTBOX
from automation.outbox.dispatch import DispatchConfig, Dispatcher
from automation.worker.tick import run_tick
from tests.conftest import ROOT
from tests.http_server import Reply, fake_twilio, serve
from tests.integration.known import NOW, TEMPLATES

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OSE="


def env_for(url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "AUTOMATION_SMS_URL": url,
        "AUTOMATION_SMS_ACCOUNT_SID": "AC123",
        "AUTOMATION_SMS_AUTH_TOKEN": "token",
        "AUTOMATION_SMS_FROM": "+14155550199",
        "AUTOMATION_WEBHOOK_SECRET": SECRET,
        "AUTOMATION_OUTBOX_DIR": str(tmp_path / "outbox"),
        "LOYALTY_WEBHOOK_URL": f"{url}/loyalty",
    }


def tick(engine: Engine, at: object) -> None:
    run_tick(engine, check_playbook(ROOT / "playbooks" / "lifecycle.yaml", TEMPLATES, at))  # type: ignore[arg-type]


def dispatch(engine: Engine, env: dict[str, str], at: object) -> None:
    async def run() -> None:
        built = build_channels(Settings(), engine, env)
        try:
            await Dispatcher(
                engine,
                built.channels,
                TEMPLATES,
                DispatchConfig(worker_id="w"),
                clock=lambda: at,
                environ=env,
                seed=1,
            ).drain()  # type: ignore[arg-type, return-value]
        finally:
            await built.aclose()

    asyncio.run(run())


def test_signed_webhook_retried_after_500_arrives_once(data: Engine, tmp_path: Path) -> None:
    with serve(secret=SECRET, reject_bad_signatures=True, dedupe_header="Idempotency-Key") as server:
        server.route("/loyalty", Reply(202, json={"id": "evt_1"}))
        server.fail_next(1, status=500)
        env = env_for(server.url, tmp_path)
        tick(data, NOW)
        dispatch(data, env, NOW)
        dispatch(data, env, NOW + timedelta(minutes=1))
        hooks = [r for r in server.requests if r.path == "/loyalty"]
    assert len(hooks) == 2 and all(r.signature_ok for r in hooks)
    assert server.unique_deliveries == 1
    with data.connect() as conn:
        row = conn.execute(select(OUTBOX).where(OUTBOX.c.channel == "webhook")).one()
    assert (row.status, row.attempts, row.provider_id) == ("sent", 2, "evt_1")
    assert {r.header("Idempotency-Key") for r in hooks} == {row.idempotency_key}
    assert hooks[-1].json()["customer_id"] == "vip"
    # email had no SMTP server configured: five customer emails and the task notice to the account
    # owner went to the outbox folder as .eml files
    assert len(list((tmp_path / "outbox" / "email").glob("*.eml"))) == 6


def test_sms_after_the_wait_with_retry_after(data: Engine, tmp_path: Path) -> None:
    with serve() as server:
        server.route("/2010-04-01/Accounts/AC123/Messages.json", fake_twilio())
        env = env_for(server.url, tmp_path)
        tick(data, NOW)
        dispatch(data, env, NOW)
        later = NOW + timedelta(days=14, hours=1)
        tick(data, later)  # regular's retention program: after 14 days, the NPS survey by SMS
        server.fail_next(1, status=429, retry_after=7)
        dispatch(data, env, later)
        with data.connect() as conn:
            row = conn.execute(select(OUTBOX).where(OUTBOX.c.channel == "sms")).one()
        assert (row.status, row.customer_id) == ("retry", "regular")
        assert row.due_at.replace(tzinfo=NOW.tzinfo) == later + timedelta(seconds=7)
        dispatch(data, env, later + timedelta(seconds=8))
        sms = [r for r in server.requests if r.path.endswith("Messages.json")]
    assert len(sms) == 2
    form = sms[-1].form()
    assert form["To"] == "+14155550100" and form["From"] == "+14155550199"
    assert "STOP" in form["Body"]
    assert sms[-1].basic_auth() == ("AC123", "token")
    with data.connect() as conn:
        row = conn.execute(select(OUTBOX).where(OUTBOX.c.channel == "sms")).one()
    assert row.status == "sent" and row.provider_id.startswith("SM")


def test_permanent_rejection_is_dead_with_the_status(data: Engine, tmp_path: Path) -> None:
    with serve() as server:
        server.route("/loyalty", Reply(422, json={"error": "unknown member"}))
        tick(data, NOW)
        dispatch(data, env_for(server.url, tmp_path), NOW)
    with data.connect() as conn:
        row = conn.execute(select(OUTBOX).where(OUTBOX.c.channel == "webhook")).one()
    assert row.status == "dead" and "422" in row.last_error and row.lease_owner is None


def test_email_over_smtp_with_one_click_unsubscribe(data: Engine, tmp_path: Path) -> None:
    from tests.smtp_server import SmtpTestServer

    with serve() as http, SmtpTestServer() as smtp:
        env = {
            **env_for(http.url, tmp_path),
            "AUTOMATION_SMTP_URL": smtp.url,
            "AUTOMATION_EMAIL_FROM": "Juniper <hello@example.com>",
        }
        smtp.fail_next(451, stage="data")  # the first message is deferred by the server, then retried
        tick(data, NOW)

        async def run(at: object) -> None:
            built = build_channels(Settings(), data, env)
            config = DispatchConfig(worker_id="w", public_url="https://mail.example.com", lanes=1)
            try:
                await Dispatcher(
                    data,
                    built.channels,
                    TEMPLATES,
                    config,
                    clock=lambda: at,  # type: ignore[arg-type, return-value]
                    environ=env,
                    seed=1,
                ).drain()
            finally:
                await built.aclose()

        asyncio.run(run(NOW))
        asyncio.run(run(NOW + timedelta(minutes=5)))
        received = list(smtp.messages)
    by_to = {m.message["To"]: m.message for m in received}
    assert set(by_to) == {
        "newbie@example.com",
        "regular@example.com",
        "fan@example.com",
        "vip@example.com",
        "owner@example.com",
    }
    assert len(received) == 6  # regular gets the tips email and the birthday reward
    welcome = by_to["newbie@example.com"]
    assert welcome["List-Unsubscribe"].startswith("<https://mail.example.com/unsubscribe/")
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert welcome.get_body(("plain",)) is not None and welcome.get_body(("html",)) is not None
    with data.connect() as conn:
        statuses = {r.status for r in conn.execute(select(OUTBOX).where(OUTBOX.c.channel == "email"))}
    assert statuses == {
        "sent",
        "suppressed",
        "pending",
    }  # held: tokyo (quiet hours); suppressed: nomail, unsub


def test_a_dropped_connection_is_retried_without_losing_the_message(data: Engine, tmp_path: Path) -> None:
    with serve(secret=SECRET, dedupe_header="Idempotency-Key") as server:
        env = {**env_for(server.url, tmp_path), "AUTOMATION_WEBHOOK_CONCURRENCY": "2"}
        tick(data, NOW)
        server.drop_next(1)
        dispatch(data, env, NOW)
        with data.connect() as conn:
            row = conn.execute(select(OUTBOX).where(OUTBOX.c.channel == "webhook")).one()
        assert row.status == "retry" and "closed the connection" in row.last_error
        dispatch(data, env, NOW + timedelta(minutes=2))
        with data.connect() as conn:
            assert (
                conn.execute(select(OUTBOX.c.status).where(OUTBOX.c.channel == "webhook")).scalar_one()
                == "sent"
            )
        assert server.unique_deliveries == 1
        with data.connect() as conn:
            claimed = conn.execute(select(OUTBOX).where(OUTBOX.c.status == "claimed")).all()
        assert claimed == []
