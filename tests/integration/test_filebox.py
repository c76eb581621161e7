"""FileOutbox: every channel writes a file (email as a real .eml, the others as JSON), idempotently."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import json
import os
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from automation.channels.base import Delivery, DeliveryResult
from automation.channels.filebox import FileOutbox, file_name
from automation.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from automation.messages.store import RenderedMessage

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def outbox(directory: Path) -> FileOutbox:
    return FileOutbox(directory, from_address="Café Shop <news@shop.example>", clock=lambda: NOW)


def send(box: FileOutbox, d: Delivery) -> DeliveryResult:
    async def run() -> DeliveryResult:
        try:
            return await box.send(d)
        finally:
            await box.aclose()

    return asyncio.run(run())


def make(kind: str, key: str = "welcome:intro:cust-1", **fields: Any) -> Delivery:
    rendered = {
        "email": RenderedMessage(
            "email", "welcome", subject="Grüße, Jörg", text="Hallo Jörg!\n", html="<p>Hallo Jörg!</p>"
        ),
        "sms": RenderedMessage("sms", "reminder", body="Your code: 1234 €", encoding="GSM-7", segments=1),
        "webhook": RenderedMessage("webhook", "crm", body='{"event": "signup"}', json={"event": "signup"}),
        "task": RenderedMessage("task", "call", title="Call Jörg", body="Ask about the order."),
    }[kind]
    defaults: dict[str, Any] = {
        "message_id": 7,
        "idempotency_key": key,
        "channel": kind,
        "customer_id": "cust-1",
        "rendered": rendered,
        "metadata": {"playbook": "welcome", "step": "intro"},
    }
    defaults.update(fields)
    return Delivery(**defaults)


def test_email_is_a_parseable_eml_with_both_parts(tmp_path: Path) -> None:
    d = make("email", to="jane@example.com", unsubscribe_url="https://shop.example/u/abc")
    result = send(outbox(tmp_path), d)

    path = Path(str(result.provider_id))
    assert path.parent == tmp_path / "email"
    assert path.suffix == ".eml"
    mail = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    assert mail["Subject"] == "Grüße, Jörg"
    assert mail["To"] == "jane@example.com"
    assert mail["From"].addresses[0].display_name == "Café Shop"
    assert parsedate_to_datetime(mail["Date"]) == NOW
    digest = hashlib.sha256(b"welcome:intro:cust-1").hexdigest()[:32]
    assert mail["Message-ID"] == f"<{digest}@shop.example>"
    assert mail["List-Unsubscribe"] == "<https://shop.example/u/abc>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    body = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert body is not None and html is not None
    assert body.get_content() == "Hallo Jörg!\n"
    assert html.get_content().strip() == "<p>Hallo Jörg!</p>"


def test_email_without_address_is_permanent_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(PermanentDeliveryError, match="no email address"):
        send(outbox(tmp_path), make("email", to=None))
    assert not any(tmp_path.rglob("*"))


def test_sms_json(tmp_path: Path) -> None:
    result = send(outbox(tmp_path), make("sms", to="+4915112345678"))

    path = Path(str(result.provider_id))
    assert path.parent == tmp_path / "sms"
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["channel"] == "sms"
    assert record["to"] == "+4915112345678"
    assert record["rendered"]["body"] == "Your code: 1234 €"
    assert record["rendered"]["encoding"] == "GSM-7"
    assert record["rendered"]["segments"] == 1
    assert record["idempotency_key"] == "welcome:intro:cust-1"
    assert record["message_id"] == 7
    assert record["metadata"] == {"playbook": "welcome", "step": "intro"}


def test_webhook_json(tmp_path: Path) -> None:
    result = send(outbox(tmp_path), make("webhook", url="https://crm.example/hooks/signup"))

    record = json.loads(Path(str(result.provider_id)).read_text(encoding="utf-8"))
    assert Path(str(result.provider_id)).parent == tmp_path / "webhook"
    assert record["url"] == "https://crm.example/hooks/signup"
    assert record["rendered"]["json"] == {"event": "signup"}
    assert record["rendered"]["body"] == '{"event": "signup"}'


def test_task_json(tmp_path: Path) -> None:
    due = datetime(2024, 5, 8, 9, 0, tzinfo=UTC)
    result = send(outbox(tmp_path), make("task", to="sales@shop.example", due=due))

    record = json.loads(Path(str(result.provider_id)).read_text(encoding="utf-8"))
    assert Path(str(result.provider_id)).parent == tmp_path / "task"
    assert record["to"] == "sales@shop.example"
    assert datetime.fromisoformat(record["due"]) == due
    assert record["rendered"]["title"] == "Call Jörg"
    assert record["rendered"]["body"] == "Ask about the order."


@pytest.mark.parametrize(
    ("delivery", "words"),
    [
        (make("sms", to=None), "no phone number"),
        (make("webhook", url=None), "no webhook URL"),
        (make("sms", channel="fax", to="123"), "unknown channel"),
    ],
)
def test_undeliverable_messages_are_permanent(tmp_path: Path, delivery: Delivery, words: str) -> None:
    with pytest.raises(PermanentDeliveryError, match=words):
        send(outbox(tmp_path), delivery)
    assert not any(tmp_path.rglob("*"))


def test_writing_the_same_delivery_twice_leaves_one_file(tmp_path: Path) -> None:
    box = outbox(tmp_path)
    first = send(box, make("sms", to="+4915112345678"))
    second = send(box, make("sms", to="+4915112345678"))
    send(box, make("sms", key="welcome:intro:cust-2", to="+4915112345679"))

    assert first.provider_id == second.provider_id
    files = sorted(p.name for p in (tmp_path / "sms").iterdir())
    assert len(files) == 2  # one per key, no temporary files left behind
    assert all(name.endswith(".json") and not name.startswith(".") for name in files)

    mails = [send(box, make("email", to="jane@example.com")) for _ in range(2)]
    assert mails[0].provider_id == mails[1].provider_id
    assert len(list((tmp_path / "email").iterdir())) == 1


def test_file_names_are_safe_and_distinct() -> None:
    a = file_name("welcome/intro:../../etc/passwd")
    b = file_name("welcome?intro:../../etc/passwd")
    for name in (a, b, file_name(".."), file_name("/"), file_name("C:\\x")):
        assert "/" not in name and "\\" not in name
        assert not name.startswith(".")
        assert Path(name).name == name
    assert a != b  # same cleaned prefix, different keys: the hash keeps them apart
    assert len(file_name("x" * 500)) <= 60 + 1 + 12
    assert file_name("k") == file_name("k")
    assert file_name("").endswith(hashlib.sha256(b"").hexdigest()[:12])


def test_paths_stay_inside_the_outbox_folder(tmp_path: Path) -> None:
    result = send(outbox(tmp_path), make("task", key="../../outside", to="sales@shop.example"))

    path = Path(str(result.provider_id)).resolve()
    assert path.is_relative_to((tmp_path / "task").resolve())


def test_an_unwritable_folder_is_transient(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")

    with pytest.raises(TransientDeliveryError, match="cannot write"):
        send(outbox(blocked), make("sms", to="+4915112345678"))


@pytest.mark.skipif(os.name != "posix", reason="checks a POSIX rename")
def test_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    box = outbox(tmp_path)
    first = send(box, make("task", to="a@shop.example"))
    inode = os.stat(str(first.provider_id)).st_ino
    send(box, make("task", to="b@shop.example"))

    path = Path(str(first.provider_id))
    assert json.loads(path.read_text(encoding="utf-8"))["to"] == "b@shop.example"
    assert os.stat(path).st_ino != inode  # replaced by rename, not rewritten in place


def test_outbox_needs_a_sender_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AUTOMATION_EMAIL_FROM"):
        FileOutbox(tmp_path, from_address="nobody")
    assert FileOutbox(tmp_path, from_address="news@shop.example").domain == "shop.example"
