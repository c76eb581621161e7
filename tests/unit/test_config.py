from __future__ import annotations

from datetime import timedelta

import pytest

from automation.config import Settings
from automation.errors import ConfigError


def test_full_tick_every_defaults_to_a_day_and_reads_durations() -> None:
    assert Settings.from_env({}).full_tick_every == timedelta(days=1)
    assert Settings.from_env({"AUTOMATION_FULL_TICK_EVERY": "12h"}).full_tick_every == timedelta(hours=12)
    assert Settings.from_env({"AUTOMATION_FULL_TICK_EVERY": "7d"}).full_tick_every == timedelta(days=7)


@pytest.mark.parametrize("text", ["often", "0d", "-1d"])
def test_full_tick_every_rejects_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ConfigError, match="AUTOMATION_FULL_TICK_EVERY"):
        Settings.from_env({"AUTOMATION_FULL_TICK_EVERY": text})


def test_the_sms_auth_token_is_read_for_twilio_webhooks_and_kept_out_of_repr() -> None:
    settings = Settings.from_env({"AUTOMATION_SMS_AUTH_TOKEN": " tok-123-secret \n"})
    assert settings.sms_auth_token == "tok-123-secret"
    assert "tok-123-secret" not in repr(settings)
    assert Settings.from_env({}).sms_auth_token == ""
