"""The report as rich tables for the terminal, drawn from ``Report.as_json()``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from automation.report.build import COHORTS, Report

_STEP_COLUMNS = (
    "entered",
    "planned",
    "sent",
    "held_out",
    "delivered",
    "bounced",
    "opened",
    "machine_opened",
    "clicked",
    "unsubscribed",
    "complained",
    "converted",
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f} pts"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def print_report(report: Report, console: Console | None = None) -> None:
    """Steps, goals with treatment against holdout and control, variants and the funnel."""
    console = console or Console(highlight=False)
    if not console.is_terminal:
        console.width = 200
    data = report.as_json()
    period = data["period"]
    console.print(Text(f"{data['playbook']}: {period['since']} to {period['until']}"))

    steps = Table(title="Steps (rates per message sent)", title_justify="left")
    # the step names its stage (acquisition/none#0)
    for name in ("step", "template", "channel"):
        steps.add_column(name, no_wrap=True)
    for name in _STEP_COLUMNS:
        steps.add_column(name.replace("_", " "), justify="right")
    for name in ("click rate", "conv. rate"):
        steps.add_column(name, justify="right")
    for row in data["steps"]:
        steps.add_row(
            Text(row["step"] or row["stage"] or "-"),
            Text(row["template"]),
            Text(row["channel"]),
            *(f"{row[k]:,}" for k in _STEP_COLUMNS),
            _pct(row["rates"]["clicked"]),
            _pct(row["rates"]["converted"]),
        )
    if steps.row_count:
        console.print(steps)
    else:
        console.print("no messages planned in the period")

    if data["goals"]:
        goals = Table(title="Goals: treatment against holdout and control", title_justify="left")
        for name in ("goal", *COHORTS, "lift vs holdout", "95% CI", "p", "vs control", "p ", "median time"):
            goals.add_column(name, justify="left" if name == "goal" else "right")
        goals.add_column("verdict", overflow="fold")
        for goal, cmp in zip(data["goals"], data["holdout"]["goals"], strict=True):
            h, c = cmp["vs_holdout"], cmp["vs_control"]
            low, high = h["ci95"]
            goals.add_row(
                Text(goal["goal"]),
                *(
                    f"{goal['converted'][k]:,}/{goal['entries'][k]:,} {_pct(goal['rates'][k])}"
                    for k in COHORTS
                ),
                _points(h["lift"]),
                f"[{_pct(low)}, {_pct(high)}]" if low is not None else "-",
                _num(h["p_value"]),
                _points(c["lift"]),
                _num(c["p_value"]),
                _duration(goal["median_seconds_to_convert"].get("treatment")),
                Text(h["verdict"]),
            )
        console.print(goals)
    else:
        console.print("no conversions recorded for entries in the period")

    if data["variants"]:
        variants = Table(title="Variants: each against the step's other variants", title_justify="left")
        for name in ("step", "template", "sent", "converted", "rate", "lift", "p"):
            variants.add_column(name, justify="left" if name in ("step", "template") else "right")
        variants.add_column("verdict", overflow="fold")
        for v in data["variants"]:
            rest: dict[str, Any] = v["vs_other_variants"]
            variants.add_row(
                Text(v["step"] or v["stage"] or "-"),
                Text(v["template"]),
                f"{v['sent']:,}",
                f"{v['converted']:,}",
                _pct(v["rate"]),
                _points(rest["lift"]),
                _num(rest["p_value"]),
                Text(rest["verdict"]),
            )
        console.print(variants)

    if data["funnel"]:
        funnel = Table(title="Stage transitions in the period", title_justify="left")
        for name in ("from", "to", "transitions"):
            funnel.add_column(name, justify="right" if name == "transitions" else "left")
        for t in data["funnel"]:
            funnel.add_row(Text(t["from"] or "(none)"), Text(t["to"] or "(none)"), f"{t['transitions']:,}")
        console.print(funnel)
