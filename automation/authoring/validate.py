"""``automation validate``: playbooks, their rules, and the templates they name, all problems at once.

Each template a playbook names is also rendered once for a synthetic customer (the first of
:func:`sample_customers`, the ones ``automation lint`` uses too), so a template the sandbox refuses
whatever the data (``{{ ''.__class__ }}``, ``{{ range(10**9)|list }}``) is an error here rather than a
dead letter for every customer at send time. Failures that depend on the data (an empty optional field)
are left to ``automation lint``, which tries several sample customers.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from jinja2.exceptions import SecurityError

from automation.errors import PlaybookError, Problem
from automation.messages.context import CUSTOMER_FIELDS, build_context
from automation.messages.store import RenderError, TemplateStore
from automation.playbook.models import (
    EmailStep,
    LoadedPlaybook,
    SmsStep,
    TaskStep,
    WaitStep,
    WebhookStep,
    discover,
    load_playbook,
    step_channel,
    step_templates,
)
from automation.rules.compiled import CompiledPlaybook, compile_playbook

SAMPLE_NOW = datetime(2026, 6, 15, 9, 30, tzinfo=UTC)  # fixed, so trial renders do not depend on the day
SAMPLE_UNSUBSCRIBE_URL = "https://unsubscribe.example.com/u/lint-token"
_SANDBOX_HINT = "templates run in a sandbox: no private attributes, no changing data, no huge values"

AnyStep = EmailStep | SmsStep | WebhookStep | TaskStep | WaitStep
TrialRenders = MutableMapping[tuple[str, str], RenderError | None]
"""(template, channel) -> the error of its trial render (None: it rendered), shared by the playbooks of
one ``validate`` run so that each template is rendered once."""


def sample_customers() -> list[dict[str, Any]]:
    """A handful of synthetic customers: complete, bare (every optional field None), and in between."""
    full: dict[str, Any] = {
        "id": "lint-full",
        "email": "ada@example.com",
        "phone": "+14155550100",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "timezone": "America/New_York",
        "locale": "en-US",
        "owner_email": "owner@example.com",
        "plan": "pro",
        "clv": 12500.5,
        "orders_count": 12,
        "signed_up_at": datetime(2024, 3, 1, 12, tzinfo=UTC),
        "last_order_at": datetime(2026, 6, 1, 8, tzinfo=UTC),
        "last_seen_at": datetime(2026, 6, 14, 18, tzinfo=UTC),
        "birthday": date(1990, 6, 15),
        "nps": 9,
        "attributes": {"company": "Analytical Engines", "industry": "software"},
    }
    bare: dict[str, Any] = {**dict.fromkeys(CUSTOMER_FIELDS), "id": "lint-bare"}
    bare.update(email="bare@example.com", phone="+14155550101", attributes={}, orders_count=0)
    bare["timezone"] = None
    mixed: dict[str, Any] = {
        **bare,
        "id": "lint-mixed",
        "first_name": "Jörg",
        "timezone": "Europe/Berlin",
        "locale": "de-DE",
        "plan": "enterprise",
        "clv": None,
        "orders_count": 1,
        "signed_up_at": datetime(2026, 6, 10, tzinfo=UTC),
        "nps": 3,
        "attributes": {"company": None},
    }
    return [full, bare, mixed]


def trial_render(
    templates: TemplateStore,
    name: str,
    channel: str,
    customer: dict[str, Any],
    *,
    playbook: str,
    stage: str | None,
    touch: str | None,
) -> RenderError | None:
    """Render one template for a sample customer as a send would; the error, or None when it renders."""
    context = build_context(
        customer,
        playbook=playbook,
        segment=None,
        touch=touch,
        stage=stage,
        step=name,
        now=SAMPLE_NOW,
        unsubscribe_url=SAMPLE_UNSUBSCRIBE_URL,
    )
    try:
        templates.render(name, channel, context)
    except RenderError as exc:
        return exc
    return None


def refused_by_sandbox(error: RenderError) -> bool:
    """Whether the sandbox refused the template itself (private attributes, changing data, huge values),
    which no customer's data can avoid."""
    return isinstance(error.__cause__, SecurityError | OverflowError)


def located_steps(
    loaded: LoadedPlaybook,
) -> Iterator[tuple[list[int | str], str | None, str | None, AnyStep]]:
    """Every step with its YAML path, stage and touch model (None and None for recurring steps)."""
    pb = loaded.playbook
    for stage, by_touch in pb.programs.items():
        for touch, steps in by_touch.items():
            for i, step in enumerate(steps):
                yield ["programs", stage, touch, i], stage, touch, step
    for r_index, rule in enumerate(pb.recurring):
        for i, step in enumerate(rule.steps):
            yield ["recurring", r_index, "steps", i], None, None, step


def template_problems(
    loaded: LoadedPlaybook, templates: TemplateStore, renders: TrialRenders | None = None
) -> list[Problem]:
    """Every template a step names must exist, compile and have the blocks its channel needs.

    With ``renders`` each template that passes is also trial-rendered (once per key of ``renders``) and
    a sandbox refusal is a problem at the template's line; ``automation lint`` passes none, as its
    ``render`` rule renders for every sample customer itself."""
    problems: list[Problem] = []
    checked: set[tuple[str, str]] = set()
    for loc, stage, touch, step in located_steps(loaded):
        if isinstance(step, WaitStep):
            continue
        channel = step_channel(step)
        variants = getattr(step, "variants", None)
        for name in step_templates(step):
            key = (name, channel)
            found = templates.check(name, channel)
            where = [*loc, "variants", name] if variants else [*loc, channel]
            line, column = loaded.source.key_position(where) if variants else loaded.source.locate(where)[:2]
            if not found:
                if renders is not None and key not in checked:
                    used_at = f"{loaded.path}:{line}:{column}"
                    problems.extend(_sandbox_problems(loaded, templates, renders, key, used_at, stage, touch))
            elif not templates.path_for(name, channel).is_file():
                detail = found[0].message
                problems.append(
                    loaded.source.problem(line, column, f"unknown {channel} template {name!r}: {detail}")
                )
            elif key not in checked:
                problems.extend(found)
            checked.add(key)
    return problems


def _sandbox_problems(
    loaded: LoadedPlaybook,
    templates: TemplateStore,
    renders: TrialRenders,
    key: tuple[str, str],
    used_at: str,
    stage: str | None,
    touch: str | None,
) -> list[Problem]:
    """The sandbox refusal of one template's trial render (rendered only if ``renders`` lacks it)."""
    name, channel = key
    if key not in renders:
        renders[key] = trial_render(
            templates,
            name,
            channel,
            sample_customers()[0],
            playbook=loaded.playbook.name,
            stage=stage,
            touch=touch,
        )
    error = renders[key]
    if error is None or not refused_by_sandbox(error):
        return []
    message = (
        f"{channel} template {name!r} (used at {used_at}) would fail for every customer: {error.reason} "
        f"({_SANDBOX_HINT})"
    )
    return [Problem(error.path, error.line, 0, message, error.problem.source_line)]


def check_playbook(
    path: Path, templates: TemplateStore, now: datetime | None = None, *, renders: TrialRenders | None = None
) -> CompiledPlaybook:
    """Load, compile and check the templates of one playbook (each trial-rendered once, see
    :func:`template_problems`); raise ``PlaybookError`` with every problem. ``renders`` lets several
    playbooks share the trial renders."""
    loaded = load_playbook(path)
    problems: list[Problem] = []
    compiled: CompiledPlaybook | None = None
    try:
        compiled = compile_playbook(loaded, now or datetime.now(UTC))
    except PlaybookError as exc:
        problems.extend(exc.problems)
    problems.extend(template_problems(loaded, templates, {} if renders is None else renders))
    if problems or compiled is None:
        raise PlaybookError(problems)
    return compiled


def validate_paths(paths: Sequence[Path], templates: TemplateStore) -> list[CompiledPlaybook]:
    """Check every playbook under ``paths``; one ``PlaybookError`` lists the problems of all files."""
    files = discover(paths)
    if not files:
        where = ", ".join(str(p) for p in paths)
        raise PlaybookError([Problem(where, 0, 0, "no playbooks found (*.yaml or *.yml)")])
    results: list[CompiledPlaybook] = []
    problems: list[Problem] = []
    names: dict[str, Path] = {}
    renders: TrialRenders = {}
    for path in files:
        try:
            compiled = check_playbook(path, templates, renders=renders)
        except PlaybookError as exc:
            problems.extend(exc.problems)
            continue
        if compiled.name in names:
            problems.append(
                Problem(
                    path,
                    1,
                    1,
                    f"playbook name {compiled.name!r} is already used by "
                    f"{names[compiled.name]}; names must be unique",
                )
            )
        names[compiled.name] = path
        results.append(compiled)
    if problems:
        raise PlaybookError(problems)
    return results
