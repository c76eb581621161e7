"""A playbook's report over a period: the aggregates of ``queries`` put together with ``stats``.

``build_report(conn, playbook, since, until)`` runs the few aggregate queries and returns a frozen
``Report``; ``Report.as_json()`` is the documented JSON of ``automation report --format json`` (see
docs/guides/reporting.md), which the table and the HTML page are drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from automation.errors import InputError
from automation.report import queries
from automation.report.stats import Comparison, compare

COHORTS = ("treatment", "holdout", "control")
#: Rates of a step, each over the messages sent.
RATES = ("delivered", "bounced", "opened", "clicked", "unsubscribed", "complained", "converted")


def _rate(x: int, n: int) -> float | None:
    return round(x / n, 6) if n else None


@dataclass(frozen=True)
class Goal:
    name: str
    entries: dict[str, int]  # cohort -> entries in the period (the goal's denominator)
    converted: dict[str, int]  # cohort -> conversions of those entries
    median_seconds: dict[str, float]  # cohort -> median time from entry to conversion
    vs_holdout: Comparison
    vs_control: Comparison

    def as_json(self) -> dict[str, Any]:
        return {
            "goal": self.name,
            "entries": dict(self.entries),
            "converted": dict(self.converted),
            "rates": {k: _rate(self.converted[k], self.entries[k]) for k in COHORTS},
            "median_seconds_to_convert": {k: round(v, 3) for k, v in self.median_seconds.items()},
        }


@dataclass(frozen=True)
class Variant:
    stage: str | None
    step: str | None
    template: str
    sent: int
    converted: int
    vs_rest: Comparison

    def as_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "step": self.step,
            "template": self.template,
            "sent": self.sent,
            "converted": self.converted,
            "rate": _rate(self.converted, self.sent),
            "vs_other_variants": self.vs_rest.as_json(),
        }


@dataclass(frozen=True)
class Report:
    playbook: str
    since: datetime
    until: datetime
    steps: list[queries.StepRow]
    entries: dict[tuple[str, str], int]  # (stage, cohort) -> entries
    funnel: list[tuple[str | None, str | None, int]]
    goals: list[Goal]
    variants: list[Variant]
    daily: list[tuple[str, str, str, int]]  # (day, goal, cohort, conversions)
    held_out_messages: int

    def stage_entries(self, stage: str | None) -> int:
        return sum(n for (s, _), n in self.entries.items() if s == stage)

    def cohort_entries(self) -> dict[str, int]:
        totals = dict.fromkeys(COHORTS, 0)
        for (_, cohort), n in self.entries.items():
            totals[cohort] = totals.get(cohort, 0) + n
        return totals

    def daily_rates(self, goal: str) -> list[dict[str, Any]]:
        """Per day with conversions, per cohort: conversions that day and the cumulative rate."""
        entries = next((g.entries for g in self.goals if g.name == goal), {})
        days = sorted({d for d, g, _, _ in self.daily if g == goal})
        counts = {(d, k): n for d, g, k, n in self.daily if g == goal}
        running = dict.fromkeys(COHORTS, 0)
        out = []
        for day in days:
            row: dict[str, Any] = {"day": day}
            for cohort in COHORTS:
                n = counts.get((day, cohort), 0)
                running[cohort] += n
                row[cohort] = {
                    "conversions": n,
                    "cumulative_rate": _rate(running[cohort], entries.get(cohort, 0)),
                }
            out.append(row)
        return out

    def as_json(self) -> dict[str, Any]:
        stages = sorted({s for s, _ in self.entries} | {r.stage for r in self.steps if r.stage is not None})
        return {
            "playbook": self.playbook,
            "period": {"since": self.since.isoformat(), "until": self.until.isoformat()},
            "stages": [
                {
                    "stage": stage,
                    "entered": self.stage_entries(stage),
                    "cohorts": {k: self.entries.get((stage, k), 0) for k in COHORTS},
                }
                for stage in stages
            ],
            "steps": [
                {
                    "stage": r.stage,
                    "step": r.step,
                    "template": r.template,
                    "channel": r.channel,
                    "entered": self.stage_entries(r.stage),
                    **r.counts,
                    "rates": {k: _rate(r.counts[k], r.counts["sent"]) for k in RATES},
                }
                for r in self.steps
            ],
            "goals": [g.as_json() for g in self.goals],
            "holdout": {
                "entries": self.cohort_entries(),
                "messages_held_out": self.held_out_messages,
                "goals": [
                    {
                        "goal": g.name,
                        "vs_holdout": g.vs_holdout.as_json(),
                        "vs_control": g.vs_control.as_json(),
                    }
                    for g in self.goals
                ],
            },
            "variants": [v.as_json() for v in self.variants],
            "funnel": [{"from": a, "to": b, "transitions": n} for a, b, n in self.funnel],
            "daily": {g.name: self.daily_rates(g.name) for g in self.goals},
        }


def build_report(conn: Connection, playbook: str, since: datetime, until: datetime) -> Report:
    """The report of ``playbook`` for entries, messages and transitions in ``[since, until)``.

    A playbook no table knows is an ``InputError`` (exit 2), as is a period that ends before it starts.
    """
    if until <= since:
        raise InputError(f"--until {until.isoformat()} is not after --since {since.isoformat()}")
    if not queries.known_playbook(conn, playbook):
        raise InputError(f"unknown playbook {playbook!r}: no tick, entry, message or conversion names it")
    steps = queries.steps(conn, playbook, since, until)
    entries = queries.entries(conn, playbook, since, until)
    converted = queries.conversions(conn, playbook, since, until)
    medians = queries.median_time_to_convert(conn, playbook, since, until)
    goals = [_goal(name, entries, converted, medians) for name in sorted({g for g, _ in converted})]
    return Report(
        playbook=playbook,
        since=since,
        until=until,
        steps=steps,
        entries=entries,
        funnel=queries.funnel(conn, playbook, since, until),
        goals=goals,
        variants=_variants(steps),
        daily=queries.daily_conversions(conn, playbook, since, until),
        held_out_messages=sum(r.counts["held_out"] for r in steps),
    )


def _goal(
    name: str,
    entries: dict[tuple[str, str], int],
    converted: dict[tuple[str, str], int],
    medians: dict[tuple[str, str], float],
) -> Goal:
    """A stage's goal counts that stage's entries; any other goal (the playbook's) every entry."""
    stages = {s for s, _ in entries}
    denominators = dict.fromkeys(COHORTS, 0)
    for (stage, cohort), count in entries.items():
        if name not in stages or stage == name:
            denominators[cohort] = denominators.get(cohort, 0) + count
    x = {k: converted.get((name, k), 0) for k in denominators}
    n = denominators
    return Goal(
        name=name,
        entries=n,
        converted=x,
        median_seconds={k: v for (g, k), v in medians.items() if g == name},
        vs_holdout=compare(
            x["treatment"], n["treatment"], x["holdout"], n["holdout"], "treatment", "holdout"
        ),
        vs_control=compare(
            x["treatment"], n["treatment"], x["control"], n["control"], "treatment", "control"
        ),
    )


def _variants(steps: list[queries.StepRow]) -> list[Variant]:
    """Steps with more than one template sent: each template against the others pooled."""
    by_step: dict[tuple[str | None, str | None], list[queries.StepRow]] = {}
    for row in steps:
        if row.counts["sent"]:
            by_step.setdefault((row.stage, row.step), []).append(row)
    out = []
    for (stage, step), rows in by_step.items():
        templates = {r.template for r in rows}
        if len(templates) < 2:
            continue
        sent = {t: sum(r.counts["sent"] for r in rows if r.template == t) for t in templates}
        conv = {t: sum(r.counts["converted"] for r in rows if r.template == t) for t in templates}
        total_sent, total_conv = sum(sent.values()), sum(conv.values())
        for t in sorted(templates):
            out.append(
                Variant(
                    stage,
                    step,
                    t,
                    sent[t],
                    conv[t],
                    compare(
                        conv[t], sent[t], total_conv - conv[t], total_sent - sent[t], t, "the other variants"
                    ),
                )
            )
    return out
