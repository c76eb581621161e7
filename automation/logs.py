"""Logging: readable lines by default, JSON lines with ``--log-format json``; personal data masked."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime

from automation.masking import mask_text


class MaskingFilter(logging.Filter):
    """Replaces email addresses and phone numbers in every record's message with masked forms."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = ()
        return True


class BadRequestFilter(logging.Filter):
    """Turns aiohttp's "Error handling request" records about requests its HTTP parser refused (a request
    line or header over the size limit, too many headers, a malformed request line) into one warning,
    ``bad request from 127.0.0.1: request line too long (limit 8190 bytes)``, without the traceback.

    Such a request is the client's mistake, or a scanner's: aiohttp has answered it 400 already, and a
    traceback at error level would page someone for it. What the client sent is not logged. Errors
    that are not the parser's (a defect in a handler) keep their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.msg, record.args = "bad request from %s: %s", (remote or "unknown", _refusal(error))
            record.exc_info = record.exc_text = record.stack_info = None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


#: The parser's functions that raise for a part of the request head (aiohttp's C and Python parsers).
_PARTS = {
    "cb_on_url": "request line",
    "cb_on_header_field": "header",
    "cb_on_header_value": "header",
    "parse_headers": "header",
}


def _refusal(error: Exception) -> str:
    """Why aiohttp's parser refused a request, without the bytes the client sent."""
    from aiohttp.http_exceptions import BadHttpMethod, LineTooLong

    if isinstance(error, LineTooLong):
        # Cython names its frames "aiohttp._http_parser.cb_on_url"
        frames = [frame.name.rsplit(".", 1)[-1] for frame in traceback.extract_tb(error.__traceback__)]
        part = next((_PARTS[name] for name in reversed(frames) if name in _PARTS), "request line or header")
        return f"{part} too long (limit {error.args[1]} bytes)"
    if isinstance(error, BadHttpMethod):
        return "not an HTTP request"
    # the first words of aiohttp's message; what follows a colon quotes the request
    words = str(getattr(error, "message", "") or type(error).__name__).splitlines()[0]
    words = words.split(":", 1)[0].strip().rstrip(".")[:100]
    return words[:1].lower() + words[1:] if words else "malformed request"


def quiet_bad_requests() -> None:
    """Install ``BadRequestFilter`` on aiohttp's server logger (once per process), for every server."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestFilter) for f in logger.filters):
        logger.addFilter(BadRequestFilter())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["error"] = mask_text(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False)


def setup(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(MaskingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
