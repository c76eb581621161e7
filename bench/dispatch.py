"""Dispatch throughput end to end (claim, render, send, mark) next to raw clients on the same sink.

    .venv/bin/python bench/dispatch.py                    # 20,000 webhooks and 20,000 emails, 5 rounds
    .venv/bin/python bench/dispatch.py --channel webhook --messages 5000
    .venv/bin/python bench/dispatch.py --channel webhook --profile

Every side of every round runs in a fresh interpreter of its own (``--side``, below), which times
itself and reports its rate and its peak RSS (``VmHWM``): neither side's objects, imports or garbage
are in the other's process. The sinks run in their own processes too, for the whole run. The order of
the two sides alternates from round to round; every round's ratio is reported and counted.

Webhooks: a local aiohttp sink (127.0.0.1) answers 200 to every POST. The baseline is a raw aiohttp
client posting the same prebuilt request (the body the library renders for the first customer, with
the library's set of headers) the same number of times, at the same concurrency, on a keep-alive
connection pool of that size. The library side is ``automation.outbox.dispatch.Dispatcher`` with the
webhook channel draining a SQLite outbox of that many queued messages.

Email: a local aiosmtpd sink accepts everything. The baseline is raw aiosmtplib with the same number of
connections, each sending prebuilt ``EmailMessage`` objects (built before the clock starts); the
library side is the Dispatcher with the SMTP channel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
RESULTS = ROOT / "bench" / "results"
SECRET = "whsec_YmVuY2gtc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWZnaCE="
GOALS = {"webhook": 0.5, "email": 0.5}  # library / raw, in every round
BASELINES = {"webhook": "raw aiohttp", "email": "raw aiosmtplib"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_status(field: str, pid: int | str = "self") -> float:
    """A ``/proc/<pid>/status`` memory figure in MB (VmHWM: peak RSS, VmRSS: current)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


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


# -- the outbox (library side) ---------------------------------------------------------------------
def queue_messages(db_url: str, channel: str, count: int) -> Any:
    from sqlalchemy import insert

    from automation.db.connect import make_engine, upgrade
    from automation.db.tables import CUSTOMER, OUTBOX

    engine = make_engine(db_url)
    upgrade(engine)
    template = "loyalty_points" if channel == "webhook" else "vip_welcome"
    payload = {"url": "${BENCH_SINK_URL}", "timezone": "UTC"} if channel == "webhook" else {"timezone": "UTC"}
    with engine.begin() as conn:
        for begin in range(0, count, 5000):
            ids = range(begin, min(begin + 5000, count))
            conn.execute(insert(CUSTOMER), [customer(i) for i in ids])
            conn.execute(
                insert(OUTBOX),
                [
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
                    for i in ids
                ],
            )
    return engine


def customer(i: int) -> dict[str, Any]:
    return {
        "id": f"c{i:06d}",
        "email": f"c{i}@example.com",
        "first_name": "Sam",
        "timezone": "UTC",
        "orders_count": 12,
        "clv": 420.0,
        "attributes": {},
    }


def make_channel(channel: str, port: int, width: int) -> Any:
    if channel == "webhook":
        from automation.channels.http import make_client
        from automation.channels.webhook import WebhookChannel

        return WebhookChannel(make_client(max_connections=width), secret=SECRET, owns_client=True)
    from automation.channels.email import SmtpChannel, SmtpSettings

    return SmtpChannel(
        SmtpSettings.from_url(f"smtp://127.0.0.1:{port}?pool={width}"),
        from_address="Juniper <hello@example.com>",
    )


def library_side(channel: str, port: int, count: int, width: int, profile: str | None) -> dict[str, Any]:
    """Drain an outbox of ``count`` queued messages; the clock runs from the first claim to the last mark."""
    from automation.messages.store import TemplateStore
    from automation.outbox.dispatch import DispatchConfig, Dispatcher

    env = {"BENCH_SINK_URL": f"http://127.0.0.1:{port}/loyalty"}
    with tempfile.TemporaryDirectory() as tmp:
        engine = queue_messages(f"sqlite:///{tmp}/bench.db", channel, count)
        sender = make_channel(channel, port, width)
        used: dict[str, float] = {}

        async def go() -> tuple[float, Any]:
            dispatcher = Dispatcher(
                engine,
                {channel: sender},
                TemplateStore(ROOT / "templates"),
                DispatchConfig(worker_id="bench", batch_size=500, concurrency={channel: width}),
                clock=lambda: NOW,
                environ=env,
            )
            started, cpu = time.perf_counter(), time.process_time()
            stats = await dispatcher.drain()
            elapsed = time.perf_counter() - started
            used["cpu_s"] = time.process_time() - cpu
            await sender.aclose()
            return elapsed, stats

        rss_before = proc_status("VmRSS")
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            elapsed, stats = profiler.runcall(asyncio.run, go())
            profiler.dump_stats(profile)
        else:
            elapsed, stats = asyncio.run(go())
        engine.dispose()
    if stats.count("sent") != count or stats.claimed != count:
        raise SystemExit(f"not every message was sent: {stats.as_dict()}")
    return {"seconds": elapsed, "cpu_s": used["cpu_s"], "rss_before_mb": rss_before}


async def timed(work: Any) -> tuple[float, float]:
    """Await ``work``: (wall seconds, this process's CPU seconds) it took."""
    started, cpu = time.perf_counter(), time.process_time()
    await work
    return time.perf_counter() - started, time.process_time() - cpu


# -- the raw clients -------------------------------------------------------------------------------
def first_message(channel: str, template: str) -> tuple[Any, Any, str]:
    """The queued row of the first customer's ``channel`` message, what the library renders for it, and
    its unsubscribe link: what the raw clients send, made once."""
    from automation.messages.render import render_for_action
    from automation.messages.store import TemplateStore
    from automation.outbox.dispatch import _Message

    row = _Message(
        0, f"bench:{channel}:0", "lifecycle", "c000000", channel, template, "loyalty",
        "self_serve", "none", "loyalty/none#1", 0, {}, NOW, None, 1,
    )  # fmt: skip
    rendered, link = render_for_action(
        TemplateStore(ROOT / "templates"),
        row,
        customer(0),
        playbook="lifecycle",
        now=NOW,
        public_url="http://127.0.0.1:8080",
        secret_key="change-me",
    )
    return row, rendered, link


def webhook_request() -> tuple[bytes, dict[str, str]]:
    """The library's request for the first customer, made once: its rendered body and its headers
    (with this signature and timestamp), which the raw client posts unchanged every time."""
    from automation.channels.webhook import message_id, signature_headers

    row, rendered, _ = first_message("webhook", "loyalty_points")

    assert rendered.body is not None
    body = rendered.body.encode("utf-8")  # what WebhookChannel.body_of sends
    headers = {
        "User-Agent": "automation/0.1",
        **signature_headers(SECRET, message_id(row.idempotency_key), body, timestamp=int(NOW.timestamp())),
        "Content-Type": "application/json",
        "Idempotency-Key": row.idempotency_key,
    }
    return body, headers


def raw_webhook(port: int, count: int, width: int, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """Post the prebuilt request ``count`` times with ``width`` workers on one keep-alive session."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/loyalty"

    async def go() -> tuple[float, float]:
        connector = aiohttp.TCPConnector(limit=width)
        async with aiohttp.ClientSession(connector=connector) as session:
            left = count

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    async with session.post(url, data=body, headers=headers) as answer:
                        await answer.read()
                        if answer.status != 200:
                            raise SystemExit(f"the sink answered {answer.status}")

            return await timed(asyncio.gather(*(worker() for _ in range(width))))

    rss_before = proc_status("VmRSS")
    seconds, cpu = asyncio.run(go())
    return {"seconds": seconds, "cpu_s": cpu, "rss_before_mb": rss_before}


#: ``--raw-email stand-in``: the raw client's message before it carried the library's email
STAND_IN = {
    "headers": [("From", "Juniper <hello@example.com>"), ("Subject", "Welcome to the VIP club")],
    "text": "Hello Sam,\n\nthanks for being with us.\n",
    "html": "<p>Hello Sam,</p><p>thanks for being with us.</p>",
}


def email_request(form: str = "library") -> dict[str, Any]:
    """The library's email for the first customer, made once: its rendered subject, text and HTML and
    its headers, which the raw client's prebuilt messages carry too (each with its own ``To``).
    ``form="stand-in"``: a two-line message instead (what the raw client sent before)."""
    if form == "stand-in":
        return STAND_IN
    from email.utils import format_datetime

    from automation.channels.mime import feedback_headers, message_id

    row, rendered, link = first_message("email", "vip_welcome")

    headers = [
        ("From", "Juniper <hello@example.com>"),
        ("Subject", rendered.subject),
        ("Date", format_datetime(NOW)),
        ("Message-ID", message_id(row.idempotency_key, "example.com")),
        *feedback_headers(row.idempotency_key),
        ("List-Unsubscribe", f"<{link}>"),
    ]
    return {"headers": headers, "text": rendered.text, "html": rendered.html}


def raw_email(port: int, count: int, width: int, request: dict[str, Any]) -> dict[str, Any]:
    """Send ``count`` prebuilt messages (``EmailMessage``, built before the clock starts) over ``width``
    connections with ``send_message``."""
    from email.message import EmailMessage

    import aiosmtplib

    def message(i: int) -> EmailMessage:
        msg = EmailMessage()
        for name, value in request["headers"]:
            msg[name] = value
        msg["To"] = f"c{i}@example.com"
        msg.set_content(request["text"])
        msg.add_alternative(request["html"], subtype="html")
        return msg

    prebuilt = [message(i) for i in range(count)]

    async def go() -> tuple[float, float]:
        pending = iter(prebuilt)

        async def worker() -> None:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False)
            await smtp.connect()
            for msg in pending:
                await smtp.send_message(msg)
            await smtp.quit()

        return await timed(asyncio.gather(*(worker() for _ in range(width))))

    rss_before = proc_status("VmRSS")
    seconds, cpu = asyncio.run(go())
    return {"seconds": seconds, "cpu_s": cpu, "rss_before_mb": rss_before}


def side_main(args: argparse.Namespace) -> None:
    """One side of one round, in this (fresh) process; one JSON line on stdout."""
    if args.side == "library":
        result = library_side(args.channel, args.port, args.messages, args.width, args.profile_to)
    elif args.channel == "webhook":
        request = json.loads(Path(args.request).read_text())
        result = raw_webhook(
            args.port, args.messages, args.width, request["body"].encode(), request["headers"]
        )
    else:
        result = raw_email(args.port, args.messages, args.width, json.loads(Path(args.request).read_text()))
    result["per_s"] = args.messages / result["seconds"]
    result["cpu_share"] = result.pop("cpu_s") / result["seconds"]
    result["peak_rss_mb"] = proc_status("VmHWM")
    print(json.dumps(result))


def run_side(side: str, channel: str, port: int, count: int, width: int, extra: list[str]) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--side", side, "--channel", channel, "--port", str(port),
        "--messages", str(count), "--width", str(width), *extra,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {side} side failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- the parent ------------------------------------------------------------------------------------
def bench(
    channel: str, count: int, width: int, repeat: int, profile: bool, email_form: str = "library"
) -> dict[str, Any]:
    process, port = start(http_sink if channel == "webhook" else smtp_sink)
    extra: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if channel == "webhook":
                body, headers = webhook_request()
                request = {"body": body.decode(), "headers": headers}
            else:
                request = email_request(email_form)
            (Path(tmp) / "request.json").write_text(json.dumps(request))
            extra = ["--request", str(Path(tmp) / "request.json")]
            rounds = []
            for i in range(repeat):
                order = ("raw", "library") if i % 2 == 0 else ("library", "raw")
                got = {side: run_side(side, channel, port, count, width, extra) for side in order}
                got["first"] = order[0]  # type: ignore[assignment]
                rounds.append(got)
                print(f"  round {i + 1} ({order[0]} first): {describe(channel, got)}", flush=True)
            profiled = None
            if profile:
                stats_file = str(RESULTS / f"dispatch-{channel}.prof")
                profiled = run_side(
                    "library", channel, port, count, width, [*extra, "--profile-to", stats_file]
                )
                show_profile(stats_file)
    finally:
        process.terminate()
    return report(channel, count, width, rounds, profiled, request)


def describe(channel: str, got: dict[str, Any]) -> str:
    raw, lib = got["raw"], got["library"]
    return (
        f"{BASELINES[channel]} {raw['per_s']:8,.0f} msg/s (CPU {raw['cpu_share']:.0%},"
        f" peak RSS {raw['peak_rss_mb']:,.0f} MB), automation {lib['per_s']:8,.0f} msg/s"
        f" (CPU {lib['cpu_share']:.0%}, peak RSS {lib['peak_rss_mb']:,.0f} MB),"
        f" ratio {lib['per_s'] / raw['per_s']:.2f}x"
    )


def show_profile(path: str) -> None:
    import pstats

    print(f"  profile (not timed with the rounds), {path}:")
    pstats.Stats(path).sort_stats("tottime").print_stats(30)


def report(
    channel: str,
    count: int,
    width: int,
    rounds: list[dict[str, Any]],
    profiled: dict[str, Any] | None,
    request: dict[str, Any],
) -> dict[str, Any]:
    goal = GOALS[channel]
    ratios = [r["library"]["per_s"] / r["raw"]["per_s"] for r in rounds]
    every = all(ratio >= goal for ratio in ratios)

    def span(side: str, key: str) -> tuple[float, float]:
        values = [r[side][key] for r in rounds]
        return min(values), max(values)

    raw_lo, raw_hi = span("raw", "per_s")
    lib_lo, lib_hi = span("library", "per_s")
    print(f"{channel}: {count:,} messages, {width} in flight, {len(rounds)} rounds")
    raw_rss, lib_rss = span("raw", "peak_rss_mb")[1], span("library", "peak_rss_mb")[1]
    print(f"  {BASELINES[channel]:<22} {raw_lo:8,.0f} - {raw_hi:8,.0f} msg/s, peak RSS {raw_rss:,.0f} MB")
    print(
        f"  {'automation end to end':<22} {lib_lo:8,.0f} - {lib_hi:8,.0f} msg/s, peak RSS {lib_rss:,.0f} MB"
    )
    print(
        f"  ratio per round {min(ratios):.2f}-{max(ratios):.2f}x (median {statistics.median(ratios):.2f}x);"
        f" goal >= {goal}x in every round: {'met' if every else 'NOT met'}"
    )
    return {
        "channel": channel,
        "messages": count,
        "in_flight": width,
        "baseline": BASELINES[channel],
        "rounds": [
            {
                "first": r["first"],
                "raw": {k: round(v, 4) for k, v in r["raw"].items()},
                "library": {k: round(v, 4) for k, v in r["library"].items()},
                "ratio": round(ratio, 3),
            }
            for r, ratio in zip(rounds, ratios, strict=True)
        ],
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "goal_ratio": goal,
        "goal_met_every_round": every,
        "profiled_library_round": profiled,
        "raw_request": request,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--channel", choices=["webhook", "email", "both"], default="both")
    parser.add_argument("--concurrency", type=int, default=20, help="webhooks in flight (both sides)")
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections (both sides)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (each side: a fresh process)")
    parser.add_argument(
        "--raw-email",
        choices=["library", "stand-in"],
        default="library",
        help="the raw SMTP client's message: the library's email, or a two-line stand-in",
    )
    parser.add_argument("--profile", action="store_true", help="then one more library run under cProfile")
    parser.add_argument("--output", type=Path, default=RESULTS / "dispatch.json")
    # one side of one round (the parent runs these in subprocesses)
    parser.add_argument("--side", choices=["raw", "library"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--request", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side_main(args)
        return
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    results = []
    for channel in ("webhook", "email"):
        if args.channel in (channel, "both"):
            width = args.concurrency if channel == "webhook" else args.connections
            results.append(bench(channel, args.messages, width, args.repeat, args.profile, args.raw_email))
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.output.write_text(json.dumps({"machine": machine, "channels": results}, indent=2))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
