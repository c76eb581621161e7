"""The last step of ``make demo``: a customer enters stages from live events, within seconds.

Starts ``automation serve`` (with a demo write key) and the worker, ``automation run``, on the demo
database, waits for the worker's first tick, then sends with the Segment client (examples/send_events.py)
an identify of a customer who signs up now, and later a ``referral_sent`` event for them. After each
call it waits for the messages the worker queues in reaction and prints how long after the API's
answer they were in the outbox, and when the file outbox delivered them. Both processes are stopped
at the end. The customer's time zone is one where it is daytime now, so quiet hours hold nothing back.
"""

from __future__ import annotations

import email
import email.policy
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))

from send_events import client, identify, refer_a_friend
from sqlalchemy import Engine, text

from automation.config import Settings
from automation.db.connect import make_engine

EXE = Path(sys.executable).with_name("automation")
WRITE_KEY = "wk_demo_live"
ZONES = ("Pacific/Honolulu", "America/Los_Angeles", "America/New_York", "Europe/London", "Europe/Berlin",
         "Asia/Dubai", "Asia/Kolkata", "Asia/Singapore", "Asia/Tokyo", "Australia/Sydney")  # fmt: skip
WAIT = 60.0


def daytime_zone() -> str:
    """A zone where it is between 10:00 and 18:00 now."""
    now = datetime.now(UTC)
    return next((z for z in ZONES if 10 <= now.astimezone(ZoneInfo(z)).hour < 18), "UTC")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A CLI subprocess whose output lines are kept (and the worker's echoed, indented)."""

    def __init__(self, args: list[str], env: dict[str, str], echo: bool = False) -> None:
        self.lines: list[str] = []
        self.command = args[0]
        self.proc = subprocess.Popen(
            [str(EXE), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, args=(echo,), daemon=True).start()

    def _read(self, echo: bool) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if echo:
                print("    " + line.rstrip())

    def saw(self, needle: str) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"automation {self.command} exited:\n{''.join(self.lines)}")
        return any(needle in line for line in self.lines)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(WAIT)


def wait_for(check: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise SystemExit(f"gave up waiting for {what}")


def main() -> None:
    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    user = f"live-{datetime.now(UTC):%H%M%S}"
    port = free_port()
    # links in emails point at this server, so a click comes back as an event (click tracking)
    env = os.environ | {
        "AUTOMATION_WRITE_KEYS": WRITE_KEY,
        "AUTOMATION_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    print(f"live events: automation serve on 127.0.0.1:{port} and the worker (automation run)")
    server = Process(["serve", "--host", "127.0.0.1", "--port", str(port)], env)
    worker = Process(["run"], env, echo=True)
    try:
        wait_for(lambda: server.saw(f"127.0.0.1:{port}"), "the server to listen")
        wait_for(lambda: worker.saw("tick in"), "the worker's first tick")
        sender = client(f"http://127.0.0.1:{port}", WRITE_KEY)
        zone = daytime_zone()
        steps = [
            (f"identify {user} (signed up now, {zone})", lambda: identify(sender, user, zone)),
            (f"track {user} referral_sent", lambda: refer_a_friend(sender, user)),
        ]
        seen = 0
        for label, send in steps:
            send()  # sync mode: returns once the server answered 200
            answered = time.monotonic()
            print(f"sent {label}; waiting for the worker to react")
            rows = wait_for(partial(queued, engine, user, seen), "a reaction")
            assert isinstance(rows, list)
            after = time.monotonic() - answered
            for stage, template, channel in rows:
                print(f"  {after:.1f}s after the 200: {user} entered {stage}; {channel} {template} queued")
            seen += len(rows)
        wait_for(lambda: sum(settled(engine, user).values()) >= seen, "the messages to be sent")
        done = ", ".join(f"{n} {status}" for status, n in sorted(settled(engine, user).items()))
        print(
            f"  {user}'s messages: {done} (with no provider configured, to files in {settings.outbox_dir}/)"
        )
        click_first_link(engine, user, port)
    finally:
        server.stop()
        worker.stop()
        engine.dispose()


def click_first_link(engine: Engine, user: str, port: int) -> None:
    """Open the first tracked link of the customer's first email file, as a reader would, and show
    the redirect and the ``email_clicked`` event it records."""
    with engine.connect() as conn:
        path = conn.execute(
            text("SELECT provider_id FROM outbox WHERE customer_id = :c AND channel = 'email' ORDER BY id"),
            {"c": user},
        ).scalar()
    if not path or not Path(path).is_file():
        return
    message = email.message_from_bytes(Path(path).read_bytes(), policy=email.policy.default)
    body = message.get_body(("html", "plain"))
    content = body.get_content() if body is not None else ""  # type: ignore[attr-defined]
    found = re.search(rf"http://127\.0\.0\.1:{port}(/c/[A-Za-z0-9_.~-]+)", content)
    if found is None:
        print("  (no tracked link found in the email)")
        return
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", found.group(1))
    answer = conn.getresponse()
    conn.close()
    print(f"clicked a link in {Path(path).name}: {answer.status} to {answer.getheader('Location')}")
    template = wait_for(partial(clicked, engine, user), "the click event")
    print(f"  recorded as the event email_clicked of {user} (template {template}); rules can use it")


def clicked(engine: Engine, user: str) -> str | None:
    with engine.connect() as conn:
        props = conn.execute(
            text("SELECT properties FROM event WHERE customer_id = :c AND name = 'email_clicked'"),
            {"c": user},
        ).scalar()
    if props is None:
        return None
    return str((json.loads(props) if isinstance(props, str) else props).get("template"))


def queued(engine: Engine, user: str, seen: int) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT stage, template, channel FROM outbox WHERE customer_id = :c ORDER BY id"),
            {"c": user},
        ).all()
    return [tuple(row) for row in rows[seen:]]


def settled(engine: Engine, user: str) -> dict[str, int]:
    """Message counts by final status (sent, dead, ...) of ``user``'s messages."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT status, count(*) FROM outbox WHERE customer_id = :c"
                " AND status NOT IN ('pending', 'claimed', 'retry') GROUP BY status"
            ),
            {"c": user},
        ).all()
    return {status: int(n) for status, n in rows}


if __name__ == "__main__":
    main()
