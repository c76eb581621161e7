"""The message of one action: its template context, the customer's signed unsubscribe link, the render.

The dispatcher (what is sent) and the preview (what would be sent) both render through
:func:`render_for_action`, so that a preview shows the very text the dispatcher sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from automation.messages.context import build_context
from automation.messages.store import RenderedMessage, TemplateStore
from automation.messages.unsubscribe import unsubscribe_url

__all__ = ["Action", "ActionMessage", "render_for_action"]


class Action(Protocol):
    """What rendering needs of an action: whose message, which template, and where the customer is in
    the playbook (a planned action and a claimed outbox row both have it)."""

    @property
    def customer_id(self) -> str: ...

    @property
    def channel(self) -> str: ...

    @property
    def template(self) -> str: ...

    @property
    def segment(self) -> str | None: ...

    @property
    def touch(self) -> str | None: ...

    @property
    def stage(self) -> str | None: ...

    @property
    def step(self) -> str | None: ...


class ActionMessage(NamedTuple):
    """A rendered message and the unsubscribe link its context carried ("" when none was signed)."""

    rendered: RenderedMessage
    unsubscribe_url: str


def render_for_action(
    templates: TemplateStore,
    action: Action,
    customer: Mapping[str, Any],
    *,
    playbook: str,
    now: datetime,
    public_url: str,
    secret_key: str,
    always_sign: bool = False,
) -> ActionMessage:
    """Render ``action``'s template for ``customer`` (a row of ``customer``) at ``now``.

    The unsubscribe link is signed for the action's customer and channel when it can be used: always
    for email (the channel puts it in ``List-Unsubscribe``), and for other channels when the template
    may print it; otherwise the context's ``unsubscribe_url`` is "". ``always_sign`` signs it for
    every message whatever the template reads, so that the context is complete (the preview's
    choice; the rendered text is the same either way). A template that cannot be rendered raises
    :class:`~automation.messages.store.RenderError`; what that means is the caller's to decide.
    """
    channel = action.channel
    link = ""
    if always_sign or channel == "email" or templates.reads(action.template, channel, "unsubscribe_url"):
        link = unsubscribe_url(public_url, secret_key, action.customer_id, channel)
    context = build_context(
        customer,
        playbook=playbook,
        segment=action.segment,
        touch=action.touch,
        stage=action.stage,
        step=action.step,
        now=now,
        unsubscribe_url=link,
    )
    return ActionMessage(templates.render(action.template, channel, context), link)
