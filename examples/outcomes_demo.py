"""The last step of ``make demo``: measure a playbook against its holdout.

``examples/onboarding.yaml`` welcomes the customers who have not ordered yet, holds 20% of them out
(their messages are recorded, never sent) and counts a first order within 14 days as its goal. This
script ticks it now and sends its emails (to the file outbox), then plays the customers' answer:
each one's first order is drawn from a seeded random number, more likely for those who got a welcome
(35%, and 40% for the ``welcome`` variant against 30% for ``getting_started``) than for the holdout
(15%), and imported as a CSV of ``orders_count`` like any customer data. A tick two hours later
finds the conversions, and ``automation report`` shows the lift with its confidence interval.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from automation.config import Settings
from automation.db.connect import make_engine

EXE = Path(sys.executable).with_name("automation")
PLAYBOOK = Path(__file__).resolve().parent / "onboarding.yaml"
CHANCE = {"welcome": 0.40, "getting_started": 0.30}  # sent; anyone else (held out, not yet sent): 15%
BASELINE = 0.15


def automation(*args: str) -> str:
    result = subprocess.run([str(EXE), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"automation {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def main() -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    later = start + timedelta(hours=2)
    print(f"measuring {PLAYBOOK.name}: tick at {start:%H:%M}, then the customers answer")
    print(automation("tick", str(PLAYBOOK), "--at", start.isoformat()).strip())
    automation("dispatch", "--once")
    engine = make_engine(Settings.from_env().database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT customer_id, CASE WHEN status = 'sent' THEN template ELSE status END "
                "FROM outbox WHERE playbook = 'onboarding' ORDER BY customer_id"
            )
        ).all()
    engine.dispose()
    draw = random.Random(7)
    ordered = [cid for cid, arm in rows if draw.random() < CHANCE.get(arm, BASELINE)]
    with tempfile.TemporaryDirectory() as tmp:
        orders = Path(tmp) / "first_orders.csv"
        orders.write_text("id,orders_count\n" + "".join(f"{cid},1\n" for cid in ordered))
        automation("import", "customers", str(orders))
    print(f"{len(ordered):,} of {len(rows):,} customers placed a first order")
    print(automation("tick", str(PLAYBOOK), "--at", later.isoformat()).strip())
    until = (later + timedelta(minutes=1)).isoformat()
    print(automation("report", str(PLAYBOOK), "--since", "1d", "--until", until))
    automation("report", str(PLAYBOOK), "--since", "1d", "--until", until, "--html", "report.html")
    print("the same as a page, with charts: report.html")


if __name__ == "__main__":
    main()
