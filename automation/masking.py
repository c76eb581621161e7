"""Masking of personal data for logs and terminal output: ``j***@example.com``, ``+49*******89``."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"\+\d{6,15}")


def mask_email(value: str | None) -> str:
    if not value:
        return "no email"
    local, _, domain = value.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def mask_phone(value: str | None) -> str:
    if not value:
        return "no phone"
    return value[:3] + "*" * max(len(value) - 5, 0) + value[-2:]


def mask_text(text: str) -> str:
    """Mask every email address and E.164 phone number in free text (log lines, error messages)."""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)
