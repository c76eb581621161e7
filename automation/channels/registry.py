"""Build the channels from the environment: real providers when configured, the outbox folder otherwise.

- email: SMTP when ``AUTOMATION_SMTP_URL`` is set, else ``.eml`` files in the outbox folder;
- sms: a Twilio-compatible API when ``AUTOMATION_SMS_URL`` is set, else JSON files;
- webhook: signed HTTP when ``AUTOMATION_WEBHOOKS=http`` (the default once SMTP or SMS is configured),
  else JSON files; the secret ``AUTOMATION_WEBHOOK_SECRET`` must be ``whsec_<base64>`` of 24 to 64 bytes;
- task: always a row in ``task``; the assignee is told through the email channel above, or by a
  signed webhook to ``AUTOMATION_TASK_WEBHOOK_URL`` when that is set.

Per channel ``AUTOMATION_<CHANNEL>_RATE`` (``10/s``, ``600/m``) and ``AUTOMATION_<CHANNEL>_CONCURRENCY``
(default 20) limit sending.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from automation.channels.base import Channel
from automation.channels.email import SmtpChannel, SmtpSettings
from automation.channels.filebox import FileOutbox
from automation.channels.http import make_client
from automation.channels.sms import TwilioSms, status_callback_url
from automation.channels.task import TaskChannel
from automation.channels.webhook import (
    MAX_KEY_BYTES,
    MIN_KEY_BYTES,
    NEW_SECRET_COMMAND,
    WebhookChannel,
    secret_key,
)
from automation.config import Settings
from automation.errors import ConfigError
from automation.outbox.ratelimit import Rate, parse_rate

DEFAULT_FROM = "Juniper <hello@example.com>"
CHANNEL_NAMES = ("email", "sms", "webhook", "task")


class _Named:
    """Presents the shared folder channel under one channel's name."""

    writes_files = True

    def __init__(self, inner: FileOutbox, name: str) -> None:
        self.inner, self.name = inner, name

    async def send(self, delivery: Any) -> Any:
        return await self.inner.send(delivery)

    async def aclose(self) -> None:
        return None


@dataclass
class Channels:
    """The configured channels and what they hold open; ``aclose`` releases connections."""

    channels: dict[str, Channel]
    describe: dict[str, str]
    rates: dict[str, Rate] = field(default_factory=dict)
    concurrency: dict[str, int] = field(default_factory=dict)
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    async def aclose(self) -> None:
        for channel in self.channels.values():
            await channel.aclose()
        for client in self._clients:
            await client.aclose()


def _webhook_secret(env: Mapping[str, str]) -> str:
    """``AUTOMATION_WEBHOOK_SECRET``, checked before anything is opened: a missing or malformed secret
    stops start-up with a ``ConfigError`` instead of signing requests no receiver can verify."""
    secret = env.get("AUTOMATION_WEBHOOK_SECRET")
    if not secret:
        raise ConfigError(
            "webhooks are signed: set AUTOMATION_WEBHOOK_SECRET to whsec_ followed by the base64 of "
            f"{MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes; make one with: {NEW_SECRET_COMMAND}"
        )
    secret_key(secret, source="AUTOMATION_WEBHOOK_SECRET")
    return secret


def _webhook_settings(env: Mapping[str, str], providers: bool) -> str | None:
    """The webhook secret when webhooks go over HTTP, None when they go to files; every webhook setting
    is checked here, before any connection is opened, so bad ones fail start-up and leak nothing."""
    mode = env.get("AUTOMATION_WEBHOOKS", "http" if providers else "folder")
    if mode not in ("http", "folder"):
        raise ConfigError(f"AUTOMATION_WEBHOOKS={mode!r}: use http or folder")
    if mode == "folder":
        if env.get("AUTOMATION_TASK_WEBHOOK_URL"):
            raise ConfigError("AUTOMATION_TASK_WEBHOOK_URL needs AUTOMATION_WEBHOOKS=http and a secret")
        return None
    return _webhook_secret(env)


def build_channels(settings: Settings, engine: Engine, environ: Mapping[str, str] | None = None) -> Channels:
    """The channels for this process, from ``environ`` (default: the settings' environment)."""
    env = dict(settings.environ if environ is None else environ)
    sender = env.get("AUTOMATION_EMAIL_FROM", DEFAULT_FROM)
    folder = FileOutbox(Path(env.get("AUTOMATION_OUTBOX_DIR", str(settings.outbox_dir))), from_address=sender)
    channels: dict[str, Channel] = {}
    describe: dict[str, str] = {}
    clients: list[httpx.AsyncClient] = []

    smtp_url = env.get("AUTOMATION_SMTP_URL")
    sms_url = env.get("AUTOMATION_SMS_URL")
    secret = _webhook_settings(env, bool(smtp_url or sms_url))
    if smtp_url:
        smtp = SmtpSettings.from_url(smtp_url)
        channels["email"] = SmtpChannel(smtp, from_address=env.get("AUTOMATION_EMAIL_FROM"))
        describe["email"] = f"SMTP {smtp.host}:{smtp.port} ({smtp.security})"
    else:
        channels["email"] = _Named(folder, "email")
        describe["email"] = f"files in {folder.directory}/email"

    if sms_url:
        client = make_client()
        clients.append(client)
        channels["sms"] = TwilioSms(
            client,
            base_url=sms_url,
            account_sid=env.get("AUTOMATION_SMS_ACCOUNT_SID", ""),
            auth_token=env.get("AUTOMATION_SMS_AUTH_TOKEN", ""),
            from_number=env.get("AUTOMATION_SMS_FROM", ""),
            status_callback=status_callback_url(env.get("AUTOMATION_PUBLIC_URL", "")),
        )
        describe["sms"] = f"Twilio-compatible API at {httpx.URL(sms_url).host}"
    else:
        channels["sms"] = _Named(folder, "sms")
        describe["sms"] = f"files in {folder.directory}/sms"

    webhook: WebhookChannel | None = None
    if secret is not None:
        client = make_client(max_connections=int(env.get("AUTOMATION_WEBHOOK_CONCURRENCY", "20")))
        clients.append(client)
        webhook = WebhookChannel(client, secret=secret)
        channels["webhook"] = webhook
        describe["webhook"] = "signed HTTP POST"
    else:
        channels["webhook"] = _Named(folder, "webhook")
        describe["webhook"] = f"files in {folder.directory}/webhook"

    crm_url = env.get("AUTOMATION_TASK_WEBHOOK_URL")
    if crm_url and webhook is not None:
        channels["task"] = TaskChannel(engine, notifier=webhook, notify_via="webhook", crm_url=crm_url)
        describe["task"] = f"task table, CRM webhook to {httpx.URL(crm_url).host}"
    else:
        channels["task"] = TaskChannel(engine, notifier=channels["email"], notify_via="email")
        describe["task"] = "task table, assignee told by email"

    rates = {
        name: parse_rate(env[f"AUTOMATION_{name.upper()}_RATE"], f"AUTOMATION_{name.upper()}_RATE")
        for name in CHANNEL_NAMES
        if env.get(f"AUTOMATION_{name.upper()}_RATE")
    }
    concurrency: dict[str, int] = {}
    for name in CHANNEL_NAMES:
        value = env.get(f"AUTOMATION_{name.upper()}_CONCURRENCY")
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"AUTOMATION_{name.upper()}_CONCURRENCY={value!r}: use a whole number >= 1")
            concurrency[name] = int(value)
    return Channels(channels, describe, rates, concurrency, clients)
