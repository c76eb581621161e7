"""``automation validate``: playbooks, their rules, and the templates they name, all problems at once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from automation.compiled import CompiledPlaybook, compile_playbook
from automation.errors import PlaybookError, Problem
from automation.playbooks import (
    LoadedPlaybook,
    WaitStep,
    discover,
    load_playbook,
    step_channel,
    step_template,
)
from automation.rendering import TemplateStore


def template_problems(loaded: LoadedPlaybook, templates: TemplateStore) -> list[Problem]:
    """Every template a step names must exist, compile and have the blocks its channel needs."""
    pb, problems = loaded.playbook, []
    located: list[tuple[list[int | str], object]] = []
    for stage, by_touch in pb.programs.items():
        for touch, steps in by_touch.items():
            located.extend((["programs", stage, touch, i], step) for i, step in enumerate(steps))
    for r_index, rule in enumerate(pb.recurring):
        located.extend((["recurring", r_index, "steps", i], step) for i, step in enumerate(rule.steps))
    checked: set[tuple[str, str]] = set()
    for loc, step in located:
        if isinstance(step, WaitStep):
            continue
        channel, name = step_channel(step), step_template(step)  # type: ignore[arg-type]
        found = templates.check(name, channel)
        if not found:
            continue
        if not templates.path_for(name, channel).is_file():
            line, column, _ = loaded.source.locate([*loc, channel])
            detail = found[0].message
            problems.append(
                loaded.source.problem(line, column, f"unknown {channel} template {name!r}: {detail}")
            )
        elif (name, channel) not in checked:
            problems.extend(found)
        checked.add((name, channel))
    return problems


def check_playbook(path: Path, templates: TemplateStore, now: datetime | None = None) -> CompiledPlaybook:
    """Load, compile and check the templates of one playbook; raise ``PlaybookError`` with every problem."""
    loaded = load_playbook(path)
    problems: list[Problem] = []
    compiled: CompiledPlaybook | None = None
    try:
        compiled = compile_playbook(loaded, now or datetime.now(UTC))
    except PlaybookError as exc:
        problems.extend(exc.problems)
    problems.extend(template_problems(loaded, templates))
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
    for path in files:
        try:
            compiled = check_playbook(path, templates)
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
