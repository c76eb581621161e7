"""What the providers' reports have in common: the error of one bad report, and reading its fields.

Each provider's module (:mod:`~automation.feedback.sendgrid`, :mod:`~automation.feedback.postmark`,
:mod:`~automation.feedback.generic`) turns one report it received into a
:class:`~automation.feedback.record.Report` with these helpers, or raises :class:`ReportError` naming
the field and why. Reasons and links are cut to the lengths kept (:data:`REASON_MAX`,
:data:`URL_MAX`); an id too long to store is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from typing import Any

from automation.ingest.rows import json_type

#: Characters kept of a provider's reason (its SMTP answer, a description) and of a clicked link.
REASON_MAX, URL_MAX = 1000, 2048
#: Characters of an id, key or address beyond which a report is refused (the columns hold 255).
ID_MAX = 255


class ReportError(ValueError):
    """One report cannot be read; the message names the field and says why."""


def text(
    item: dict[str, Any], name: str, *, required: bool = False, limit: int | None = ID_MAX
) -> str | None:
    """The string field ``name`` (stripped; empty is missing); None when it is missing and not required.

    Longer than ``limit``: refused when the limit is :data:`ID_MAX` (an id that does not fit cannot be
    matched), else cut."""
    value = item.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ReportError(f"{name}: missing (required)")
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # Postmark's numeric ID, a custom argument sent as a number
    if not isinstance(value, str):
        raise ReportError(f"{name}: expected a string, got {json_type(value)}")
    value = value.strip()
    if limit is not None and len(value) > limit:
        if limit == ID_MAX:
            raise ReportError(f"{name}: longer than {ID_MAX} characters")
        value = value[:limit]
    return value


def flag(item: dict[str, Any], name: str) -> bool:
    """A boolean field (missing is false); ``"true"`` as a string counts as true."""
    value = item.get(name)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    if value is None or isinstance(value, bool | int):
        return bool(value)
    raise ReportError(f"{name}: expected a boolean, got {json_type(value)}")


def unix_time(item: dict[str, Any], name: str) -> datetime:
    """A required Unix time in seconds (a number, or a string of digits)."""
    value = item.get(name)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReportError(f"{name}: expected a Unix time in seconds, got {json_type(value)}")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ReportError(f"{name}: {value!r} is not a time") from None


def iso_time(item: dict[str, Any], name: str, default: datetime) -> datetime:
    """An ISO 8601 timestamp (naive ones are UTC), or ``default`` when the field is missing."""
    value = item.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if not isinstance(value, str):
        raise ReportError(f"{name}: expected an ISO 8601 timestamp, got {json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except (ValueError, OverflowError):
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise ReportError(
            f"{name}: {shown!r} is not an ISO 8601 timestamp (e.g. 2026-11-22T12:30:00Z)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def fingerprint(item: Any) -> str:
    """A stable text of a whole report (its JSON with sorted keys), for reports that carry no id."""
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def present(**values: Any) -> dict[str, Any]:
    """The values that are not None (the ``detail`` kept with a report)."""
    return {k: v for k, v in values.items() if v is not None}
