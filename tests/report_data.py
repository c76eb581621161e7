"""Generated rows for ``automation report`` tests, and the report's figures computed from them in Python.

``generate(seed)`` makes a few hundred program entries, their messages (two variants on one step),
feedback facts, stage transitions and conversions, some outside the period and some of another
playbook; ``insert(engine, data)`` writes them. ``expected_*`` compute the figures from the same
Python rows, independently of ``automation.report``.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert

from automation.db.tables import CONVERSION, ENROLLMENT, FEEDBACK, HISTORY, OUTBOX

PLAYBOOK = "lifecycle"
UNTIL = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SINCE = UNTIL - timedelta(days=30)
STAGES = ("acquisition", "conversion")


@dataclass
class Data:
    enrollment: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    conversion: list[dict[str, Any]] = field(default_factory=list)


def _in(moment: datetime) -> bool:
    return SINCE <= moment < UNTIL


def generate(seed: int = 7, customers: int = 300) -> Data:
    rng = random.Random(seed)
    data = Data()
    for n in range(customers):
        playbook = PLAYBOOK if n % 10 else "other"
        customer = f"c{n:05d}"
        stage = rng.choice(STAGES)
        cohort = rng.choices(("treatment", "holdout", "control"), (80, 15, 5))[0]
        started = UNTIL - timedelta(days=40) + timedelta(seconds=rng.randrange(0, 39 * 86400))
        data.enrollment.append(
            {
                "id": n + 1,
                "playbook": playbook,
                "customer_id": customer,
                "stage": stage,
                "touch": "none",
                "started_at": started,
                "cohort": cohort,
            }
        )
        prev = rng.choice((None, "acquisition", "conversion"))
        data.history.append(
            {
                "playbook": playbook,
                "customer_id": customer,
                "from_stage": prev,
                "to_stage": stage,
                "at": started,
            }
        )
        if rng.random() < 0.1:  # a segment-only change: not a transition of the funnel
            data.history.append(
                {
                    "playbook": playbook,
                    "customer_id": customer,
                    "from_stage": stage,
                    "to_stage": stage,
                    "at": started + timedelta(hours=1),
                }
            )
        last_sent_id = None
        for k in range(rng.choice((1, 2))):
            oid = len(data.outbox) + 1
            step = f"{stage}/none#{k}"
            template = rng.choice(("welcome", "welcome_short")) if k == 0 else f"{stage}_followup"
            created = started + timedelta(hours=k * 24)
            held = cohort != "treatment"
            failed = not held and rng.random() < 0.05
            sent_at = None if held else created + timedelta(minutes=1)
            row: dict[str, Any] = {
                "id": oid,
                "idempotency_key": f"k{oid}",
                "playbook": playbook,
                "customer_id": customer,
                "channel": "email" if k == 0 else rng.choice(("email", "sms")),
                "template": template,
                "stage": stage,
                "step": step,
                "status": "held_out" if held else ("failed" if failed else "sent"),
                "due_at": created,
                "created_at": created,
                "sent_at": sent_at,
                "payload": {},
            }
            if sent_at is not None and not failed:
                if rng.random() < 0.9:
                    row["delivered_at"] = sent_at + timedelta(minutes=1)
                if rng.random() < 0.04:
                    row["bounced_at"] = sent_at + timedelta(minutes=2)
                if rng.random() < 0.4:
                    row["opened_at"] = sent_at + timedelta(hours=1)
                    row["opens"] = rng.randint(1, 3)
                if rng.random() < 0.3:
                    row["machine_opens"] = 1
                if rng.random() < 0.2:
                    row["clicked_at"] = sent_at + timedelta(hours=2)
                    row["clicks"] = rng.randint(1, 2)
                if rng.random() < 0.02:
                    row["complained_at"] = sent_at + timedelta(hours=3)
                if rng.random() < 0.05:
                    for j in range(rng.choice((1, 2))):  # a repeated report is one unsubscribed message
                        data.feedback.append(
                            {
                                "dedupe_key": f"u{oid}-{j}",
                                "outbox_id": oid,
                                "customer_id": customer,
                                "channel": "email",
                                "kind": "unsubscribed",
                                "source": "generic",
                                "occurred_at": sent_at,
                                "received_at": sent_at,
                                "detail": {},
                            }
                        )
                if rng.random() < 0.05:
                    data.feedback.append(
                        {
                            "dedupe_key": f"c{oid}",
                            "outbox_id": oid,
                            "customer_id": customer,
                            "channel": "email",
                            "kind": "clicked",
                            "source": "tracking",
                            "occurred_at": sent_at,
                            "received_at": sent_at,
                            "detail": {},
                        }
                    )
                last_sent_id = (oid, template)
            data.outbox.append(row)
        p_convert = {"treatment": 0.35, "holdout": 0.2, "control": 0.15}[cohort]
        for goal in (stage, "playbook"):  # a stage's goal and the playbook's own
            if rng.random() < p_convert:
                converted = started + timedelta(seconds=rng.randrange(600, 10 * 86400))
                oid, template = last_sent_id if last_sent_id and cohort == "treatment" else (None, None)
                data.conversion.append(
                    {
                        "playbook": playbook,
                        "goal": goal,
                        "customer_id": customer,
                        "enrollment_id": n + 1,
                        "cohort": cohort,
                        "entered_at": started,
                        "converted_at": converted,
                        "outbox_id": oid,
                        "template": template,
                    }
                )
    return data


def insert_data(engine: Engine, data: Data) -> None:
    with engine.begin() as conn:
        for table, rows in (
            (ENROLLMENT, data.enrollment),
            (OUTBOX, data.outbox),
            (FEEDBACK, data.feedback),
            (HISTORY, data.history),
            (CONVERSION, data.conversion),
        ):
            columns = {c for row in rows for c in row}
            conn.execute(insert(table), [{c: row.get(c, _default(c)) for c in columns} for row in rows])


def _default(column: str) -> Any:
    return 0 if column in ("opens", "machine_opens", "clicks") else None


# -- the figures, computed in Python ----------------------------------------------------------------
def expected_steps(data: Data) -> dict[tuple[str, str, str, str], dict[str, int]]:
    unsub = {f["outbox_id"] for f in data.feedback if f["kind"] == "unsubscribed"}
    converted = {c["outbox_id"] for c in data.conversion if c["playbook"] == PLAYBOOK and c["outbox_id"]}
    out: dict[tuple[str, str, str, str], Counter[str]] = {}
    for o in data.outbox:
        if o["playbook"] != PLAYBOOK or not _in(o["created_at"]):
            continue
        c = out.setdefault((o["stage"], o["step"], o["template"], o["channel"]), Counter())
        c["planned"] += 1
        c["sent"] += o["sent_at"] is not None
        c["held_out"] += o["status"] == "held_out"
        c["failed"] += o["status"] == "failed"
        for name in ("delivered", "bounced", "opened", "clicked", "complained"):
            c[name] += o.get(f"{name}_at") is not None
        c["machine_opened"] += o.get("machine_opens", 0) > 0
        c["unsubscribed"] += o["id"] in unsub
        c["converted"] += o["id"] in converted
    return {k: dict(v) for k, v in out.items()}


def expected_entries(data: Data) -> Counter[tuple[str, str]]:
    return Counter(
        (e["stage"], e["cohort"])
        for e in data.enrollment
        if e["playbook"] == PLAYBOOK and _in(e["started_at"])
    )


def expected_funnel(data: Data) -> Counter[tuple[str | None, str | None]]:
    return Counter(
        (h["from_stage"], h["to_stage"])
        for h in data.history
        if h["playbook"] == PLAYBOOK and _in(h["at"]) and h["from_stage"] != h["to_stage"]
    )


def expected_conversions(data: Data) -> Counter[tuple[str, str]]:
    return Counter(
        (c["goal"], c["cohort"])
        for c in data.conversion
        if c["playbook"] == PLAYBOOK and _in(c["entered_at"])
    )


def expected_medians(data: Data) -> dict[tuple[str, str], float]:
    seconds: dict[tuple[str, str], list[float]] = {}
    for c in data.conversion:
        if c["playbook"] == PLAYBOOK and _in(c["entered_at"]):
            key = (c["goal"], c["cohort"])
            seconds.setdefault(key, []).append((c["converted_at"] - c["entered_at"]).total_seconds())
    return {k: statistics.median(v) for k, v in seconds.items()}


def expected_daily(data: Data) -> Counter[tuple[str, str, str]]:
    return Counter(
        (c["converted_at"].strftime("%Y-%m-%d"), c["goal"], c["cohort"])
        for c in data.conversion
        if c["playbook"] == PLAYBOOK and _in(c["entered_at"])
    )
