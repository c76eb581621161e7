"""Helpers for tests that run ``automation run`` and ``automation dispatch`` as long-lived subprocesses.

* :class:`Proc` starts the CLI, collects its stderr lines in a background thread (so a full pipe never
  blocks it) and waits for lines, signals and exit codes with bounded timeouts;
* :func:`wait_until` polls a condition with a deadline;
* :class:`FastReceiver` is a small aiohttp webhook receiver on 127.0.0.1 (in a background thread) that
  counts requests per ``Idempotency-Key`` and checks Standard Webhooks signatures; it keeps up with
  thousands of requests where the threaded ``tests.http_server`` is too slow.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from aiohttp import web

from tests.http_server import standard_webhooks_valid

EXE = Path(sys.executable).with_name("automation")
T = TypeVar("T")

# An address that is not masked the way automation.masking masks it ("j***@example.com").
UNMASKED_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]*[A-Za-z0-9_%+\-]{2}@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def wait_until(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """``automation <args>`` in ``cwd`` with ``env``; stdout goes to a file, stderr lines are collected."""

    def __init__(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str], stdout: Path) -> None:
        self.args = list(args)
        self.stdout_path = stdout
        self._stdout: IO[str] = stdout.open("w", encoding="utf-8")
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.popen = subprocess.Popen(
            [str(EXE), *self.args],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self._reader = threading.Thread(target=self._read, name=f"stderr-{self.popen.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._lock:
                self._lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    @property
    def stdout(self) -> str:
        self._stdout.flush()
        return self.stdout_path.read_text(encoding="utf-8")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """The first stderr line (of all so far) matching ``predicate``; fails if the process exits first."""

        def found() -> str | None:
            match = next((line for line in self.lines if predicate(line)), None)
            if match is None and not self.alive():
                self._reader.join(timeout=5)
                match = next((line for line in self.lines if predicate(line)), None)
                if match is None:
                    raise AssertionError(
                        f"automation {' '.join(self.args)} exited with {self.popen.returncode} before "
                        f"{what}; stderr:\n{self.stderr}"
                    )
            return match

        return wait_until(found, timeout, f"{what}; stderr so far:\n{self.stderr}")

    def signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for exit (the test fails if it takes longer than ``timeout``); returns the exit code."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(
                f"automation {' '.join(self.args)} did not exit within {timeout:.1f}s; stderr:\n{self.stderr}"
            ) from None
        self._reader.join(timeout=5)
        return code

    def close(self) -> None:
        """Kill the process if it still runs, reap it and close its files (safe to call twice)."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        self._reader.join(timeout=5)
        if self.popen.stderr is not None:
            self.popen.stderr.close()
        self._stdout.close()


def cli(*args: str, cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """``automation <args>`` run to its end in ``cwd`` with ``env``, its output captured."""
    return subprocess.run(
        [str(EXE), *args], cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=120, check=False
    )


def load_sample(
    run: Callable[..., subprocess.CompletedProcess[str]], cwd: Path, *, customers: int, seed: int, now: str
) -> Path:
    """Migrate the default SQLite database in ``cwd`` and import ``customers`` sample customers (with
    their events, as of ``now``), through the CLI that ``run(*args, cwd=cwd)`` starts."""
    for args in (
        ("db", "upgrade"),
        ("sample-data", "sample", "--customers", str(customers), "--seed", str(seed), "--now", now),
        ("import", "customers", "sample/customers.csv"),
        ("import", "events", "sample/events.jsonl"),
    ):
        result = run(*args, cwd=cwd)
        assert result.returncode == 0, result.stderr
    return cwd


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any ``AUTOMATION_*`` setting it may carry, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
    env.pop("LOYALTY_WEBHOOK_URL", None)
    env.update(extra)
    return env


def check_json_logs(lines: Sequence[str], plain: Callable[[str], bool] = lambda line: False) -> list[Any]:
    """Every line is a JSON object with time/level/logger/message, except lines ``plain`` accepts
    (what the CLI prints with ``click.echo`` rather than logging); no line holds an unmasked address."""
    records = []
    for line in lines:
        leaked = UNMASKED_EMAIL.findall(line)
        assert not leaked, f"unmasked email address in a log line: {line}"
        if plain(line):
            continue
        record = json.loads(line)
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record), line
        records.append(record)
    return records


class FastReceiver:
    """An aiohttp webhook receiver on 127.0.0.1 that answers 200 after ``delay`` seconds.

    ``counts`` holds how many requests arrived per ``Idempotency-Key`` (counted on arrival, so a request
    whose sender was killed mid-request still counts); ``bad_signatures`` those failing the Standard
    Webhooks check with ``secret``.
    """

    def __init__(self, secret: str, delay: float = 0.0) -> None:
        self.secret = secret
        self.delay = delay
        self.bad_signatures = 0
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fast-receiver", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = headers.get("idempotency-key", "")
        ok = standard_webhooks_valid(self.secret, headers, body)
        with self._lock:
            self._counts[key] += 1
            if not ok:
                self.bad_signatures += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response({"id": f"evt_{headers.get('webhook-id', '')}"})

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> FastReceiver:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the receiver did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=15)
