"""The Jinja2 environment templates run in: Jinja's immutable sandbox with limits, and the loader.

Undefined names are errors (``StrictUndefined``); ``None`` prints as an empty string. Private attributes
(``_x``, ``__class__``), ``str.format`` tricks, changing data (``dict.update``) and very large ``*``/``**``
results raise ``SecurityError``. A file larger than :data:`MAX_TEMPLATE_BYTES`, not UTF-8 or nested too
deeply to compile is a syntax error. Each file is compiled twice under two loader names: ``<file>`` as
it is, and ``html:<file>`` with HTML autoescaping (for the ``html`` block of an email).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, nodes
from jinja2.environment import Environment
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from automation.messages import filters

__all__ = ["HTML_PREFIX", "MAX_TEMPLATE_BYTES", "Sandbox", "sandbox"]

HTML_PREFIX = "html:"  # loader-name prefix: the same file compiled with HTML autoescaping
_DICT_ATTRIBUTES = frozenset(dir(dict))  # names a plain dict resolves as attributes, not keys
_MAX_SEQUENCE = 100_000  # longest string/list a template may build with *
_MAX_EXPONENT = 1_000
#: A template file is at most this many bytes of UTF-8 (Gmail clips HTML mail after about 100 KB).
MAX_TEMPLATE_BYTES = 262_144


class _Loader(FileSystemLoader):
    """Loads ``html:<file>`` from ``<file>``: the HTML-autoescaped compilation of the same source."""

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        """The file's text, refused as a syntax error (line 1) when too large or not UTF-8."""
        fname = template.removeprefix(HTML_PREFIX)
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


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, refusing ``*`` results and integer powers beyond fixed limits, so that
    a template cannot exhaust memory or time."""

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

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Jinja's sandboxed ``obj.attribute``. On a plain dict (the customer, its attributes) a name that
        is not a dict attribute is the key, as in Jinja, but without first raising and catching the
        AttributeError of ``getattr(dict, name)``: a template reads a dozen of them per message."""
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def join_path(self, template: str, parent: str) -> str:
        """Templates extended or included from an HTML compilation are compiled for HTML too."""
        if parent.startswith(HTML_PREFIX) and not template.startswith(HTML_PREFIX):
            return HTML_PREFIX + template
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


def sandbox(templates_dir: Path) -> Sandbox:
    """The environment of the templates in ``templates_dir``, with the filters installed. Compiled
    templates are kept for the life of the environment: files are not checked for changes."""
    environment = Sandbox(
        auto_reload=False,  # a store is built per load of the templates; no stat() per message
        loader=_Loader(templates_dir),
        undefined=StrictUndefined,
        autoescape=lambda name: name is not None and name.startswith(HTML_PREFIX),
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    filters.install(environment)
    return environment
