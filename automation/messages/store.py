"""Message templates: one Jinja2 file per message, checked and rendered in a sandbox. Pure: no database,
no network.

Files live in the templates folder and are named ``<name>.<channel>.j2``:

* ``email``   blocks ``subject``, ``text`` and ``html`` (usually by ``{% extends "layout.email.j2" %}``,
  which defines ``text`` and ``html`` around the child's ``text_body`` and ``html_body``). The ``html``
  block is rendered with HTML autoescaping; ``subject`` and ``text`` are not escaped.
* ``sms``     the whole file is the message body (not escaped); encoding and segment count are computed
  (:mod:`automation.messages.sms`) and a message longer than ``max_sms_segments`` is refused.
* ``webhook`` the whole file is a JSON body (insert values with ``|tojson``); it must parse as JSON.
* ``task``    blocks ``title`` and ``body``.

Files whose name starts with ``_`` (partials for ``{% include %}``) and ``layout.*`` are not messages.

What a template sees is built by :func:`automation.messages.context.build_context`; the filters it may
use are in :mod:`automation.messages.filters`; the sandbox it runs in, and its limits, are in
:mod:`automation.messages.sandbox`. Whatever goes wrong while rendering, a template error or the
sandbox refusing something, is a :class:`RenderError` at the template's file and line.
"""

from __future__ import annotations

import difflib
import json as jsonlib
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import Template, meta, nodes
from jinja2.exceptions import (
    SecurityError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)

from automation.errors import InputError, Problem
from automation.messages.context import CONTEXT_NAMES
from automation.messages.sandbox import HTML_PREFIX, MAX_TEMPLATE_BYTES, sandbox
from automation.messages.sms import non_gsm, sms_segments

__all__ = [
    "CHANNELS",
    "REQUIRED_BLOCKS",
    "RenderError",
    "RenderedMessage",
    "TemplateStore",
]

CHANNELS = ("email", "sms", "webhook", "task")
REQUIRED_BLOCKS: Mapping[str, tuple[str, ...]] = {
    "email": ("subject", "text", "html"),
    "sms": (),
    "webhook": (),
    "task": ("title", "body"),
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9][A-Za-z0-9_.\-]*)*$")

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


class TemplateStore:
    """The templates in one folder: check them, render them."""

    def __init__(self, templates_dir: Path, *, max_sms_segments: int = 3) -> None:
        if max_sms_segments < 1:
            raise ValueError("max_sms_segments must be at least 1")
        self.templates_dir = Path(templates_dir)
        self.max_sms_segments = max_sms_segments
        self._env = sandbox(self.templates_dir)
        self._files: dict[tuple[str, str], tuple[Path, str]] = {}  # (name, channel) -> (path, loader name)
        self._compiled: dict[str, Template] = {}  # loader name -> compiled template
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
            missing = exc.name.removeprefix(HTML_PREFIX) if isinstance(exc.name, str) else exc.message
            raise RenderError(
                where,
                line,
                f"template {missing!r} not found in {self.templates_dir}",
                "create that file or fix the name in extends/include",
            ) from exc
        except UndefinedError as exc:
            where, line = _template_frame(exc, path)
            hint = f"check the name against the template context ({CONTEXT_NAMES}); "
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
            template = self._compiled.get(fname)
            if template is None:  # compiled once per store (Jinja's own cache is an LRU with a lock)
                template = self._compiled[fname] = self._env.get_template(fname)
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
            html_parts = self._render(HTML_PREFIX + fname, path, context, ("html",))
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
                    hint += (
                        f"; it is UCS-2 (70 characters per SMS) because of {non_gsm(body)!r}: "
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
