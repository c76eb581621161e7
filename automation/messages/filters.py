"""The filters a template may use besides Jinja's built-ins, with the JSON settings of ``|tojson``.

* ``value|date(format="medium")``      a date in the customer's time zone and locale
* ``value|datetime(format="medium")``  date and time in the customer's time zone and locale
  (formats: ``short``, ``medium``, ``long``, ``full``, ``iso`` or a ``strftime`` pattern containing ``%``;
  values may be datetimes, dates or ISO strings; naive datetimes are UTC; None gives "").
  Locales: en-US (the default), other ``en-*`` (day first), ``de``, ``fr``, ``es``; an unknown time
  zone falls back to UTC. Both filters accept ``tz=`` and ``locale=`` to override the customer's.
* ``value|fallback(default="")``       ``default`` when the value is None, blank or undefined
* ``value|number(decimals=0)``         grouped number in the customer's locale ("12,345.50")
* ``value|tojson``                     JSON (dates as ISO strings, non-ASCII kept), HTML-safe
* ``values|min`` and ``values|max``    Jinja's, with a shortcut for a plain list of numbers

The customer's time zone and locale are read from ``customer`` in the template context.
"""

from __future__ import annotations

import json as jsonlib
import math
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Undefined, pass_context, pass_environment, pass_eval_context
from jinja2.environment import Environment
from jinja2.filters import do_max, do_min, do_tojson
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from markupsafe import Markup

__all__ = ["install"]

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
        global _last_time
        last = _last_time
        if value is last[0]:  # a batch renders every message at the same ``now``
            return last[1]
        text = _encode_json_string(value.isoformat())
        _last_time = (value, text)
        return text
    return _JSON_ENCODER.encode(value)


#: The last date or datetime ``_encode`` wrote and its text (both immutable; compared by identity).
_last_time: tuple[Any, str] = (None, "null")
_new_markup = str.__new__  # ``Markup(text)`` for a plain str: markupsafe's __new__ does just this


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
    return _new_markup(Markup, text)


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


def install(environment: Environment) -> None:
    """Add the filters to ``environment``, and the JSON settings that ``|tojson`` (and Jinja's own JSON
    output) write with."""
    environment.filters.update(
        date=_date_filter,
        datetime=_datetime_filter,
        fallback=_fallback_filter,
        number=_number_filter,
        min=_min_filter,
        max=_max_filter,
        tojson=_tojson_filter,
    )
    environment.policies["json.dumps_function"] = _dumps
    environment.policies["json.dumps_kwargs"] = dict(_JSON_KWARGS)
