"""Webhook secrets follow Standard Webhooks: ``whsec_`` + base64 of 24 to 64 bytes, refused otherwise at
start-up (the channel, the registry that builds it from the environment, and the CLI commands that use it)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from standardwebhooks.webhooks import Webhook

from automation.channels.registry import build_channels
from automation.channels.webhook import (
    MAX_KEY_BYTES,
    MIN_KEY_BYTES,
    NEW_SECRET_COMMAND,
    secret_key,
    sign,
)
from automation.config import Settings
from automation.errors import ConfigError

EXE = Path(sys.executable).with_name("automation")
GOOD = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def whsec(size: int) -> str:
    """A ``whsec_`` secret of ``size`` bytes (fixed bytes, so test ids stay the same between runs)."""
    return "whsec_" + base64.b64encode(bytes((7 * i + 3) % 256 for i in range(size))).decode()


def test_the_limits_are_the_specifications() -> None:
    assert (MIN_KEY_BYTES, MAX_KEY_BYTES) == (24, 64)


@pytest.mark.parametrize("size", [MIN_KEY_BYTES, 32, MAX_KEY_BYTES])
def test_whsec_secrets_of_24_to_64_bytes_are_their_decoded_bytes(size: int) -> None:
    secret = whsec(size)
    key = secret_key(secret)
    assert len(key) == size and key == base64.b64decode(secret[6:])
    # the library's key is the same: its signature equals ours
    assert sign(secret, "msg_1", 1700000000, b"{}") == sign(key, "msg_1", 1700000000, b"{}")
    stamp = datetime.fromtimestamp(1700000000, UTC)
    assert Webhook(secret).sign("msg_1", stamp, "{}") == sign(secret, "msg_1", 1700000000, b"{}")


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("", "is empty"),
        ("plain string secret that is long enough", "does not start with whsec_"),
        ("WHSEC_" + base64.b64encode(bytes(32)).decode(), "does not start with whsec_"),
        ("whsec_", "decodes to 0 bytes"),
        (whsec(MIN_KEY_BYTES - 1), f"decodes to {MIN_KEY_BYTES - 1} bytes"),
        (whsec(MAX_KEY_BYTES + 1), f"decodes to {MAX_KEY_BYTES + 1} bytes"),
        ("whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "is not standard base64"),
        (GOOD + " ", "is not standard base64"),
        (GOOD + "\n", "is not standard base64"),
        ("whsec_" + "A" * 33, "is not standard base64"),  # a length no base64 has
        ("whsec_%%%", "is not standard base64"),
    ],
)
def test_anything_else_is_refused_with_the_rule_and_how_to_make_one(secret: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        secret_key(secret, source="AUTOMATION_WEBHOOK_SECRET")
    message = str(info.value)
    assert message.startswith(f"AUTOMATION_WEBHOOK_SECRET {reason}")
    assert "whsec_ followed by the base64 of 24 to 64 random bytes" in message
    assert NEW_SECRET_COMMAND in message


def test_the_command_in_the_message_makes_a_valid_secret() -> None:
    assert NEW_SECRET_COMMAND.startswith('python -c "')
    code = NEW_SECRET_COMMAND.removeprefix('python -c "').removesuffix('"')
    made = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert len(secret_key(made)) == 32


def test_unpadded_base64_is_accepted_like_the_library_does() -> None:
    padded = whsec(32)  # 44 characters with one "="
    assert padded.endswith("=")
    assert secret_key(padded.rstrip("=")) == secret_key(padded)
    assert secret_key(padded.rstrip("=")) == base64.b64decode(padded[6:])


# ------------------------------------------------------------------------------ the registry


def channels_from(env: dict[str, str]) -> None:
    engine = create_engine("sqlite://")
    try:
        build_channels(Settings(), engine, env)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "env",
    [
        {"AUTOMATION_WEBHOOKS": "http", "AUTOMATION_WEBHOOK_SECRET": "any string"},
        {"AUTOMATION_SMS_URL": "http://127.0.0.1:9", "AUTOMATION_WEBHOOK_SECRET": "s3cret-but-plain"},
        {"AUTOMATION_WEBHOOKS": "http", "AUTOMATION_WEBHOOK_SECRET": whsec(16)},
        {
            "AUTOMATION_WEBHOOKS": "http",
            "AUTOMATION_WEBHOOK_SECRET": "crm-secret",
            "AUTOMATION_TASK_WEBHOOK_URL": "https://crm.example.com/hooks",
        },
    ],
)
def test_build_channels_refuses_a_bad_secret(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"^AUTOMATION_WEBHOOK_SECRET .*make one with: python -c"):
        channels_from(env)


def test_build_channels_refuses_a_missing_secret_and_says_how_to_make_one() -> None:
    with pytest.raises(ConfigError, match=r"set AUTOMATION_WEBHOOK_SECRET.*make one with: python -c"):
        channels_from({"AUTOMATION_WEBHOOKS": "http"})


def test_build_channels_takes_a_good_secret_and_ignores_it_for_folder_webhooks() -> None:
    async def build(env: dict[str, str]) -> str:
        engine = create_engine("sqlite://")
        built = build_channels(Settings(), engine, env)
        try:
            return built.describe["webhook"]
        finally:
            await built.aclose()
            engine.dispose()

    http = {"AUTOMATION_WEBHOOKS": "http", "AUTOMATION_WEBHOOK_SECRET": GOOD}
    assert asyncio.run(build(http)) == "signed HTTP POST"
    folder = {"AUTOMATION_WEBHOOKS": "folder", "AUTOMATION_WEBHOOK_SECRET": "not used"}
    assert asyncio.run(build(folder)).startswith("files in ")


# ------------------------------------------------------------------------------ the CLI


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
    base["AUTOMATION_DATABASE_URL"] = f"sqlite:///{tmp_path / 'a.db'}"
    return subprocess.run(
        [str(EXE), *args],
        cwd=Path(__file__).resolve().parents[2],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", [("run", "--once"), ("dispatch", "--once")])
def test_the_worker_does_not_start_with_a_plain_secret(tmp_path: Path, command: tuple[str, ...]) -> None:
    assert cli(tmp_path, "db", "upgrade").returncode == 0
    outbox = str(tmp_path / "outbox")
    result = cli(
        tmp_path,
        *command,
        AUTOMATION_WEBHOOKS="http",
        AUTOMATION_WEBHOOK_SECRET="my-old-plain-secret",
        AUTOMATION_OUTBOX_DIR=outbox,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "AUTOMATION_WEBHOOK_SECRET does not start with whsec_" in result.stderr
    assert "make one with: python -c" in result.stderr
    assert "Traceback" not in result.stderr
