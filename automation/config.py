"""Settings, built once from the environment (``AUTOMATION_*``) and CLI flags, then passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automation.errors import ConfigError

if TYPE_CHECKING:
    from automation.playbook.models import FrequencyCap

DEFAULT_DATABASE_URL = "sqlite:///automation.db"
#: How often a tick evaluates every customer even when nothing says it must (AUTOMATION_FULL_TICK_EVERY).
DEFAULT_FULL_TICK_EVERY = timedelta(days=1)


@dataclass(frozen=True)
class Settings:
    """Everything configurable; secrets (``AUTOMATION_SECRET_KEY``) come from the environment only."""

    database_url: str = DEFAULT_DATABASE_URL
    templates_dir: Path = Path("templates")
    playbooks_dir: Path = Path("playbooks")
    outbox_dir: Path = Path("outbox")
    public_url: str = "http://127.0.0.1:8080"
    secret_key: str = "change-me"
    sms_auth_token: str = field(default="", repr=False)  # AUTOMATION_SMS_AUTH_TOKEN: Twilio's webhooks
    global_cap: FrequencyCap | None = None  # AUTOMATION_FREQUENCY_CAP, across playbooks
    global_control: float = 0.0  # AUTOMATION_GLOBAL_CONTROL: share of customers no playbook sends to
    full_tick_every: timedelta = DEFAULT_FULL_TICK_EVERY  # AUTOMATION_FULL_TICK_EVERY: evaluate everyone
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)  # for channel settings and ${VAR}
    write_keys: tuple[str, ...] = field(default=(), repr=False)  # AUTOMATION_WRITE_KEYS: the /v1 API's keys
    metrics_token: str = field(default="", repr=False)  # AUTOMATION_METRICS_TOKEN: serve's /metrics
    # the providers' event webhooks of serve (see automation.web.providers); empty: that webhook is off
    sendgrid_webhook_public_key: str = ""  # AUTOMATION_SENDGRID_WEBHOOK_PUBLIC_KEY
    postmark_webhook_user: str = ""  # AUTOMATION_POSTMARK_WEBHOOK_USER
    postmark_webhook_password: str = field(default="", repr=False)  # AUTOMATION_POSTMARK_WEBHOOK_PASSWORD
    feedback_token: str = field(default="", repr=False)  # AUTOMATION_FEEDBACK_TOKEN: the generic one

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        url = env.get("AUTOMATION_DATABASE_URL", DEFAULT_DATABASE_URL).strip()
        if "://" not in url:
            raise ConfigError(
                f"AUTOMATION_DATABASE_URL={url!r} is not a database URL; "
                "use e.g. sqlite:///automation.db or postgresql+psycopg://user@host/db"
            )
        return cls(
            database_url=url,
            templates_dir=Path(env.get("AUTOMATION_TEMPLATES_DIR", "templates")),
            playbooks_dir=Path(env.get("AUTOMATION_PLAYBOOKS_DIR", "playbooks")),
            outbox_dir=Path(env.get("AUTOMATION_OUTBOX_DIR", "outbox")),
            public_url=env.get("AUTOMATION_PUBLIC_URL", "http://127.0.0.1:8080"),
            secret_key=env.get("AUTOMATION_SECRET_KEY", "change-me"),
            sms_auth_token=env.get("AUTOMATION_SMS_AUTH_TOKEN", "").strip(),
            global_cap=_cap(env.get("AUTOMATION_FREQUENCY_CAP")),
            global_control=_control(env.get("AUTOMATION_GLOBAL_CONTROL")),
            full_tick_every=_every(env.get("AUTOMATION_FULL_TICK_EVERY")),
            environ=dict(env),
            write_keys=_write_keys(env.get("AUTOMATION_WRITE_KEYS")),
            metrics_token=env.get("AUTOMATION_METRICS_TOKEN", "").strip(),
            sendgrid_webhook_public_key=env.get("AUTOMATION_SENDGRID_WEBHOOK_PUBLIC_KEY", "").strip(),
            postmark_webhook_user=env.get("AUTOMATION_POSTMARK_WEBHOOK_USER", "").strip(),
            postmark_webhook_password=env.get("AUTOMATION_POSTMARK_WEBHOOK_PASSWORD", ""),
            feedback_token=env.get("AUTOMATION_FEEDBACK_TOKEN", "").strip(),
        )

    def with_overrides(self, **changes: Any) -> Settings:
        clean = {k: v for k, v in changes.items() if v is not None}
        if "templates_dir" in clean:
            clean["templates_dir"] = Path(clean["templates_dir"])
        return replace(self, **clean)


def _write_keys(text: str | None) -> tuple[str, ...]:
    """The ingestion API's write keys: comma-separated, blanks dropped; none means the API is off."""
    return tuple(key.strip() for key in (text or "").split(",") if key.strip())


def _control(text: str | None) -> float:
    if not text or not text.strip():
        return 0.0
    from pydantic_core import PydanticCustomError

    from automation.playbook.models import parse_share

    try:
        return parse_share(text, 0.5)
    except PydanticCustomError as exc:
        raise ConfigError(f"AUTOMATION_GLOBAL_CONTROL={text!r}: {exc.message()}") from None


def _cap(text: str | None) -> FrequencyCap | None:
    if not text:
        return None
    from pydantic_core import PydanticCustomError

    from automation.playbook.models import parse_frequency_cap

    try:
        return parse_frequency_cap(text)
    except PydanticCustomError:
        raise ConfigError(f'AUTOMATION_FREQUENCY_CAP={text!r} is not a cap; use e.g. "5 per 7d"') from None


def _every(text: str | None) -> timedelta:
    if not text:
        return DEFAULT_FULL_TICK_EVERY
    from automation.rules.ast import parse_duration

    period = parse_duration(text.strip())
    if period is None or period <= timedelta(0):
        raise ConfigError(f"AUTOMATION_FULL_TICK_EVERY={text!r} is not a duration; use e.g. 1d, 12h or 7d")
    return period
