"""``/metrics`` and ``/healthz`` over real HTTP on 127.0.0.1, on SQLite and PostgreSQL, and when the
database is unreachable. The exposition is parsed here, independently of the code that writes it."""

from __future__ import annotations

import asyncio
import re
import socket
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine, func, select

from automation.db.connect import make_engine
from automation.errors import ConfigError, PermanentDeliveryError
from automation.outbox.dispatch import DispatchStats
from automation.worker.metrics import Family, make_metrics_app, render, serve_metrics
from tests.integration.known import NOW, T
from tests.integration.test_dispatch import Recorder, channels
from tests.integration.test_status import TOKYO_DUE, drain, tick

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)\}})? (\S+)$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse(body: str) -> tuple[Samples, dict[str, str]]:
    """Samples and declared types of a Prometheus text exposition; fails on a malformed line."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge"), line
            assert name not in types, f"{name} declared twice"
            types[name] = kind
            continue
        if line.startswith("# HELP ") or not line:
            continue
        match = _SAMPLE.match(line)
        assert match, f"not an exposition line: {line!r}"
        name, labels, value = match.groups()
        assert name in types, f"{name} has no TYPE line before its samples"
        pairs = frozenset(
            (k, v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\"))
            for k, v in _PAIR.findall(labels or "")
        )
        assert (name, pairs) not in samples, f"duplicate sample {line!r}"
        samples[(name, pairs)] = float(value)
    return samples, types


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def family(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def _get(app: Any, *paths: str) -> list[tuple[int, str, str]]:
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        out = []
        for path in paths:
            response = await client.get(path)
            out.append((response.status, response.headers.get("Content-Type", ""), await response.text()))
        return out


def scrape(engine: Engine, stats: Any = None, at: datetime = NOW) -> tuple[Samples, dict[str, str], str]:
    [(status, content_type, body)] = asyncio.run(
        _get(make_metrics_app(engine, stats, clock=lambda: at), "/metrics")
    )
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    samples, types = parse(body)
    return samples, types, body


def test_metrics_agree_with_the_database_and_the_process(data: Engine) -> None:
    tick(data)
    last = tick(data, NOW + timedelta(minutes=15))
    chans = channels(webhook=Recorder("webhook", fail=[PermanentDeliveryError("410 Gone")]))
    stats = drain(data, chans, NOW)
    assert stats.count("sent") == 6 and stats.count("dead") == 1

    samples, types, _ = scrape(data, lambda: stats, at=TOKYO_DUE + timedelta(hours=1))
    assert value(samples, "automation_database_up") == 1
    with data.connect() as conn:
        outbox = T["outbox"]
        by_status = {
            (c, s): n
            for c, s, n in conn.execute(
                select(outbox.c.channel, outbox.c.status, func.count()).group_by(
                    outbox.c.channel, outbox.c.status
                )
            )
        }
        stages = {
            (s or "(none)"): n
            for s, n in conn.execute(
                select(T["customer_state"].c.stage, func.count()).group_by(T["customer_state"].c.stage)
            )
        }
        active = conn.execute(select(func.count()).where(T["enrollment"].c.status == "active")).scalar_one()
    assert family(samples, "automation_outbox_messages") == {
        frozenset({("channel", c), ("status", s)}): n for (c, s), n in by_status.items()
    }
    assert value(samples, "automation_outbox_messages", channel="webhook", status="dead") == 1
    assert value(samples, "automation_outbox_messages", channel="email", status="sent") == 5
    assert family(samples, "automation_customers") == {
        frozenset({("playbook", "lifecycle"), ("stage", s)}): n for s, n in stages.items()
    }
    assert value(samples, "automation_customers", playbook="lifecycle", stage="acquisition") == 4
    assert value(samples, "automation_open_enrollments", playbook="lifecycle") == active
    assert value(samples, "automation_ticks_total", playbook="lifecycle") == 2
    assert value(samples, "automation_last_tick_timestamp_seconds", playbook="lifecycle") == (
        (NOW + timedelta(minutes=15)).timestamp()
    )
    took = value(samples, "automation_last_tick_duration_seconds", playbook="lifecycle")
    assert took == pytest.approx(round(last.seconds, 3))
    # tokyo's welcome became due at TOKYO_DUE: one message waiting for an hour
    assert value(samples, "automation_outbox_queue_depth") == 1
    assert value(samples, "automation_outbox_oldest_due_age_seconds") == 3600
    # this process's dispatch counters
    assert value(samples, "automation_dispatch_claimed_total") == stats.claimed == 7
    assert family(samples, "automation_dispatch_messages_total") == {
        frozenset({("channel", c), ("status", s)}): n for (c, s), n in stats.outcomes.items()
    }
    assert value(samples, "automation_dispatch_messages_total", channel="email", status="sent") == 5
    assert types["automation_ticks_total"] == types["automation_dispatch_messages_total"] == "counter"
    assert types["automation_outbox_messages"] == types["automation_outbox_queue_depth"] == "gauge"

    # the callable is read at every scrape: later outcomes show up
    stats.outcomes[("email", "sent")] += 5
    samples, _, _ = scrape(data, lambda: stats, at=NOW)
    assert value(samples, "automation_dispatch_messages_total", channel="email", status="sent") == 10
    assert value(samples, "automation_outbox_queue_depth") == 0
    assert value(samples, "automation_outbox_oldest_due_age_seconds") == 0


def test_metrics_of_an_empty_database_and_no_dispatcher(engine: Engine) -> None:
    samples, types, body = scrape(engine)
    assert value(samples, "automation_database_up") == 1
    assert value(samples, "automation_outbox_queue_depth") == 0
    assert value(samples, "automation_dispatch_claimed_total") == 0
    assert family(samples, "automation_outbox_messages") == {} and "automation_outbox_messages" in types
    assert family(samples, "automation_dispatch_messages_total") == {}
    assert body.endswith("\n")
    # a DispatchStats instance works as well as a callable
    fixed = DispatchStats(claimed=3)
    fixed.outcomes[("sms", "retry")] = 3
    samples, _, _ = scrape(engine, fixed)
    assert value(samples, "automation_dispatch_messages_total", channel="sms", status="retry") == 3


def test_healthz_answers_when_the_database_does(engine: Engine) -> None:
    [(status, _, body)] = asyncio.run(_get(make_metrics_app(engine), "/healthz"))
    assert status == 200 and body == '{"status": "ok"}'


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_unreachable_database_is_503_and_database_up_0(where: str, tmp_path: Path) -> None:
    url = (
        f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'automation.db'}"
        if where == "sqlite"
        else f"postgresql+psycopg://postgres@127.0.0.1:{_unused_port()}/automation?connect_timeout=3"
    )
    engine = make_engine(url)
    stats = DispatchStats(claimed=2)
    stats.outcomes[("email", "sent")] = 2
    try:
        (health, _, health_body), (metrics, _, metrics_body) = asyncio.run(
            _get(make_metrics_app(engine, lambda: stats), "/healthz", "/metrics")
        )
    finally:
        engine.dispose()
    assert health == 503 and '"status": "unavailable"' in health_body
    assert "127.0.0.1" not in health_body  # no connection details leak
    assert metrics == 200
    samples, _ = parse(metrics_body)
    assert value(samples, "automation_database_up") == 0
    assert value(samples, "automation_dispatch_messages_total", channel="email", status="sent") == 2
    assert "automation_outbox_messages" not in metrics_body
    assert not (tmp_path / "no").exists()


def test_rendering_escapes_labels_and_formats_numbers() -> None:
    fam = Family("odd", "gauge", "Help with a \\ backslash\nand a newline.")
    fam.add(1.5, name='quote " back \\ slash', other="line\nbreak").add(3, name="int").add(
        float("nan"), name="nan"
    )
    fam.add(float("inf"), name="inf").add(0.1, name="small").add(2.0, name="whole")
    body = render([fam])
    assert "# HELP automation_odd Help with a \\\\ backslash\\nand a newline.\n" in body
    assert 'automation_odd{name="quote \\" back \\\\ slash",other="line\\nbreak"} 1.5\n' in body
    assert 'automation_odd{name="int"} 3\n' in body and 'automation_odd{name="whole"} 2\n' in body
    assert 'automation_odd{name="nan"} NaN\n' in body and 'automation_odd{name="inf"} +Inf\n' in body
    samples, types = parse(body)
    assert types == {"automation_odd": "gauge"}
    assert value(samples, "automation_odd", name='quote " back \\ slash', other="line\nbreak") == 1.5
    assert value(samples, "automation_odd", name="small") == 0.1


def test_serve_metrics_on_a_port_and_a_busy_port_is_a_config_error(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'automation.db'}")

    async def run() -> tuple[int, str]:
        port = _unused_port()
        runner = await serve_metrics(engine, "127.0.0.1", port)
        try:
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
                await serve_metrics(engine, "127.0.0.1", port)
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/healthz") as response,
            ):
                return response.status, await response.text()
        finally:
            await runner.cleanup()

    try:
        assert asyncio.run(run()) == (200, '{"status": "ok"}')
    finally:
        engine.dispose()
