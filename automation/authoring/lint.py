"""``automation lint``: likely mistakes that ``validate`` accepts, plus everything ``validate`` rejects.

Each finding is a :class:`Finding`: a ``Problem`` (file, line, column, message, severity) and a one-line fix.
Errors make ``automation lint`` exit 2; warnings alone exit 0.

Rules (severity in brackets):

* ``unreachable`` [error]: a stage or segment that can never match because an earlier one always wins: an
  earlier rule that is literally ``true``, the same rule text, or a threshold on the same field that
  already covers it (``orders_count >= 2`` before ``orders_count >= 10``).
* ``unsubscribe`` [error]: an email template (and the files it extends or includes) that never prints
  ``unsubscribe_url``.
* ``sms-opt-out`` [warning]: an SMS template without opt-out wording (STOP, "opt out" or "unsubscribe").
* ``webhook-url`` [error]: a webhook ``url`` that is plain http to a host other than 127.0.0.1/localhost
  (a ``${VAR}`` URL is checked only when the variable is set where lint runs).
* ``secret`` [error]: a webhook ``url`` with a credential written in (``token=``, ``key=``, ``user:pw@``).
* ``render`` [error]: a template that fails to render (StrictUndefined) for one of a few synthetic
  customers, e.g. one whose optional fields are all empty.
* ``overlap`` [warning]: two playbooks that both send the same channel as soon as a customer enters the same
  stage (likely double messages); not reported when AUTOMATION_FREQUENCY_CAP is set.
* ``invalid`` [error]: whatever ``automation validate`` reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automation.authoring.validate import SAMPLE_NOW, sample_customers, template_problems, trial_render
from automation.errors import PlaybookError, Problem
from automation.messages.context import CUSTOMER_FIELDS
from automation.messages.store import TemplateStore
from automation.playbook.models import (
    EmailStep,
    Goal,
    LoadedPlaybook,
    Rule,
    SmsStep,
    TaskStep,
    WaitStep,
    WebhookStep,
    discover,
    load_playbook,
    step_channel,
    step_template,
)
from automation.rules import ast
from automation.rules.compiled import compile_playbook

ERROR, WARNING = "error", "warning"
LINT_NOW = SAMPLE_NOW  # fixed, so lint output does not depend on the day
AnyStep = EmailStep | SmsStep | WebhookStep | TaskStep | WaitStep


@dataclass(frozen=True)
class Finding:
    problem: Problem
    fix: str
    rule: str

    @property
    def severity(self) -> str:
        return self.problem.severity

    def render(self) -> str:
        """``file:line:col: severity: message`` and an indented ``fix:`` line (line/column 1 when unknown)."""
        p = self.problem
        text = f"{p.path}:{max(p.line, 1)}:{max(p.column, 1)}: {p.severity}: {p.message} [{self.rule}]"
        return text + (f"\n    fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class LintResult:
    files: list[Path]
    findings: list[Finding]

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity != ERROR)


@dataclass(frozen=True)
class _LocatedStep:
    loc: list[int | str]
    stage: str | None  # None for recurring steps
    touch: str | None
    step: AnyStep


def lint_paths(
    paths: Sequence[Path],
    templates: TemplateStore,
    environ: Mapping[str, str] | None = None,
    *,
    global_cap: bool = False,
) -> LintResult:
    """Lint every playbook under ``paths`` and the templates they name."""
    files = discover(paths)
    findings: list[Finding] = []
    if not files:
        where = ", ".join(str(p) for p in paths)
        problem = Problem(where, 0, 0, "no playbooks found (*.yaml or *.yml)")
        return LintResult([], [Finding(problem, "pass a playbook file or a folder that holds some", "files")])
    loaded_all: list[LoadedPlaybook] = []
    names: dict[str, Path] = {}
    for path in files:
        try:
            loaded = load_playbook(path)
        except PlaybookError as exc:
            findings.extend(_invalid(exc.problems))
            continue
        loaded_all.append(loaded)
        name = loaded.playbook.name
        if name in names:
            problem = Problem(path, 1, 1, f"playbook name {name!r} is already used by {names[name]}")
            findings.append(Finding(problem, "give each playbook a unique name", "invalid"))
        names.setdefault(name, path)
        findings.extend(lint_playbook(loaded, templates, environ or {}))
    if not global_cap:
        findings.extend(overlaps(loaded_all))
    return LintResult(files, _unique(findings))


def lint_playbook(
    loaded: LoadedPlaybook, templates: TemplateStore, environ: Mapping[str, str]
) -> list[Finding]:
    """Every per-file finding: what ``validate`` reports, then the lint rules."""
    findings: list[Finding] = []
    try:
        compile_playbook(loaded, LINT_NOW)
    except PlaybookError as exc:
        findings.extend(_invalid(exc.problems))
    broken = template_problems(loaded, templates)
    findings.extend(_invalid(broken))
    findings.extend(unreachable(loaded))
    findings.extend(goal_findings(loaded))
    steps = list(located_steps(loaded))
    findings.extend(webhook_urls(loaded, steps, environ))
    findings.extend(template_findings(loaded, steps, templates))
    return findings


def _invalid(problems: list[Problem]) -> list[Finding]:
    fix = "see `automation validate`; the message says what is expected"
    return [Finding(p, fix, "invalid") for p in problems]


def _unique(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, int, int, str]] = set()
    out: list[Finding] = []
    for f in findings:
        key = (str(f.problem.path), f.problem.line, f.problem.column, f.problem.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def located_steps(loaded: LoadedPlaybook) -> Iterator[_LocatedStep]:
    pb = loaded.playbook
    for stage, by_touch in pb.programs.items():
        for touch, steps in by_touch.items():
            for i, step in enumerate(steps):
                yield _LocatedStep(["programs", stage, touch, i], stage, touch, step)
    for r_index, rule in enumerate(pb.recurring):
        for i, step in enumerate(rule.steps):
            yield _LocatedStep(["recurring", r_index, "steps", i], None, None, step)


# -- unreachable stages and segments -------------------------------------------------------------
@dataclass(frozen=True)
class _Range:
    """``field`` within (lo, hi); None means unbounded on that side."""

    field: str
    lo: float | None
    lo_incl: bool
    hi: float | None
    hi_incl: bool

    def within(self, other: _Range) -> bool:
        if self.field != other.field:
            return False
        if other.lo is not None:
            if self.lo is None or self.lo < other.lo:
                return False
            if self.lo == other.lo and self.lo_incl and not other.lo_incl:
                return False
        if other.hi is not None:
            if self.hi is None or self.hi > other.hi:
                return False
            if self.hi == other.hi and self.hi_incl and not other.hi_incl:
                return False
        return True


def _range(node: ast.Node) -> _Range | None:
    """``field <op> number`` (or ``number <op> field``) as a range; None for anything else."""
    if not isinstance(node, ast.Compare):
        return None
    op, left, right = node.op, node.left, node.right
    if isinstance(left, ast.Literal) and isinstance(right, ast.Field):
        flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}
        if op not in flipped:
            return None
        op, left, right = flipped[op], right, left
    if not (isinstance(left, ast.Field) and isinstance(right, ast.Literal) and right.kind == "number"):
        return None
    if not isinstance(right.value, int | float) or isinstance(right.value, bool):
        return None
    value, name = float(right.value), left.dotted
    return {
        ">=": _Range(name, value, True, None, False),
        ">": _Range(name, value, False, None, False),
        "<=": _Range(name, None, False, value, True),
        "<": _Range(name, None, False, value, False),
        "==": _Range(name, value, True, value, True),
    }.get(op)


def _always_true(node: ast.Node) -> bool:
    if isinstance(node, ast.Literal):
        return node.kind == "bool" and node.value is True
    if isinstance(node, ast.Or):
        return any(_always_true(item) for item in node.items)
    if isinstance(node, ast.And):
        return all(_always_true(item) for item in node.items)
    return False


def _normal(text: str) -> str:
    return " ".join(text.split())


def _covers(earlier: Rule, later: Rule) -> str | None:
    """Why every customer matching ``later`` also matches ``earlier`` (None when that is not certain)."""
    if _always_true(earlier.node):
        return f"the earlier rule `{_normal(earlier.text)}` is always true"
    if _normal(earlier.text) == _normal(later.text):
        return "an earlier entry has the same rule"
    if _subset(later.node, earlier.node):
        return f"everyone it matches already matches the earlier rule `{_normal(earlier.text)}`"
    return None


def _subset(later: ast.Node, earlier: ast.Node) -> bool:
    """Certain (syntactic) cases of: ``later`` true implies ``earlier`` true."""
    if isinstance(earlier, ast.Or) and any(_subset(later, item) for item in earlier.items):
        return True
    if isinstance(later, ast.Or):
        return all(_subset(item, earlier) for item in later.items)
    if isinstance(later, ast.And):
        return any(_subset(item, earlier) for item in later.items)
    inner, outer = _range(later), _range(earlier)
    return inner is not None and outer is not None and inner.within(outer)


def unreachable(loaded: LoadedPlaybook) -> list[Finding]:
    pb, findings = loaded.playbook, []
    entries: list[tuple[str, str, Rule | None]] = [("segment", s.name, s.when) for s in pb.segments]
    entries += [("stage", s.name, s.when) for s in pb.stages]
    for kind in ("segment", "stage"):
        earlier: list[tuple[str, Rule]] = []
        for _, name, rule in (e for e in entries if e[0] == kind):
            if rule is None:
                continue  # the catch-all segment: validation checks that it comes last
            for other, other_rule in earlier:
                why = _covers(other_rule, rule)
                if why:
                    problem = loaded.source.problem(
                        rule.line,
                        rule.column,
                        f"{kind} {name!r} can never match: {kind} {other!r} comes first and {why}",
                    )
                    fix = (
                        f"move {kind} {name!r} above {other!r}, or narrow {other!r} "
                        f"(first match wins, in file order)"
                    )
                    findings.append(Finding(problem, fix, "unreachable"))
                    break
            earlier.append((name, rule))
    return findings


# -- goals -----------------------------------------------------------------------------------------
def goal_findings(loaded: LoadedPlaybook) -> list[Finding]:
    """Goals that can never convert (no program, so no entries) or that every entry reaches at once."""
    pb, source, findings = loaded.playbook, loaded.source, []
    goals: list[tuple[list[int | str], str, Goal, str | None]] = []
    if pb.goal is not None:
        goals.append((["goal"], "the playbook's goal", pb.goal, None))
    goals += [
        (["goals", stage], f"the goal of stage {stage!r}", goal, stage) for stage, goal in pb.goals.items()
    ]
    for loc, what, goal, stage in goals:
        programs = [s for s, by_touch in pb.programs.items() if any(by_touch.values())]
        if (stage is None and not programs) or (stage is not None and stage not in programs):
            line, column = source.key_position(loc)
            where = "the playbook has no program" if stage is None else f"stage {stage!r} has no program"
            problem = Problem(
                loaded.path,
                line,
                column,
                f"{what} never converts: {where}, so no one enters one",
                severity=WARNING,
            )
            fix = "add the program under `programs:`, or remove the goal"
            findings.append(Finding(problem, fix, "goal"))
        elif _always_true(goal.when.node):
            line, column, _ = source.locate([*loc, "when"])  # also for a YAML boolean (`when: true`)
            problem = Problem(
                loaded.path,
                line,
                column,
                f"{what} is always true: every entry converts at once",
                severity=WARNING,
            )
            findings.append(
                Finding(problem, "write the rule that means success, e.g. orders_count >= 1", "goal")
            )
    return findings


# -- webhook urls ----------------------------------------------------------------------------------
_LOCAL_HTTP = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?([/?#]|$)", re.I)
_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
_SECRET_PARAM = re.compile(r"[?&;]([\w.\-]*(?:token|key|secret|password|passwd|pwd))=([^&#;]*)", re.I)
_USERINFO = re.compile(r"^[a-z]+://([^/@:]+):([^/@]+)@", re.I)


def webhook_urls(
    loaded: LoadedPlaybook, steps: list[_LocatedStep], environ: Mapping[str, str]
) -> list[Finding]:
    findings: list[Finding] = []
    for located in steps:
        step = located.step
        if not isinstance(step, WebhookStep):
            continue
        line, column, _ = loaded.source.locate([*located.loc, "url"])
        url = step.url
        for name, value in _SECRET_PARAM.findall(url):
            if value and not _ENV_REF.fullmatch(value):
                problem = loaded.source.problem(
                    line,
                    column,
                    f"webhook {step.webhook!r}: a secret is written into the playbook ({name}=...)",
                )
                findings.append(Finding(problem, _env_fix(step.webhook), "secret"))
                break
        userinfo = _USERINFO.match(url)
        if userinfo and not _ENV_REF.fullmatch(userinfo.group(2)):
            problem = loaded.source.problem(
                line, column, f"webhook {step.webhook!r}: a password is written into the URL (user:password@)"
            )
            findings.append(Finding(problem, _env_fix(step.webhook), "secret"))
        resolved = _resolve(url, environ)
        if resolved is None:
            continue  # ${VAR} not set here: its value is checked when the worker starts
        if resolved.lower().startswith("http://") and not _LOCAL_HTTP.match(resolved):
            shown = "" if resolved == url else f" ({url} is {resolved} here)"
            problem = loaded.source.problem(
                line,
                column,
                f"webhook {step.webhook!r} posts customer data over plain http{shown}",
            )
            fix = (
                "use an https:// URL (plain http is accepted only for http://127.0.0.1 and http://localhost)"
            )
            findings.append(Finding(problem, fix, "webhook-url"))
    return findings


def _env_fix(webhook: str) -> str:
    var = re.sub(r"[^A-Z0-9]+", "_", webhook.upper()).strip("_") + "_WEBHOOK_URL"
    return f"write url: ${{{var}}} and set {var} in the worker's environment"


def _resolve(url: str, environ: Mapping[str, str]) -> str | None:
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        if match.group(1) not in environ:
            missing = True
            return ""
        return environ[match.group(1)]

    resolved = _ENV_REF.sub(value, url)
    return None if missing else resolved


# -- templates ---------------------------------------------------------------------------------------
_EXTENDS = re.compile(r"\{%-?\s*(?:extends|include)\s+[\"']([^\"']+)[\"']")
_COMMENT = re.compile(r"\{#.*?#\}", re.S)
_OPT_OUT = re.compile(r"\bSTOP\b|\bopt[\s-]?out\b|\bunsubscribe\b", re.I)


def _sources(templates: TemplateStore, path: Path, seen: set[Path] | None = None) -> list[str]:
    """The text of a template and of every file it extends or includes (comments removed)."""
    seen = seen if seen is not None else set()
    if path in seen or not path.is_file():
        return []
    seen.add(path)
    try:
        text = _COMMENT.sub("", path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return []
    out = [text]
    for ref in _EXTENDS.findall(text):
        out.extend(_sources(templates, templates.templates_dir / ref, seen))
    return out


def template_findings(
    loaded: LoadedPlaybook, steps: list[_LocatedStep], templates: TemplateStore
) -> list[Finding]:
    pb, findings = loaded.playbook, []
    done: set[tuple[str, str]] = set()
    for located in steps:
        step = located.step
        if isinstance(step, WaitStep):
            continue
        channel, name = step_channel(step), step_template(step)
        if (name, channel) in done or templates.check(name, channel):
            continue  # checked already, or broken in a way validation reports
        done.add((name, channel))
        path = templates.path_for(name, channel)
        line, column, _ = loaded.source.locate([*located.loc, channel])
        used_at = f"{loaded.path}:{line}:{column}"
        texts = _sources(templates, path)
        if channel == "email" and not any("unsubscribe_url" in text for text in texts):
            problem = Problem(
                path, 1, 1, f"email template {name!r} (used at {used_at}) never prints the unsubscribe link"
            )
            fix = (
                '{% extends "layout.email.j2" %} (its footer has the link) '
                "or add {{ unsubscribe_url }} to the text and html blocks"
            )
            findings.append(Finding(problem, fix, "unsubscribe"))
        if channel == "sms" and not any(_OPT_OUT.search(text) for text in texts):
            problem = Problem(
                path,
                1,
                1,
                f"SMS template {name!r} (used at {used_at}) does not say how to opt out",
                severity=WARNING,
            )
            findings.append(Finding(problem, 'end the message with "Reply STOP to opt out."', "sms-opt-out"))
        findings.extend(_render_findings(pb.name, located, name, channel, templates, used_at))
    return findings


def _render_findings(
    playbook: str, located: _LocatedStep, name: str, channel: str, templates: TemplateStore, used_at: str
) -> list[Finding]:
    findings: list[Finding] = []
    for customer in sample_customers():
        exc = trial_render(
            templates, name, channel, customer, playbook=playbook, stage=located.stage, touch=located.touch
        )
        if exc is not None:
            problem = Problem(
                exc.path,
                exc.line,
                0,
                f"{channel} template {name!r} (used at {used_at}) fails to render for a sample customer "
                f"({_describe(customer)}): {exc.reason}",
                exc.problem.source_line,
            )
            fix = exc.hint or "make the template work when optional customer fields are empty"
            findings.append(Finding(problem, fix, "render"))
            break  # one failing sample is enough per template
    return findings


def _describe(customer: Mapping[str, Any]) -> str:
    empty = [k for k in CUSTOMER_FIELDS if k not in ("id", "attributes") and customer.get(k) is None]
    if not empty:
        return "every field set"
    shown = ", ".join(empty[:4]) + (", ..." if len(empty) > 4 else "")
    return f"{customer['id']}, with {shown} empty"


# -- across playbooks --------------------------------------------------------------------------------
_MESSAGING = ("email", "sms")


def _entry_channels(loaded: LoadedPlaybook, stage: str) -> dict[str, tuple[str, str]]:
    """Channel -> (touch, template) of the messages a program sends as soon as a customer enters ``stage``."""
    found: dict[str, tuple[str, str]] = {}
    for touch, steps in loaded.playbook.programs.get(stage, {}).items():
        for step in steps:
            if isinstance(step, WaitStep):
                break
            channel = step_channel(step)
            if channel in _MESSAGING and step.when is None and step.unless is None:
                found.setdefault(channel, (touch, step_template(step)))
    return found


def overlaps(loaded_all: list[LoadedPlaybook]) -> list[Finding]:
    """Two playbooks that message a customer on entering the same stage, on the same channel."""
    findings: list[Finding] = []
    for i, first in enumerate(loaded_all):
        for second in loaded_all[i + 1 :]:
            shared = [s for s in first.playbook.programs if s in second.playbook.programs]
            for stage in shared:
                a, b = _entry_channels(first, stage), _entry_channels(second, stage)
                for channel in (c for c in _MESSAGING if c in a and c in b):
                    line, column = second.source.key_position(["programs", stage])
                    a_line, a_col = first.source.key_position(["programs", stage])
                    problem = second.source.problem(
                        line,
                        column,
                        f"playbooks {second.playbook.name!r} and {first.playbook.name!r} "
                        f"({first.path}:{a_line}:{a_col}) both send {channel} "
                        f"({b[channel][1]!r} and {a[channel][1]!r}) when a customer enters stage {stage!r}: "
                        "customers in both playbooks' segments get two messages at once",
                        severity=WARNING,
                    )
                    fix = (
                        'set a shared cap across playbooks (AUTOMATION_FREQUENCY_CAP="1 per 1d") '
                        "or give the stages distinct names and conditions"
                    )
                    findings.append(Finding(problem, fix, "overlap"))
    return findings
