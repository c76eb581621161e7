"""Message templates: one Jinja2 file per message, rendered in a sandbox. Pure: no database, no network.

Files live in the templates folder and are named ``<name>.<channel>.j2``:

* ``email``   blocks ``subject``, ``text`` and ``html`` (usually by ``{% extends "layout.email.j2" %}``,
  which defines ``text`` and ``html`` around the child's ``text_body`` and ``html_body``). The ``html``
  block is rendered with HTML autoescaping; ``subject`` and ``text`` are not escaped.
* ``sms``     the whole file is the message body (not escaped); encoding and segment count are computed
  and a message longer than ``max_sms_segments`` is refused.
* ``webhook`` the whole file is a JSON body (insert values with ``|tojson``); it must parse as JSON.
* ``task``    blocks ``title`` and ``body``.

Files whose name starts with ``_`` (partials for ``{% include %}``) and ``layout.*`` are not messages.

Context every template sees (see :func:`build_context`):

* ``customer``         mapping with every ``customer`` column (missing ones are None) plus ``attributes``
                       (a mapping, ``{}`` when empty); ``customer.timezone`` defaults to ``"UTC"``
* ``playbook``         the playbook name
* ``segment``, ``touch``, ``stage``, ``step``   where the customer is in the playbook (None when not set)
* ``now``              the evaluation time (timezone-aware datetime, UTC)
* ``unsubscribe_url``  the customer's unsubscribe link (the email layout prints it in both versions)

Filters (besides Jinja's built-ins such as ``upper``, ``truncate``, ``tojson``):

* ``value|date(format="medium")``      a date in the customer's time zone and locale
* ``value|datetime(format="medium")``  date and time in the customer's time zone and locale
  (formats: ``short``, ``medium``, ``long``, ``full``, ``iso`` or a ``strftime`` pattern containing ``%``;
  values may be datetimes, dates or ISO strings; naive datetimes are UTC; None gives "").
  Locales: en-US (the default), other ``en-*`` (day first), ``de``, ``fr``, ``es``; an unknown time
  zone falls back to UTC. Both filters accept ``tz=`` and ``locale=`` to override the customer's.
* ``value|fallback(default="")``       ``default`` when the value is None, blank or undefined
* ``value|number(decimals=0)``         grouped number in the customer's locale ("12,345.50")

``None`` prints as an empty string. Undefined names are errors (``StrictUndefined``). Templates run in
Jinja's immutable sandbox: private attributes (``_x``, ``__class__``), ``str.format`` tricks, changing
data (``dict.update``) and very large ``*``/``**`` results raise :class:`RenderError`.
"""

from __future__ import annotations

import difflib
import json as jsonlib
import math
import re
import traceback
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Undefined,
    meta,
    nodes,
    pass_context,
    pass_environment,
    pass_eval_context,
)
from jinja2.environment import Environment
from jinja2.exceptions import (
    SecurityError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.filters import do_max, do_min, do_tojson
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from automation.db.tables import Customer
from automation.errors import InputError, Problem

__all__ = [
    "CHANNELS",
    "CUSTOMER_FIELDS",
    "REQUIRED_BLOCKS",
    "RenderError",
    "RenderedMessage",
    "TemplateStore",
    "build_context",
    "sms_segments",
]

CHANNELS = ("email", "sms", "webhook", "task")
REQUIRED_BLOCKS: Mapping[str, tuple[str, ...]] = {
    "email": ("subject", "text", "html"),
    "sms": (),
    "webhook": (),
    "task": ("title", "body"),
}
CUSTOMER_FIELDS: tuple[str, ...] = tuple(Customer.model_fields)

_HTML = "html:"  # loader-name prefix: the same file compiled with HTML autoescaping
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9][A-Za-z0-9_.\-]*)*$")
_MAX_SEQUENCE = 100_000  # longest string/list a template may build with *
_MAX_EXPONENT = 1_000
#: A template file is at most this many bytes of UTF-8 (Gmail clips HTML mail after about 100 KB).
MAX_TEMPLATE_BYTES = 262_144

T = TypeVar("T")


class RenderError(InputError):
    """A template could not be rendered; the message names the file, the line and what to do."""

    def __init__(self, path: Path | str, line: int, message: str, hint: str = "") -> None:
        self.path = Path(path)
        self.line = line
        self.reason = message
        self.hint = hint
        self.problem = Problem(self.path, line, 0, message, _source_line(self.path, line))
        text = self.problem.render()
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


@dataclass(frozen=True)
class RenderedMessage:
    """A rendered message. Which fields are set depends on the channel:

    email: subject, text, html; sms: body, encoding, segments; webhook: body, json; task: title, body.
    """

    channel: str
    template: str
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    body: str | None = None
    title: str | None = None
    json: Any = None
    encoding: str | None = None
    segments: int | None = None

    def as_payload(self) -> dict[str, Any]:
        """The fields that are set, as a JSON-serialisable dict (for the outbox)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


def build_context(
    customer: Mapping[str, Any],
    *,
    playbook: str,
    segment: str | None,
    touch: str | None,
    stage: str | None,
    step: str | None,
    now: datetime,
    unsubscribe_url: str,
) -> dict[str, Any]:
    """The variables a template sees. ``customer`` is copied; missing columns become None."""
    fields: dict[str, Any] = dict.fromkeys(CUSTOMER_FIELDS)
    fields.update(customer)
    attributes = fields.get("attributes")
    fields["attributes"] = dict(attributes) if isinstance(attributes, Mapping) else {}
    if not fields.get("timezone"):
        fields["timezone"] = "UTC"
    if fields.get("orders_count") is None:
        fields["orders_count"] = 0
    return {
        "customer": fields,
        "playbook": playbook,
        "segment": segment,
        "touch": touch,
        "stage": stage,
        "step": step,
        "now": now,
        "unsubscribe_url": unsubscribe_url,
    }


# --------------------------------------------------------------------------------------------- SMS

_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")


def _pack(costs: Iterable[int], single: int, multi: int) -> int:
    """Segments needed; a character (escape pair, surrogate pair) is never split across two parts."""
    costs = list(costs)
    if sum(costs) <= single:
        return 1 if costs else 0
    segments, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            segments, used = segments + 1, 0
        used += cost
    return segments


def sms_segments(text: str) -> tuple[str, int]:
    """``("GSM-7", n)`` or ``("UCS-2", n)``: GSM-7 fits 160 characters in one SMS and 153 per part
    of a longer one (extension characters such as ``€ { } [ ] ~ ^ | \\`` count twice); any other
    character (an emoji, a curly quote) makes the whole message UCS-2: 70 single, 67 per part."""
    if all(c in _GSM_BASIC or c in _GSM_EXTENSION for c in text):
        return "GSM-7", _pack((2 if c in _GSM_EXTENSION else 1 for c in text), 160, 153)
    return "UCS-2", _pack((2 if ord(c) > 0xFFFF else 1 for c in text), 70, 67)


# ----------------------------------------------------------------------------------------- filters

_MONTHS = {
    "en": "January February March April May June July August September October November December",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    "es": "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
}
_MONTHS_SHORT = {
    "en": "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec",
    "de": "Jan. Feb. März Apr. Mai Juni Juli Aug. Sept. Okt. Nov. Dez.",
    "fr": "janv. févr. mars avr. mai juin juil. août sept. oct. nov. déc.",
    "es": "ene feb mar abr may jun jul ago sept oct nov dic",
}
_WEEKDAYS = {
    "en": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "de": "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag",
    "fr": "lundi mardi mercredi jeudi vendredi samedi dimanche",
    "es": "lunes martes miércoles jueves viernes sábado domingo",
}
# locale key -> (date patterns, time pattern, thousands separator, decimal separator)
_LOCALES: dict[str, tuple[dict[str, str], str, str, str]] = {
    "en-US": (
        {
            "short": "{m}/{d}/{yy}",
            "medium": "{MMM} {d}, {yyyy}",
            "long": "{MMMM} {d}, {yyyy}",
            "full": "{EEEE}, {MMMM} {d}, {yyyy}",
        },
        "{h12}:{MM} {ampm}",
        ",",
        ".",
    ),
    "en": (
        {
            "short": "{dd}/{mm}/{yyyy}",
            "medium": "{d} {MMM} {yyyy}",
            "long": "{d} {MMMM} {yyyy}",
            "full": "{EEEE}, {d} {MMMM} {yyyy}",
        },
        "{HH}:{MM}",
        ",",
        ".",
    ),
    "de": (
        {
            "short": "{dd}.{mm}.{yy}",
            "medium": "{dd}.{mm}.{yyyy}",
            "long": "{d}. {MMMM} {yyyy}",
            "full": "{EEEE}, {d}. {MMMM} {yyyy}",
        },
        "{HH}:{MM}",
        ".",
        ",",
    ),
    "fr": (
        {
            "short": "{dd}/{mm}/{yyyy}",
            "medium": "{d} {MMM} {yyyy}",
            "long": "{d} {MMMM} {yyyy}",
            "full": "{EEEE} {d} {MMMM} {yyyy}",
        },
        "{HH}:{MM}",
        " ",
        ",",
    ),
    "es": (
        {
            "short": "{d}/{m}/{yy}",
            "medium": "{d} {MMM} {yyyy}",
            "long": "{d} de {MMMM} de {yyyy}",
            "full": "{EEEE}, {d} de {MMMM} de {yyyy}",
        },
        "{HH}:{MM}",
        ".",
        ",",
    ),
}


def _customer_setting(context: Context, key: str) -> Any:
    customer = context.get("customer")
    return customer.get(key) if isinstance(customer, Mapping) else None


def _locale_key(locale: Any) -> str:
    """One of "en-US", "en" (English, day first), "de", "fr", "es"; anything else is en-US."""
    parts = str(locale or "").replace("_", "-").split("-")
    language = parts[0].lower()
    region = parts[1].upper() if len(parts) > 1 else ""
    if language == "en":
        return "en-US" if region in ("", "US") else "en"
    return language if language in _LOCALES else "en-US"


def _zone(name: Any) -> tzinfo:
    try:
        return ZoneInfo(str(name)) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _as_temporal(value: Any, filter_name: str) -> date | None:
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises here with Jinja's message
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"the {filter_name} filter expects a date, a datetime or an ISO string, got {value!r}")


def _format(value: Any, fmt: str, with_time: bool, tz: Any, locale: Any, context: Context) -> str:
    moment = _as_temporal(value, "datetime" if with_time else "date")
    if moment is None:
        return ""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        moment = moment.astimezone(_zone(tz or _customer_setting(context, "timezone")))
        day: date = moment.date()
    else:
        day, with_time = moment, False
    if fmt == "iso":
        return moment.isoformat() if with_time else day.isoformat()
    if "%" in fmt:
        return moment.strftime(fmt)
    key = _locale_key(locale or _customer_setting(context, "locale"))
    patterns, time_pattern, _, _ = _LOCALES[key]
    if fmt not in patterns:
        raise ValueError(f"unknown date format {fmt!r}: use short, medium, long, full, iso or a %-pattern")
    language = key.split("-")[0]
    text = patterns[fmt].format(
        d=day.day,
        dd=f"{day.day:02d}",
        m=day.month,
        mm=f"{day.month:02d}",
        yy=f"{day.year % 100:02d}",
        yyyy=day.year,
        MMM=_MONTHS_SHORT[language].split()[day.month - 1],
        MMMM=_MONTHS[language].split()[day.month - 1],
        EEEE=_WEEKDAYS[language].split()[day.weekday()],
    )
    if not with_time or not isinstance(moment, datetime):
        return text
    clock = time_pattern.format(
        HH=f"{moment.hour:02d}",
        MM=f"{moment.minute:02d}",
        h12=(moment.hour % 12) or 12,
        ampm="AM" if moment.hour < 12 else "PM",
    )
    text = f"{text}, {clock}"
    return f"{text} {moment.tzname()}" if fmt in ("long", "full") else text


@pass_context
def _date_filter(
    context: Context, value: Any, format: str = "medium", tz: Any = None, locale: Any = None
) -> str:
    return _format(value, format, False, tz, locale, context)


@pass_context
def _datetime_filter(
    context: Context, value: Any, format: str = "medium", tz: Any = None, locale: Any = None
) -> str:
    return _format(value, format, True, tz, locale, context)


def _fallback_filter(value: Any, default: Any = "") -> Any:
    if isinstance(value, Undefined) or value is None:
        return default
    if isinstance(value, str) and not value.strip():
        return default
    return value


@pass_context
def _number_filter(context: Context, value: Any, decimals: int = 0, locale: Any = None) -> str:
    if isinstance(value, Undefined):
        str(value)
    if value is None or value == "":
        return ""
    _, _, group, point = _LOCALES[_locale_key(locale or _customer_setting(context, "locale"))]
    text = f"{float(value):,.{int(decimals)}f}"
    return text.replace(",", "\0").replace(".", point).replace("\0", group)


def _json_default(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_JSON_KWARGS: dict[str, Any] = {"default": _json_default, "ensure_ascii": False}
_JSON_ENCODER = jsonlib.JSONEncoder(**_JSON_KWARGS)
_encode_json_string: Callable[[str], str] = jsonlib.encoder.encode_basestring


def _dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` for ``|tojson``: with the store's settings, one encoder serves every call, and
    strings, integers, finite floats, booleans, None, dates and datetimes are written directly (the
    same text)."""
    if kwargs != _JSON_KWARGS:
        return jsonlib.dumps(value, **kwargs)
    return _encode(value)


def _encode(value: Any) -> str:
    """``json.dumps(value, **_JSON_KWARGS)``."""
    kind = type(value)
    if kind is str:
        return _encode_json_string(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is datetime or kind is date:
        return _encode_json_string(value.isoformat())
    return _JSON_ENCODER.encode(value)


_HTML_UNSAFE = frozenset("<>&'")


@pass_eval_context
def _tojson_filter(eval_ctx: EvalContext, value: Any, indent: int | None = None) -> Markup:
    """Jinja's ``tojson`` (the same text: JSON with ``<``, ``>``, ``&`` and ``'`` escaped), without its
    per-call lookups when the store's JSON settings are in force."""
    policies = eval_ctx.environment.policies
    if (
        indent is not None
        or policies["json.dumps_function"] is not _dumps
        or policies["json.dumps_kwargs"] != _JSON_KWARGS
    ):
        return do_tojson(eval_ctx, value, indent)
    text = _encode(value)
    if not _HTML_UNSAFE.isdisjoint(text):
        text = (
            text.replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
            .replace("'", "\\u0027")
        )
    return Markup(text)


def _plain_numbers(value: Any) -> bool:
    return (
        type(value) in (list, tuple) and len(value) > 0 and all(type(item) in (int, float) for item in value)
    )


@pass_environment
def _min_filter(
    environment: Environment, value: Any, case_sensitive: bool = False, attribute: Any = None
) -> Any:
    """Jinja's ``min``; a plain list of numbers skips the key function (the same result)."""
    if attribute is None and _plain_numbers(value):
        return min(value)
    return do_min(environment, value, case_sensitive, attribute)


@pass_environment
def _max_filter(
    environment: Environment, value: Any, case_sensitive: bool = False, attribute: Any = None
) -> Any:
    """Jinja's ``max``; a plain list of numbers skips the key function (the same result)."""
    if attribute is None and _plain_numbers(value):
        return max(value)
    return do_max(environment, value, case_sensitive, attribute)


# ------------------------------------------------------------------------------------- environment


class _Loader(FileSystemLoader):
    """Loads ``html:<file>`` from ``<file>``: the HTML-autoescaped compilation of the same source."""

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        """The file's text, refused as a syntax error (line 1) when too large or not UTF-8."""
        fname = template.removeprefix(_HTML)
        for folder in self.searchpath:
            path = Path(folder, *fname.split("/"))
            if path.is_file():
                size = path.stat().st_size
                if size > MAX_TEMPLATE_BYTES:
                    message = f"the file is {size:,} bytes; the limit is {MAX_TEMPLATE_BYTES:,}"
                    raise TemplateSyntaxError(message, 1, fname, str(path))
                try:
                    path.read_bytes().decode("utf-8")
                except UnicodeDecodeError as exc:
                    message = f"not valid UTF-8 (byte {exc.start + 1})"
                    raise TemplateSyntaxError(message, 1, fname, str(path)) from None
                break
        return super().get_source(environment, fname)


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one dict rather than Jinja's ChainMap over the environment's: every
        render copies them into its context, and a dict copies several times faster. The store never
        changes the environment's globals after it is built."""
        return {**self.globals, **(d or {})}

    def compile(  # one signature for both of Jinja's overloads
        self,
        source: str | nodes.Template,
        name: str | None = None,
        filename: str | None = None,
        raw: bool = False,
        defer_init: bool = False,
    ) -> Any:
        """Jinja's compile; a template nested too deeply for the parser or for Python (hundreds of
        nested blocks, parentheses or chained operators, or more than 20 nested loops) is a syntax
        error at its deepest line, not a RecursionError."""
        try:
            return super().compile(source, name, filename, raw, defer_init)  # type: ignore[call-overload]
        except (RecursionError, SyntaxError) as exc:
            if isinstance(exc, TemplateSyntaxError):
                raise
            line = _deepest_line(self, source) if isinstance(source, str) else 1
            message = "the template is nested too deeply to compile; use fewer nested blocks or expressions"
            raise TemplateSyntaxError(message, line, name, filename) from None

    def join_path(self, template: str, parent: str) -> str:
        """Templates extended or included from an HTML compilation are compiled for HTML too."""
        if parent.startswith(_HTML) and not template.startswith(_HTML):
            return _HTML + template
        return template

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > _MAX_SEQUENCE:
                    raise SecurityError(f"the result of * would be longer than {_MAX_SEQUENCE}")
        integers = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and integers and abs(left) > 1 and right > _MAX_EXPONENT:
            raise SecurityError(f"exponents above {_MAX_EXPONENT} are not allowed")
        return super().call_binop(context, operator, left, right)


_OPENING_TAGS = frozenset({"if", "for", "block", "macro", "call", "filter", "with", "autoescape", "trans"})


def _deepest_line(env: Environment, source: str) -> int:
    """The line where blocks and brackets are nested deepest (1 when the source does not lex)."""
    depth, deepest, line, after_begin = 0, -1, 1, False
    try:
        for lineno, kind, value in env.lex(source):
            if kind == "operator" and value in "([{":
                depth += 1
            elif kind == "operator" and value in ")]}":
                depth = max(depth - 1, 0)
            elif after_begin and kind == "name":
                depth = depth + 1 if value in _OPENING_TAGS else max(depth - value.startswith("end"), 0)
            after_begin = kind == "block_begin"
            if depth > deepest:
                deepest, line = depth, lineno
    except TemplateSyntaxError:
        return 1
    return line


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def _source_line(path: Path, line: int) -> str | None:
    if line <= 0:
        return None
    try:
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            return None
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return lines[line - 1] if line <= len(lines) else None


def _template_frame(exc: BaseException, default: Path) -> tuple[Path, int]:
    """The innermost template file and line in the (Jinja-rewritten) traceback."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith(".j2"):
            return Path(frame.filename), frame.lineno or 0
    return default, 0


def _clean_text(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _one_line(text: str) -> str:
    return " ".join(text.split())


_CONTEXT_NAMES = "customer, playbook, segment, touch, stage, step, now, unsubscribe_url"


class TemplateStore:
    """The templates in one folder: check them, render them."""

    def __init__(self, templates_dir: Path, *, max_sms_segments: int = 3) -> None:
        if max_sms_segments < 1:
            raise ValueError("max_sms_segments must be at least 1")
        self.templates_dir = Path(templates_dir)
        self.max_sms_segments = max_sms_segments
        self._env = _Sandbox(
            auto_reload=False,  # a store is built per load of the templates; no stat() per message
            loader=_Loader(self.templates_dir),
            undefined=StrictUndefined,
            autoescape=lambda name: name is not None and name.startswith(_HTML),
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=_finalize,
        )
        self._env.filters.update(
            date=_date_filter,
            datetime=_datetime_filter,
            fallback=_fallback_filter,
            number=_number_filter,
            min=_min_filter,
            max=_max_filter,
            tojson=_tojson_filter,
        )
        self._env.policies["json.dumps_function"] = _dumps
        self._env.policies["json.dumps_kwargs"] = dict(_JSON_KWARGS)
        self._files: dict[tuple[str, str], tuple[Path, str]] = {}  # (name, channel) -> (path, loader name)
        self._reads: dict[tuple[str, str], frozenset[str] | None] = {}  # (name, channel) -> context names

    # -- names and files

    def path_for(self, name: str, channel: str) -> Path:
        """``<templates_dir>/<name>.<channel>.j2``; RenderError for an unknown channel or a bad name."""
        if channel not in CHANNELS:
            raise RenderError(
                self.templates_dir, 0, f"unknown channel {channel!r}", f"use one of {', '.join(CHANNELS)}"
            )
        if not _NAME_RE.match(name):
            raise RenderError(
                self.templates_dir,
                0,
                f"invalid template name {name!r}",
                "use letters, digits, '_', '-' and '.', optionally in sub-folders (a/b)",
            )
        return self.templates_dir / f"{name}.{channel}.j2"

    def available(self, channel: str) -> list[str]:
        """Names of the message templates of a channel (no partials ``_*`` and no ``layout``)."""
        suffix = f".{channel}.j2"
        if not self.templates_dir.is_dir():
            return []
        names = []
        for path in self.templates_dir.rglob(f"*{suffix}"):
            name = path.relative_to(self.templates_dir).as_posix()[: -len(suffix)]
            base = name.rsplit("/", 1)[-1]
            if not base.startswith("_") and base != "layout":
                names.append(name)
        return sorted(names)

    def _missing(self, name: str, channel: str, path: Path) -> Problem:
        existing = self.available(channel)
        message = f"template file not found: {path}"
        if existing:
            close = difflib.get_close_matches(name, existing, n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
            message += f"; {channel} templates in {self.templates_dir}: {', '.join(existing)}"
        else:
            message += f"; there are no {channel} templates in {self.templates_dir}"
        return Problem(path, 0, 0, message)

    # -- check

    def check(self, name: str, channel: str) -> list[Problem]:
        """Problems that can be found without rendering: missing file, syntax, missing blocks."""
        try:
            path = self.path_for(name, channel)
        except RenderError as exc:
            return [exc.problem]
        if not path.is_file():
            return [self._missing(name, channel, path)]
        problems: list[Problem] = []
        blocks = self._check_file(path.relative_to(self.templates_dir).as_posix(), path, problems, set())
        if blocks is None:
            return problems
        missing = [b for b in REQUIRED_BLOCKS[channel] if b not in blocks]
        if missing:
            example = " ".join(f"{{% block {b} %}}...{{% endblock %}}" for b in missing)
            problems.append(
                Problem(path, 0, 0, f"{channel} templates need block(s) {', '.join(missing)}: add {example}")
            )
        return problems

    def _check_file(self, fname: str, path: Path, problems: list[Problem], seen: set[str]) -> set[str] | None:
        """Compile one file and the files it references; return the blocks of it and its parents."""
        seen.add(fname)
        try:
            self._env.get_template(fname)
            source = path.read_text(encoding="utf-8")
            tree = self._env.parse(source, fname, str(path))
        except TemplateSyntaxError as exc:
            where = Path(exc.filename) if exc.filename else path
            problems.append(
                Problem(where, exc.lineno, 0, f"syntax error: {exc.message}", _source_line(where, exc.lineno))
            )
            return None
        blocks = {block.name for block in tree.find_all(nodes.Block)}
        unknown = False
        for node in tree.find_all(nodes.Stmt):
            if not isinstance(node, nodes.Extends | nodes.Include | nodes.Import | nodes.FromImport):
                continue
            target = node.template
            names = target.value if isinstance(target, nodes.Const) else None
            if isinstance(names, str):
                names = [names]
            if not isinstance(names, list | tuple):
                problems.append(
                    Problem(
                        path,
                        node.lineno,
                        0,
                        "the template name is computed at render time, so it cannot be checked",
                        _source_line(path, node.lineno),
                        severity="warning",
                    )
                )
                continue
            for ref in names:
                ref_path = self.templates_dir / ref
                if not ref_path.is_file():
                    problems.append(
                        Problem(
                            path,
                            node.lineno,
                            0,
                            f"template {ref!r} not found in {self.templates_dir}",
                            _source_line(path, node.lineno),
                        )
                    )
                    unknown = unknown or isinstance(node, nodes.Extends)
                    continue
                if ref in seen:
                    continue
                parent_blocks = self._check_file(ref, ref_path, problems, seen)
                if isinstance(node, nodes.Extends):
                    if parent_blocks is None:
                        unknown = True  # the parent is broken: its blocks are unknown
                    else:
                        blocks |= parent_blocks
        return None if unknown else blocks

    # -- render

    def _guard(self, path: Path, run: Callable[[], T]) -> T:
        """Run Jinja code; turn whatever it raises into a RenderError at the template line."""
        try:
            try:
                return run()
            except Exception:
                self._env.handle_exception()  # rewrites the traceback to template file:line
        except TemplateSyntaxError as exc:
            where = Path(exc.filename) if exc.filename else path
            raise RenderError(
                where, exc.lineno, f"syntax error: {exc.message}", "fix the template syntax"
            ) from exc
        except TemplateNotFound as exc:
            where, line = _template_frame(exc, path)
            missing = exc.name.removeprefix(_HTML) if isinstance(exc.name, str) else exc.message
            raise RenderError(
                where,
                line,
                f"template {missing!r} not found in {self.templates_dir}",
                "create that file or fix the name in extends/include",
            ) from exc
        except UndefinedError as exc:
            where, line = _template_frame(exc, path)
            hint = f"check the name against the template context ({_CONTEXT_NAMES}); "
            hint += 'give optional values a default with |fallback("...")'
            raise RenderError(where, line, str(exc), hint) from exc
        except SecurityError as exc:
            where, line = _template_frame(exc, path)
            raise RenderError(
                where,
                line,
                f"not allowed in a template: {exc}",
                "templates run in a sandbox: no private attributes, no changing data, no huge values",
            ) from exc
        except Exception as exc:
            where, line = _template_frame(exc, path)
            raise RenderError(
                where,
                line,
                f"{type(exc).__name__}: {exc}",
                "fix the expression on this line (check its values, e.g. None where a number is needed)",
            ) from exc

    def _render(
        self, fname: str, path: Path, context: Mapping[str, Any], blocks: Sequence[str]
    ) -> dict[str, str | None]:
        """Render the whole file (key "") or the named blocks (None for a block that does not exist)."""

        def run() -> dict[str, str | None]:
            template = self._env.get_template(fname)
            # new_context copies the variables
            ctx = template.new_context(context if isinstance(context, dict) else dict(context))
            # Run the template once, as Jinja would: this sets top-level variables and registers the
            # blocks of every parent layout, so each block can then be rendered on its own.
            whole = "".join(template.root_render_func(ctx))
            if not blocks:
                return {"": whole}
            return {b: "".join(ctx.blocks[b][0](ctx)) if b in ctx.blocks else None for b in blocks}

        return self._guard(path, run)

    def _file(self, name: str, channel: str) -> tuple[Path, str]:
        """The template's path and loader name; found files are remembered (like their compiled code,
        which ``auto_reload=False`` keeps for the life of the store)."""
        found = self._files.get((name, channel))
        if found is None:
            path = self.path_for(name, channel)
            if not path.is_file():
                problem = self._missing(name, channel, path)
                raise RenderError(path, 0, problem.message, "create the file or fix the template name")
            found = self._files[(name, channel)] = (path, path.relative_to(self.templates_dir).as_posix())
        return found

    def reads(self, name: str, channel: str, variable: str) -> bool:
        """Whether rendering the template may read ``variable`` from the context: False only when neither
        the file nor any file it extends, includes or imports names it. A computed template name, or a
        file that cannot be parsed, counts as reading everything."""
        key = (name, channel)
        if key not in self._reads:
            self._reads[key] = self._free_names(name, channel)
        names = self._reads[key]
        return names is None or variable in names

    def _free_names(self, name: str, channel: str) -> frozenset[str] | None:
        loader = self._env.loader
        assert loader is not None
        try:
            todo = [self._file(name, channel)[1]]
            seen: set[str] = set()
            names: set[str] = set()
            while todo:
                fname = todo.pop()
                if fname in seen:
                    continue
                seen.add(fname)
                tree = self._env.parse(loader.get_source(self._env, fname)[0])
                names |= meta.find_undeclared_variables(tree)
                for ref in meta.find_referenced_templates(tree):
                    if ref is None:
                        return None
                    todo.append(ref)
        except Exception:  # missing or broken: render() reports it; assume everything is read
            return None
        return frozenset(names)

    def render(self, name: str, channel: str, context: Mapping[str, Any]) -> RenderedMessage:
        """Render one message; RenderError names the file and line of any problem."""
        path, fname = self._file(name, channel)

        def need(parts: Mapping[str, str | None], block: str) -> str:
            value = parts.get(block)
            if value is None:
                raise RenderError(
                    path, 0, f"block {block!r} is missing", f"{channel} templates need {{% block {block} %}}"
                )
            return value

        if channel == "email":
            parts = self._render(fname, path, context, ("subject", "text"))
            html_parts = self._render(_HTML + fname, path, context, ("html",))
            subject = _one_line(need(parts, "subject"))
            text = _clean_text(need(parts, "text"))
            html = need(html_parts, "html").strip()
            for block, value in (("subject", subject), ("text", text), ("html", html)):
                if not value:
                    raise RenderError(path, 0, f"the {block} is empty", f"fill {{% block {block} %}}")
            return RenderedMessage(channel, name, subject=subject, text=text, html=html)

        if channel == "task":
            parts = self._render(fname, path, context, ("title", "body"))
            title = _one_line(need(parts, "title"))
            if not title:
                raise RenderError(path, 0, "the task title is empty", "fill {% block title %}")
            return RenderedMessage(channel, name, title=title, body=_clean_text(need(parts, "body")))

        body = need(self._render(fname, path, context, ()), "")
        if channel == "sms":
            body = _clean_text(body)
            if not body:
                raise RenderError(path, 0, "the SMS is empty", "write the message text in the file")
            encoding, segments = sms_segments(body)
            if segments > self.max_sms_segments:
                hint = "shorten the text"
                if encoding == "UCS-2":
                    odd = sorted({c for c in body if c not in _GSM_BASIC and c not in _GSM_EXTENSION})
                    hint += (
                        f"; it is UCS-2 (70 characters per SMS) because of {''.join(odd)!r}: "
                        "with only GSM-7 characters an SMS holds 160"
                    )
                raise RenderError(
                    path,
                    0,
                    f"the SMS needs {segments} segments ({encoding}, {len(body)} characters), "
                    f"more than the maximum of {self.max_sms_segments}",
                    hint,
                )
            return RenderedMessage(channel, name, body=body, encoding=encoding, segments=segments)

        body = body.strip()
        try:
            parsed = jsonlib.loads(body)
        except ValueError as exc:
            bad = exc.lineno if isinstance(exc, jsonlib.JSONDecodeError) else 0
            shown = body.splitlines()[bad - 1] if 0 < bad <= len(body.splitlines()) else ""
            raise RenderError(
                path,
                0,
                f"the rendered webhook body is not valid JSON: {exc} (output line: {shown.strip()!r})",
                'insert values with |tojson, e.g. "email": {{ customer.email|tojson }}',
            ) from exc
        return RenderedMessage(channel, name, body=body, json=parsed)
