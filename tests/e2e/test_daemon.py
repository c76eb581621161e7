"""``automation run`` as a subprocess against real receivers: an SMTP server and a signed-webhook receiver.

Each test copies a small SQLite project (sample data generated for the current time) with a test
playbook that ticks every 2 seconds and has no quiet hours or frequency cap, so what the worker sends
does not depend on the time of day; the templates are the project's own.
"""

from __future__ import annotations

import base64
import shutil
import signal
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.e2e.worker_tools import Proc, check_json_logs, cli, cli_env, load_sample, wait_until
from tests.hostile import alias_bomb
from tests.http_server import LocalServer, Recorded, Reply, serve
from tests.smtp_server import SmtpTestServer

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(b"daemon-test-secret-0123456789").decode()
SENDER = "Juniper <hello@shop.example>"
PLAYBOOK = """\
name: daemon
description: The worker under test; ticks often, no quiet hours, no frequency cap
schedule: every 2 seconds
segments:
  - name: everyone
    touch: none
stages:
  - name: loyal
    when: orders_count >= 2
  - name: fresh
    when: orders_count < 2
programs:
  loyal:
    none:
      - email: vip_welcome
      - webhook: loyalty_points
        url: ${LOYALTY_WEBHOOK_URL}
  fresh:
    none:
      - email: FRESH_TEMPLATE
"""
SUBJECTS = {
    "vip_welcome": "You're a Juniper VIP",
    "welcome": "Welcome to Juniper",
    "getting_started": "3 quick",
}
FINAL = ("sent", "dead", "suppressed", "skipped", "cancelled")
WAIT = 40.0  # seconds: upper bound for anything the worker does in these tests (it takes 1-3 s)


def playbook(fresh_template: str = "welcome") -> str:
    return PLAYBOOK.replace("FRESH_TEMPLATE", fresh_template)


@pytest.fixture(scope="module")
def template_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrated SQLite database with sample customers and events as of now, and the test playbook."""
    cwd = tmp_path_factory.mktemp("daemon-template")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    env = cli_env(AUTOMATION_TEMPLATES_DIR=str(ROOT / "templates"))
    load_sample(partial(cli, env=env), cwd, customers=30, seed=11, now=now)
    (cwd / "playbooks").mkdir()
    (cwd / "playbooks" / "daemon.yaml").write_text(playbook())
    return cwd


@pytest.fixture
def project(template_project: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template_project, tmp_path / "project"))


@dataclass
class Receivers:
    smtp: SmtpTestServer
    http: LocalServer
    env: dict[str, str]


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    with SmtpTestServer() as smtp, serve(secret=SECRET, dedupe_header="Idempotency-Key") as http:
        env = cli_env(
            AUTOMATION_TEMPLATES_DIR=str(ROOT / "templates"),
            AUTOMATION_SMTP_URL=smtp.url,
            AUTOMATION_EMAIL_FROM=SENDER,
            AUTOMATION_WEBHOOKS="http",
            AUTOMATION_WEBHOOK_SECRET=SECRET,
            LOYALTY_WEBHOOK_URL=f"{http.url}/loyalty",
        )
        yield Receivers(smtp, http, env)


def start(procs: list[Proc], project: Path, env: dict[str, str], *args: str) -> Proc:
    proc = Proc(
        ["run", "--log-format", "json", "--poll", "0.2", *args],
        cwd=project,
        env=env,
        stdout=project / f"run-{len(procs)}.out",
    )
    procs.append(proc)
    return proc


# -- the database, read directly ------------------------------------------------------------------
def query(project: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(project / "automation.db", timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql, params))


def outbox(project: Path) -> list[sqlite3.Row]:
    return query(
        project,
        "SELECT o.idempotency_key, o.channel, o.status, o.template, o.customer_id, c.email"
        " FROM outbox o JOIN customer c ON c.id = o.customer_id ORDER BY o.id",
    )


def settled(project: Path, at_least: int = 1) -> list[sqlite3.Row] | None:
    """The outbox once it holds ``at_least`` rows and every one is final, else None."""
    rows = outbox(project)
    return rows if len(rows) >= at_least and all(r["status"] in FINAL for r in rows) else None


def customers(project: Path) -> list[sqlite3.Row]:
    return query(project, "SELECT id, email, orders_count FROM customer ORDER BY id")


# -- what the receivers saw -----------------------------------------------------------------------
def json_plain(line: str) -> bool:
    """With --log-format json every stderr line is JSON: nothing is allowed in plain text."""
    return False


def messages_to(smtp: SmtpTestServer, address: str) -> list[Any]:
    return [m.message for m in smtp.messages if address in m.rcpt_tos]


def hooks_for(http: LocalServer, customer_id: str) -> list[Recorded]:
    return [r for r in http.requests if r.path == "/loyalty" and r.json()["customer_id"] == customer_id]


def import_customer(project: Path, env: dict[str, str], customer_id: str, email: str, orders: int) -> None:
    path = project / f"{customer_id}.csv"
    path.write_text(f"id,email,first_name,orders_count\n{customer_id},{email},Newt,{orders}\n")
    result = cli("import", "customers", str(path), cwd=project, env=env)
    assert result.returncode == 0, result.stderr


def stop(proc: Proc, timeout: float = 15.0) -> None:
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout) == 0, proc.stderr


# -- the tests ------------------------------------------------------------------------------------
def test_run_ticks_and_delivers_email_and_signed_webhooks(
    project: Path, receivers: Receivers, procs: list[Proc]
) -> None:
    people = customers(project)
    loyal = {c["id"] for c in people if c["orders_count"] >= 2}
    with_email = {c["id"]: c["email"] for c in people if c["email"]}
    assert loyal and with_email

    proc = start(procs, project, receivers.env)
    rows = wait_until(lambda: settled(project, len(people) + len(loyal)), WAIT, "every message sent")
    smtp, http = receivers.smtp, receivers.http
    wait_until(lambda: len(http.requests) >= len(loyal), WAIT, "the webhooks")
    stop(proc)

    # one email per customer (the first step of either program), one webhook per loyal customer
    assert Counter(r["channel"] for r in rows) == {"email": len(people), "webhook": len(loyal)}
    emails = [r for r in rows if r["channel"] == "email"]
    assert {r["customer_id"] for r in emails if r["status"] == "sent"} == set(with_email)
    assert all(r["status"] == "suppressed" for r in emails if r["customer_id"] not in with_email)

    received = smtp.messages
    assert sorted(a for m in received for a in m.rcpt_tos) == sorted(with_email.values())
    assert len({m.message["Message-ID"] for m in received}) == len(received)
    for row in emails:
        if row["status"] != "sent":
            continue
        (message,) = messages_to(smtp, row["email"])
        assert message["Subject"].startswith(SUBJECTS[row["template"]])
        assert message["From"] == SENDER and message["X-Automation-Key"] == row["idempotency_key"]
        assert message["List-Unsubscribe"] and message.get_body(("plain",)) is not None

    hooks = [r for r in rows if r["channel"] == "webhook"]
    assert all(r["status"] == "sent" for r in hooks)
    requests = http.requests
    assert len(requests) == len(loyal)  # nothing was retried
    assert all(r.method == "POST" and r.path == "/loyalty" and r.signature_ok for r in requests)
    assert {r.header("Idempotency-Key") for r in requests} == {r["idempotency_key"] for r in hooks}
    assert {r.json()["customer_id"] for r in requests} == loyal
    assert all(r.json()["event"] == "loyalty_points" for r in requests)

    records = check_json_logs(proc.lines, json_plain)
    messages = [r["message"] for r in records]
    assert "running 1 playbook(s); dispatching" in messages
    ticks = [m for m in messages if m.startswith("daemon: tick in ")]
    assert ticks and "(evaluated everyone (first tick))" in ticks[0]
    assert any(m.startswith("batch of ") for m in messages)
    assert not [r for r in records if r["level"] in ("warning", "error", "critical")]
    assert messages[-1] == "stopped"
    assert {"email", "webhook"} <= {m.split(":", 1)[0] for m in messages}  # the channels, as JSON lines


def test_sighup_with_a_broken_playbook_keeps_the_previous_version_then_reloads(
    project: Path, receivers: Receivers, procs: list[Proc]
) -> None:
    smtp, http, env = receivers.smtp, receivers.http, receivers.env
    path = project / "playbooks" / "daemon.yaml"
    where = "playbooks/daemon.yaml"  # as the worker names it: relative to its working directory
    proc = start(procs, project, env)
    wait_until(lambda: settled(project, len(customers(project))), WAIT, "the first tick's messages")

    def refused(position: str, what: str) -> dict[str, Any]:
        """The error record of a refused reload, naming ``position`` (file:line:column) and ``what``."""

        def find() -> dict[str, Any] | None:
            records = check_json_logs(proc.lines, json_plain)
            return next(
                (
                    r
                    for r in records
                    if r["level"] == "error" and position in r["message"] and what in r["message"]
                ),
                None,
            )

        record = wait_until(find, WAIT, f"a refused reload naming {position}")
        assert "reload refused, the previous playbooks keep running" in record["message"]
        assert proc.alive()
        return record

    # 1. a YAML syntax error
    good = playbook()
    lines = good.splitlines()
    lines.insert(2, "  broken: [")  # line 3 of the file
    path.write_text("\n".join(lines) + "\n")
    proc.signal(signal.SIGHUP)
    refused(f"{where}:3:", "invalid YAML")

    # 2. a rule naming a field that does not exist, on a line that also holds an email address
    line = "    when: orders_count >= 2"
    number = good.splitlines().index(line) + 1
    path.write_text(
        good.replace(line, line + ' or email == "boss.person@bigcorp.example" or ordres_count > 99')
    )
    proc.signal(signal.SIGHUP)
    record = refused(f"{where}:{number}:", "unknown field 'ordres_count'")
    assert 'b***@bigcorp.example"' in record["message"]  # the source line is shown, its address masked

    # 3. a wrong value type
    path.write_text(good.replace("touch: none", "touch: [none]"))
    proc.signal(signal.SIGHUP)
    refused(f"{where}:6:", "touch")

    # 4. hostile YAML: an alias bomb, nesting 20,000 levels deep, a Python tag; a rule nested 400 deep
    path.write_text(good + alias_bomb())
    proc.signal(signal.SIGHUP)
    refused(f"{where}:{len(good.splitlines()) + 6}:", "once aliases are expanded")
    path.write_text(good + "deep: " + "[" * 20_000 + "]" * 20_000 + "\n")
    proc.signal(signal.SIGHUP)
    refused(f"{where}:{len(good.splitlines()) + 1}:", "nested more than 50 levels deep")
    path.write_text(good + "hook: !!python/object/apply:os.system [touch pwned]\n")
    proc.signal(signal.SIGHUP)
    refused(f"{where}:{len(good.splitlines()) + 1}:", "!!python/object/apply:os.system is not allowed")
    path.write_text(good.replace(line, "    when: " + "(" * 400 + "orders_count >= 2" + ")" * 400))
    proc.signal(signal.SIGHUP)
    refused(f"{where}:{number}:", "nests more than 32 levels deep")
    assert not (project / "pwned").exists()

    # the previous version still runs: a customer imported now gets its program (email + webhook)
    import_customer(project, env, "new_loyal", "new.loyal@example.net", orders=5)
    wait_until(lambda: messages_to(smtp, "new.loyal@example.net"), WAIT, "the new customer's email")
    wait_until(lambda: hooks_for(http, "new_loyal"), WAIT, "the new customer's webhook")
    (message,) = messages_to(smtp, "new.loyal@example.net")
    assert message["Subject"].startswith(SUBJECTS["vip_welcome"])
    (hook,) = hooks_for(http, "new_loyal")
    assert hook.signature_ok

    # fixed, and changed: fresh customers now get getting_started instead of welcome
    path.write_text(playbook("getting_started"))
    proc.signal(signal.SIGHUP)
    wait_until(
        lambda: any(
            r["message"] == "reloaded 1 playbook(s): daemon" for r in check_json_logs(proc.lines, json_plain)
        ),
        WAIT,
        "the reload",
    )
    import_customer(project, env, "new_fresh", "new.fresh@example.net", orders=0)
    wait_until(lambda: messages_to(smtp, "new.fresh@example.net"), WAIT, "the email of the new version")
    (message,) = messages_to(smtp, "new.fresh@example.net")
    assert message["Subject"].startswith(SUBJECTS["getting_started"])

    stop(proc)
    records = check_json_logs(proc.lines, json_plain)
    assert [r["level"] for r in records].count("error") == 7
    assert "Traceback" not in proc.stderr and "Exception in callback" not in proc.stderr
    assert "boss.person@" not in proc.stderr


@pytest.mark.parametrize(
    ("hold", "shutdown_timeout"),
    [
        pytest.param(2.0, 20.0, id="in-flight-finish"),
        pytest.param(60.0, 2.0, id="in-flight-released"),
    ],
)
def test_sigterm_mid_drain_loses_nothing_and_sends_nothing_twice(
    project: Path, receivers: Receivers, procs: list[Proc], hold: float, shutdown_timeout: float
) -> None:
    """The webhook receiver holds every request for ``hold`` seconds; SIGTERM comes while requests are in
    flight. Either they finish within the shutdown timeout, or they are released when it runs out; in both
    cases the process exits 0 in time, leaves nothing claimed, and a later ``run --once`` delivers the
    rest: every webhook reaches the receiver once per idempotency key, every email once."""
    smtp, http, env = receivers.smtp, receivers.http, receivers.env
    holding, release = threading.Event(), threading.Event()

    def slow(request: Recorded) -> Reply:
        if holding.is_set():
            release.wait(hold)
        return Reply(200, json={"id": f"evt_{request.header('webhook-id')}"})

    http.route("/loyalty", slow)
    holding.set()
    people = customers(project)
    loyal = [c for c in people if c["orders_count"] >= 2]
    proc = start(procs, project, env, "--shutdown-timeout", str(shutdown_timeout))
    http.wait_for(1, timeout=WAIT)  # a webhook is in flight now

    proc.signal(signal.SIGTERM)
    with_margin = shutdown_timeout + 5.0
    started = datetime.now(UTC)
    code = proc.wait(with_margin)
    took = (datetime.now(UTC) - started).total_seconds()
    assert code == 0, proc.stderr
    assert took < with_margin
    records = check_json_logs(proc.lines, json_plain)
    warned = [r["message"] for r in records if r["level"] == "warning"]
    statuses = Counter(r["status"] for r in outbox(project))
    assert "claimed" not in statuses
    if hold < shutdown_timeout:  # the batch in flight finished
        assert not warned
        assert statuses["sent"] + statuses["suppressed"] == len(people) + len(loyal)
    else:  # the shutdown timeout ran out: the unfinished messages were given back
        assert warned == [f"in-flight messages did not finish within {shutdown_timeout:.0f}s; releasing them"]
        assert any(r["message"].startswith("released ") for r in records)
        assert statuses["retry"] > 0

    holding.clear()
    release.set()  # the held requests now complete at the receiver, after their sender gave up
    once = cli("run", "--once", cwd=project, env=env)
    assert once.returncode == 0, once.stdout + once.stderr
    http.wait_settled(timeout=WAIT)

    rows = outbox(project)
    hooks = [r for r in rows if r["channel"] == "webhook"]
    emails = [r for r in rows if r["channel"] == "email"]
    assert len(hooks) == len(loyal) and len(emails) == len(people)
    assert all(r["status"] == "sent" for r in hooks)
    assert all(r["status"] == ("sent" if r["email"] else "suppressed") for r in emails)

    accepted = Counter(r.header("Idempotency-Key") for r in http.deliveries)
    assert set(accepted) == {r["idempotency_key"] for r in hooks}
    assert set(accepted.values()) == {1}
    repeats = len(http.requests) - len(accepted)  # requests the receiver dropped by Idempotency-Key
    assert all(r.signature_ok for r in http.requests)
    if hold < shutdown_timeout:
        assert repeats == 0
    else:  # at most the requests in flight when the timeout ran out (the webhook concurrency, 20)
        assert 0 < repeats <= 20

    by_key = Counter(m.message["X-Automation-Key"] for m in smtp.messages)
    assert set(by_key) == {r["idempotency_key"] for r in emails if r["status"] == "sent"}
    assert set(by_key.values()) == {1}, "emails already accepted by the SMTP server were sent again"
