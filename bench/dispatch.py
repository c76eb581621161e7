"""Dispatch throughput end to end (claim, render, send, mark) next to raw clients on the same sink.

    .venv/bin/python bench/dispatch.py                    # 20,000 webhooks and 20,000 emails, SQLite
    .venv/bin/python bench/dispatch.py --channel webhook --messages 5000
    .venv/bin/python bench/dispatch.py --channel webhook --repeat 5

With ``--repeat N`` the raw client and the library run alternately N times each (a fresh outbox for
every library run); the report gives every round, the best of each side and their ratio, and the
median of the rounds' ratios. On a busy machine a single round can catch one side in a quiet moment
and the other in a loaded one; alternating rounds and taking the best of each evens that out.

Webhooks: a local aiohttp sink in its own process (127.0.0.1) answers 200 to every POST. The baseline
is a raw aiohttp client posting the same number of prebuilt bodies at the same concurrency; the
library run is ``automation.outbox.dispatch.Dispatcher`` with the webhook channel (httpx on the aiohttp
transport) draining an outbox of that many queued messages.

Email: a local aiosmtpd sink in its own process accepts everything. The baseline is raw aiosmtplib
with the same number of connections, each sending prebuilt messages; the library run is the
Dispatcher with the SMTP channel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from automation.db.tables import CUSTOMER, OUTBOX

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- sinks, each in its own process --------------------------------------------------------------
def http_sink(port: int) -> None:
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", ok)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def smtp_sink(port: int) -> None:
    from aiosmtpd.controller import Controller

    class Accept:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    controller = Controller(Accept(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


def start(target: Callable[[int], None]) -> tuple[multiprocessing.Process, int]:
    port = free_port()
    process = multiprocessing.Process(target=target, args=(port,), daemon=True)
    process.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        time.sleep(0.05)
    raise RuntimeError("the sink did not start")


# -- the outbox ------------------------------------------------------------------------------------
def queue_messages(db_url: str, channel: str, count: int) -> Any:
    from sqlalchemy import insert

    from automation.db.connect import make_engine, upgrade

    engine = make_engine(db_url)
    upgrade(engine)
    customers = [
        {
            "id": f"c{i:06d}",
            "email": f"c{i}@example.com",
            "first_name": "Sam",
            "timezone": "UTC",
            "orders_count": 12,
            "clv": 420.0,
            "attributes": {},
        }
        for i in range(count)
    ]
    template = "loyalty_points" if channel == "webhook" else "vip_welcome"
    payload = {"url": "${BENCH_SINK_URL}", "timezone": "UTC"} if channel == "webhook" else {"timezone": "UTC"}
    rows = [
        {
            "idempotency_key": f"bench:{channel}:{i}",
            "playbook": "lifecycle",
            "customer_id": f"c{i:06d}",
            "channel": channel,
            "template": template,
            "stage": "loyalty",
            "segment": "self_serve",
            "touch": "none",
            "step": "loyalty/none#1",
            "priority": 0,
            "payload": payload,
            "status": "pending",
            "due_at": NOW,
            "created_at": NOW,
            "attempts": 0,
        }
        for i in range(count)
    ]
    with engine.begin() as conn:
        for start in range(0, count, 5000):
            conn.execute(insert(CUSTOMER), customers[start : start + 5000])
            conn.execute(insert(OUTBOX), rows[start : start + 5000])
    return engine


def run_dispatcher(engine: Any, channel: Any, name: str, concurrency: int, env: dict[str, str]) -> float:
    from automation.messages.store import TemplateStore
    from automation.outbox.dispatch import DispatchConfig, Dispatcher

    async def go() -> float:
        dispatcher = Dispatcher(
            engine,
            {name: channel},
            TemplateStore(ROOT / "templates"),
            DispatchConfig(worker_id="bench", batch_size=500, concurrency={name: concurrency}),
            clock=lambda: NOW,
            environ=env,
        )
        started = time.perf_counter()
        stats = await dispatcher.drain()
        elapsed = time.perf_counter() - started
        await channel.aclose()
        assert stats.count("sent") == stats.claimed, stats.as_dict()
        return elapsed

    return asyncio.run(go())


# -- webhooks --------------------------------------------------------------------------------------
def bench_webhook(count: int, concurrency: int, repeat: int = 1) -> dict[str, Any]:
    import aiohttp

    process, port = start(http_sink)
    url = f"http://127.0.0.1:{port}/loyalty"
    try:
        body = json.dumps({"event": "loyalty_points", "customer_id": "c000001", "points": 420}).encode()

        async def raw() -> float:
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                queue: asyncio.Queue[int] = asyncio.Queue()
                for i in range(count):
                    queue.put_nowait(i)

                async def worker() -> None:
                    while not queue.empty():
                        queue.get_nowait()
                        async with session.post(
                            url, data=body, headers={"Content-Type": "application/json"}
                        ) as r:
                            await r.read()
                            assert r.status == 200

                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                return time.perf_counter() - started

        def library() -> float:
            with tempfile.TemporaryDirectory() as tmp:
                engine = queue_messages(f"sqlite:///{tmp}/bench.db", "webhook", count)
                from automation.channels.http import make_client
                from automation.channels.webhook import WebhookChannel

                channel = WebhookChannel(
                    make_client(max_connections=concurrency),
                    secret="whsec_YmVuY2gtc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWZnaCE=",
                    owns_client=True,
                )
                elapsed = run_dispatcher(engine, channel, "webhook", concurrency, {"BENCH_SINK_URL": url})
                engine.dispose()
                return elapsed

        rounds = [(asyncio.run(raw()), library()) for _ in range(repeat)]
    finally:
        process.terminate()
    return report("webhook", count, concurrency, rounds, "raw aiohttp client", 0.35, 800)


# -- email -----------------------------------------------------------------------------------------
def bench_email(count: int, connections: int, repeat: int = 1) -> dict[str, Any]:
    import aiosmtplib

    process, port = start(smtp_sink)
    try:
        from email.message import EmailMessage

        def message(i: int) -> EmailMessage:
            msg = EmailMessage()
            msg["From"] = "Juniper <hello@example.com>"
            msg["To"] = f"c{i}@example.com"
            msg["Subject"] = "Welcome to the VIP club"
            msg.set_content("Hello Sam,\n\nthanks for being with us.\n")
            msg.add_alternative("<p>Hello Sam,</p><p>thanks for being with us.</p>", subtype="html")
            return msg

        prebuilt = [message(i) for i in range(count)]

        async def raw() -> float:
            queue: asyncio.Queue[EmailMessage] = asyncio.Queue()
            for msg in prebuilt:
                queue.put_nowait(msg)

            async def worker() -> None:
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False)
                await smtp.connect()
                while not queue.empty():
                    await smtp.send_message(queue.get_nowait())
                await smtp.quit()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            return time.perf_counter() - started

        def library() -> float:
            with tempfile.TemporaryDirectory() as tmp:
                engine = queue_messages(f"sqlite:///{tmp}/bench.db", "email", count)
                from automation.channels.email import SmtpChannel, SmtpSettings

                channel = SmtpChannel(
                    SmtpSettings.from_url(f"smtp://127.0.0.1:{port}?pool={connections}"),
                    from_address="Juniper <hello@example.com>",
                )
                elapsed = run_dispatcher(engine, channel, "email", connections, {})
                engine.dispose()
                return elapsed

        rounds = [(asyncio.run(raw()), library()) for _ in range(repeat)]
    finally:
        process.terminate()
    return report("email", count, connections, rounds, "raw aiosmtplib", 0.5, None)


def report(
    channel: str,
    count: int,
    concurrency: int,
    rounds: list[tuple[float, float]],
    baseline: str,
    goal_ratio: float,
    goal_rate: float | None,
) -> dict[str, Any]:
    """Print and return the figures; ``rounds`` holds (raw seconds, library seconds) per round."""
    raw_rate = count / min(raw for raw, _ in rounds)
    lib_rate = count / min(lib for _, lib in rounds)
    ratio = lib_rate / raw_rate
    ratios = sorted(raw / lib for raw, lib in rounds)
    median = statistics.median(ratios)
    ok = ratio >= goal_ratio and (goal_rate is None or lib_rate >= goal_rate)
    print(f"{channel}: {count:,} messages, concurrency {concurrency}")
    if len(rounds) > 1:
        for i, (raw, lib) in enumerate(rounds, 1):
            print(
                f"  round {i}: {baseline} {count / raw:8,.0f} msg/s, automation {count / lib:8,.0f} msg/s,"
                f" ratio {raw / lib:.2f}x"
            )
    best = " (best of each)" if len(rounds) > 1 else ""
    print(f"  {baseline:<28} {raw_rate:8,.0f} msg/s{best}")
    print(f"  {'automation end to end':<28} {lib_rate:8,.0f} msg/s{best}")
    goal = f">= {goal_ratio}x" + (f" and >= {goal_rate:,.0f}/s" if goal_rate else "")
    extra = f"; median of the rounds' ratios {median:.2f}x" if len(rounds) > 1 else ""
    print(f"  ratio {ratio:.2f}x (goal {goal}): {'met' if ok else 'NOT met'}{extra}")
    return {
        "channel": channel,
        "messages": count,
        "concurrency": concurrency,
        "baseline": baseline,
        "baseline_per_s": round(raw_rate),
        "library_per_s": round(lib_rate),
        "ratio": round(ratio, 3),
        "rounds": [
            {
                "baseline_per_s": round(count / raw),
                "library_per_s": round(count / lib),
                "ratio": round(raw / lib, 3),
            }
            for raw, lib in rounds
        ],
        "median_ratio": round(median, 3),
        "goal_met": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--channel", choices=["webhook", "email", "both"], default="both")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections (email)")
    parser.add_argument("--repeat", type=int, default=1, help="alternating rounds of raw and library")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    results = []
    if args.channel in ("webhook", "both"):
        results.append(bench_webhook(args.messages, args.concurrency, args.repeat))
    if args.channel in ("email", "both"):
        results.append(bench_email(args.messages, args.connections, args.repeat))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dispatch.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
