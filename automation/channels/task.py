"""Tasks for people: a ``task`` step writes a row in the ``task`` table and tells the assignee.

Sending a task delivery

1. inserts ``task`` (customer, playbook, assignee = ``delivery.to``, title and body from the rendered
   task template, ``due_at`` = ``delivery.due``, status ``open``) with ``INSERT ... ON CONFLICT DO
   NOTHING`` on the UNIQUE idempotency key, so sending the same delivery again inserts nothing;
2. notifies, unless the task is already done:

   * ``notify_via="webhook"``: POSTs the task as JSON to ``crm_url`` (``AUTOMATION_TASK_WEBHOOK_URL``)
     through ``notifier``, a :class:`~automation.channels.webhook.WebhookChannel` (so the request is
     signed and carries the task's idempotency key as ``Idempotency-Key`` and a stable ``webhook-id``);
   * ``notify_via="email"``: sends ``notifier`` (the email channel) a message to the assignee, subject
     ``Task: <title>``, with the body, the customer and the due date;
   * no notifier: the row is the whole delivery (people see it with ``automation tasks list``).

   With ``notify_via=None`` the kind is taken from ``notifier.name``.

A retry after a failed notification finds the row already there and notifies again (receivers drop
duplicates by the idempotency key). The result's ``provider_id`` is ``task:<id>``.

The CRM receives::

    {"type": "task.created", "timestamp": "...", "data": {"id": 12, "customer_id": "c1", "playbook": "...",
     "assignee": "...", "title": "...", "body": "...", "due_at": "...", "status": "open",
     "created_at": "...", "idempotency_key": "..."}}
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Engine, Row, select, update
from sqlalchemy.dialects import postgresql, sqlite

from automation.channels.base import Channel, Delivery, DeliveryResult
from automation.db.tables import TASK
from automation.errors import ConfigError, DeliveryError, PermanentDeliveryError, TransientDeliveryError
from automation.masking import mask_text
from automation.messages.store import RenderedMessage

__all__ = ["ENV_CRM_URL", "TaskChannel", "complete_task", "list_tasks", "task_email", "task_payload"]

ENV_CRM_URL = "AUTOMATION_TASK_WEBHOOK_URL"

NotifyVia = Literal["email", "webhook"]

log = logging.getLogger(__name__)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def task_payload(row: Row[Any]) -> dict[str, Any]:
    """The JSON document a CRM receives for a task row (Standard Webhooks style: type, timestamp, data)."""
    data = {
        "id": row.id,
        "customer_id": row.customer_id,
        "playbook": row.playbook,
        "assignee": row.assignee,
        "title": row.title,
        "body": row.body,
        "due_at": _iso(row.due_at),
        "status": row.status,
        "created_at": _iso(row.created_at),
        "idempotency_key": row.idempotency_key,
    }
    return {"type": "task.created", "timestamp": _iso(row.created_at), "data": data}


def task_email(row: Row[Any], template: str = "task") -> RenderedMessage:
    """The notification email for a task row: subject ``Task: <title>``, plain text and escaped HTML."""
    due = row.due_at.strftime("%Y-%m-%d %H:%M UTC") if row.due_at is not None else "no due date"
    details = [f"Customer: {row.customer_id}", f"Playbook: {row.playbook}", f"Due: {due}"]
    done = f"When it is done: automation tasks done {row.id}"
    text = "\n\n".join(part for part in (row.title, row.body.strip(), "\n".join(details), done) if part)
    body_html = "<br>\n".join(html.escape(line) for line in row.body.strip().splitlines())
    html_parts = [f"<p><strong>{html.escape(row.title)}</strong></p>"]
    if body_html:
        html_parts.append(f"<p>{body_html}</p>")
    html_parts.append("<p>" + "<br>\n".join(html.escape(d) for d in details) + "</p>")
    html_parts.append(f"<p>{html.escape(done)}</p>")
    return RenderedMessage(
        "email", template, subject=f"Task: {row.title}", text=text, html="\n".join(html_parts)
    )


class TaskChannel:
    """The ``task`` channel (see the module docstring). Database calls run in a worker thread."""

    name = "task"

    def __init__(
        self,
        engine: Engine,
        *,
        notifier: Channel | None = None,
        notify_via: NotifyVia | None = None,
        crm_url: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError(f"tasks need SQLite or PostgreSQL, not {engine.dialect.name}")
        via: NotifyVia | None = notify_via
        if via is None and notifier is not None:
            if notifier.name not in ("email", "webhook"):
                raise ConfigError(
                    f"a task notifier must be an email or webhook channel, not {notifier.name!r}"
                )
            via = "email" if notifier.name == "email" else "webhook"
        if via is None and crm_url:
            raise ConfigError(f"{ENV_CRM_URL} is set but no webhook channel was given to sign the requests")
        if via == "email" and crm_url:
            raise ConfigError(f"{ENV_CRM_URL} is set but the task notifier is the email channel")
        if via is not None and notifier is None:
            raise ConfigError(f"notify_via={via!r} needs a notifier channel")
        if via == "webhook" and not crm_url:
            raise ConfigError(f"task notifications by webhook need {ENV_CRM_URL}")
        self.engine = engine
        self.notifier = notifier
        self.notify_via = via
        self.crm_url = crm_url
        self._clock = clock or (lambda: datetime.now(UTC))

    def _insert(self, values: dict[str, Any]) -> tuple[Row[Any], bool]:
        """Insert unless the idempotency key exists; the row and whether it was inserted now."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        stmt = (
            dialect.insert(TASK)
            .values(**values)
            .on_conflict_do_nothing(index_elements=[TASK.c.idempotency_key])
        )
        with self.engine.begin() as conn:
            inserted = conn.execute(stmt).rowcount == 1
            row = conn.execute(select(TASK).where(TASK.c.idempotency_key == values["idempotency_key"])).one()
        return row, inserted

    async def send(self, delivery: Delivery) -> DeliveryResult:
        """Create the task (once per idempotency key) and notify the assignee."""
        rendered = delivery.rendered
        if not rendered.title:
            raise PermanentDeliveryError("the rendered task has no title")
        playbook = delivery.metadata.get("playbook")
        if not playbook:
            raise PermanentDeliveryError("the task delivery has no playbook in its metadata")
        values = {
            "idempotency_key": delivery.idempotency_key,
            "playbook": str(playbook),
            "customer_id": delivery.customer_id,
            "assignee": delivery.to,
            "title": rendered.title,
            "body": rendered.body or "",
            "due_at": delivery.due,
            "status": "open",
            "created_at": self._clock(),
        }
        row, inserted = await asyncio.to_thread(self._insert, values)
        provider_id = f"task:{row.id}"
        if inserted:
            log.debug("task %s created for %s", row.id, mask_text(row.assignee or "nobody"))
        if row.status != "open":
            return DeliveryResult(provider_id=provider_id)  # done already: nobody needs telling
        try:
            await self._notify(delivery, row)
        except DeliveryError as exc:
            message = f"task {row.id} saved, but notifying by {self.notify_via} failed: {exc}"
            if isinstance(exc, PermanentDeliveryError):
                raise PermanentDeliveryError(message) from exc
            retry_after = exc.retry_after if isinstance(exc, TransientDeliveryError) else None
            raise TransientDeliveryError(message, retry_after=retry_after) from exc
        return DeliveryResult(provider_id=provider_id)

    async def _notify(self, delivery: Delivery, row: Row[Any]) -> None:
        if self.notifier is None or self.notify_via is None:
            return
        template = delivery.rendered.template
        if self.notify_via == "webhook":
            payload = task_payload(row)
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
            rendered = RenderedMessage("webhook", template, body=body, json=payload)
            notice = Delivery(
                message_id=delivery.message_id,
                idempotency_key=delivery.idempotency_key,
                channel="webhook",
                customer_id=delivery.customer_id,
                rendered=rendered,
                url=self.crm_url,
                metadata=dict(delivery.metadata),
            )
        else:
            if not row.assignee:
                log.info("task %s has no assignee: no email sent", row.id)
                return
            notice = Delivery(
                message_id=delivery.message_id,
                idempotency_key=delivery.idempotency_key,
                channel="email",
                customer_id=delivery.customer_id,
                rendered=task_email(row, template),
                to=row.assignee,
                metadata=dict(delivery.metadata),
            )
        await self.notifier.send(notice)

    async def aclose(self) -> None:
        """Nothing to close: the engine and the notifier belong to the caller."""


def list_tasks(engine: Engine, status: str | None = None, assignee: str | None = None) -> list[Row[Any]]:
    """Tasks, optionally only one status (``open``/``done``) or assignee; by due date (none last), id."""
    query = select(TASK)
    if status is not None:
        query = query.where(TASK.c.status == status)
    if assignee is not None:
        query = query.where(TASK.c.assignee == assignee)
    query = query.order_by(TASK.c.due_at.is_(None), TASK.c.due_at, TASK.c.id)
    with engine.connect() as conn:
        return list(conn.execute(query))


def complete_task(engine: Engine, task_id: int, now: datetime) -> bool:
    """Mark an open task done at ``now``; False when there is no such task or it is done already."""
    stmt = (
        update(TASK).where(TASK.c.id == task_id, TASK.c.status == "open").values(status="done", done_at=now)
    )
    with engine.begin() as conn:
        return conn.execute(stmt).rowcount == 1
