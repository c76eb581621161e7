"""Two ``automation dispatch`` workers on PostgreSQL, one of them killed with SIGKILL again and again.

5,000 webhook messages are due. Two workers drain them into a local receiver that counts requests per
``Idempotency-Key``; at random moments one of them is killed (no chance to mark or release anything) and
started again. After the kills the survivors are stopped and one ``dispatch --once`` with a clock past the
2-minute lease takes over what the killed workers held. Then every message has reached the receiver and
is ``sent``, nothing is claimed, and the only keys the receiver saw twice belong to messages a killed
worker held when it died.
"""

from __future__ import annotations

import base64
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select

from automation.db.connect import make_engine
from automation.db.tables import CUSTOMER, OUTBOX
from automation.outbox.dispatch import DispatchConfig
from tests.conftest import ROOT, fresh_postgres_database
from tests.e2e.worker_tools import EXE, FastReceiver, Proc, cli_env, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

MESSAGES = 5_000
MIN_KILLS, MAX_KILLS = 10, 20
RECEIVER_DELAY = 0.15  # seconds per request while killing: keeps each worker at ~130 requests/s
KILL_PHASE = 100.0  # seconds at most for the kills; the whole test stays well under 3 minutes
SECRET = "whsec_" + base64.b64encode(b"crash-test-secret-0123456789").decode()
# What one worker can hold when it dies: ``lanes`` batches of ``batch_size`` claimed rows (the defaults;
# `automation dispatch` has no option for them). A message is sent twice only if the worker that held it
# sent it and died before marking it, so duplicates are at most kills x lanes x batch_size.
HELD_PER_WORKER = DispatchConfig().lanes * DispatchConfig().batch_size
LEASE = DispatchConfig().lease


@pytest.fixture
def crash_db() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test only (skipped locally without a server)."""
    with fresh_postgres_database(f"automation_crash_{os.getpid()}") as url:
        yield url


def fill(engine: Engine, now: datetime) -> set[str]:
    """MESSAGES customers, each with one due webhook message; returns the idempotency keys."""
    customers = [
        {
            "id": f"crash_{n:05d}",
            "email": f"crash.{n}@example.com",
            "timezone": "UTC",
            "orders_count": 3,
            "clv": float(n),
            "attributes": {},
        }
        for n in range(MESSAGES)
    ]
    messages = [
        {
            "idempotency_key": f"crash:loyalty:{n:05d}",
            "playbook": "crash",
            "customer_id": f"crash_{n:05d}",
            "channel": "webhook",
            "template": "loyalty_points",
            "stage": "loyalty",
            "segment": "everyone",
            "touch": "none",
            "step": "loyalty/none#2",
            "priority": 0,
            "payload": {"url": "${LOYALTY_WEBHOOK_URL}", "timezone": "UTC"},
            "status": "pending",
            "due_at": now - timedelta(minutes=1),
            "attempts": 0,
            "created_at": now,
        }
        for n in range(MESSAGES)
    ]
    with engine.begin() as conn:
        conn.execute(insert(CUSTOMER), customers)
        conn.execute(insert(OUTBOX), messages)
    return {str(m["idempotency_key"]) for m in messages}


def count(engine: Engine, *statuses: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(OUTBOX.c.status.in_(statuses))).scalar_one())


def held_by(engine: Engine, pid: int) -> set[str]:
    """Keys of the rows a worker process holds; its worker id is ``<host>-<pid>-<6 hex>``."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(OUTBOX.c.idempotency_key, OUTBOX.c.lease_owner).where(OUTBOX.c.status == "claimed")
        )
        return {str(key) for key, owner in rows if re.search(rf"-{pid}-[0-9a-f]{{6}}$", owner or "")}


def test_killed_workers_lose_nothing_and_repeat_only_what_they_held(crash_db: str, tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    context = f"(random seed {seed})"
    started = time.monotonic()
    engine = make_engine(crash_db)
    keys = fill(engine, datetime.now(UTC))

    with FastReceiver(SECRET, delay=RECEIVER_DELAY) as receiver:
        env = cli_env(
            AUTOMATION_DATABASE_URL=crash_db,
            AUTOMATION_TEMPLATES_DIR=str(ROOT / "templates"),
            AUTOMATION_OUTBOX_DIR=str(tmp_path / "outbox"),
            AUTOMATION_WEBHOOKS="http",
            AUTOMATION_WEBHOOK_SECRET=SECRET,
            LOYALTY_WEBHOOK_URL=f"{receiver.url}/loyalty",
        )
        launched: list[Proc] = []

        def launch() -> Proc:
            proc = Proc(
                ["dispatch", "--poll", "0.2"],
                cwd=tmp_path,
                env=env,
                stdout=tmp_path / f"worker-{len(launched)}.out",
            )
            launched.append(proc)
            return proc

        try:
            workers = [launch(), launch()]
            held: set[str] = set()  # keys held by a worker when it was killed
            kills: list[tuple[float, int, int]] = []  # (seconds into the test, held at death, receiver total)
            while len(kills) < MAX_KILLS and time.monotonic() - started < KILL_PHASE:
                if len(kills) >= MIN_KILLS and count(engine, "pending", "retry") == 0:
                    break  # the survivors have nothing left to take: more kills would only hit idle workers
                for worker in workers:
                    worker.wait_for_line(lambda line: line.startswith("webhook: "), 60, "the worker's start")
                time.sleep(rng.uniform(0.3, 1.5))
                slot = rng.randrange(2)
                victim = workers[slot]
                victim.popen.send_signal(signal.SIGKILL)
                assert victim.wait(10) == -signal.SIGKILL
                lost = held_by(engine, victim.pid)
                held |= lost
                kills.append((round(time.monotonic() - started, 1), len(lost), receiver.total))
                victim.close()
                workers[slot] = launch()

            # stop the survivors (they finish the batches they hold); what is still claimed is the dead's
            receiver.delay = 0.0
            wait_until(lambda: count(engine, "pending", "retry") == 0, 60, f"the survivors' drain {context}")
            for worker in workers:  # one may have been started a moment ago: let it set up its handlers
                worker.wait_for_line(lambda line: line.startswith("webhook: "), 60, "the worker's start")
            time.sleep(1.0)
            for worker in workers:
                worker.signal(signal.SIGTERM)
            for worker in workers:
                assert worker.wait(30) == 0, worker.stderr
            with engine.connect() as conn:
                claimed = {
                    k
                    for (k,) in conn.execute(
                        select(OUTBOX.c.idempotency_key).where(OUTBOX.c.status == "claimed")
                    )
                }
            assert claimed <= held, f"claimed by a worker that was not killed {context}"
            assert count(engine, "sent") == MESSAGES - len(claimed)

            # the leases of the killed workers have not run out yet: a clock past them takes them over
            at = (datetime.now(UTC) + LEASE + timedelta(minutes=1)).isoformat()
            final = subprocess.run(
                [str(EXE), "dispatch", "--once", "--at", at],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert final.returncode == 0, final.stdout + final.stderr
            assert f"dispatched {len(claimed):,} messages" in final.stdout, final.stdout
        finally:
            for proc in launched:
                proc.close()

        counts = receiver.counts
        bad_signatures = receiver.bad_signatures

    elapsed = time.monotonic() - started
    engine_statuses = {
        status: count(engine, status) for status in ("sent", "claimed", "pending", "retry", "dead")
    }
    engine.dispose()
    duplicates = {key: n for key, n in counts.items() if n > 1}
    report = (
        f"{context}: {len(kills)} kills (seconds, held, receiver total): {kills}; "
        f"{len(held)} held at a kill, {len(claimed)} taken over by the final drain, "
        f"{len(duplicates)} keys received twice; {elapsed:.0f}s"
    )
    print(report)

    assert len(kills) >= MIN_KILLS, report
    assert set(counts) == keys, f"messages never delivered: {len(keys - set(counts))} {report}"
    assert engine_statuses == {"sent": MESSAGES, "claimed": 0, "pending": 0, "retry": 0, "dead": 0}, report
    assert bad_signatures == 0
    # only what a killed worker held is repeated, and only once (by the final drain)
    assert set(duplicates) <= held, report
    assert set(duplicates.values()) <= {2}, report
    assert len(duplicates) <= len(kills) * HELD_PER_WORKER, report
    assert elapsed < 180, report
