"""``automation report --html``: the report as one self-contained page with inline SVG figures.

Drawn from ``Report.as_json()``: a summary, the steps table, the funnel of stage transitions (bars),
per goal the cumulative conversion rate per day of treatment and holdout (lines), and the conversion
rate of each variant (bars). Nothing is loaded from elsewhere: the CSS and the figures are inline and a
Content-Security-Policy forbids every other resource. Every text is escaped.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from automation.report.build import COHORTS, Report

_COLORS = {"treatment": "#2563eb", "holdout": "#f59e0b", "control": "#6b7280"}
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#111}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 6px}
td.n{text-align:right}th{background:#f5f5f5}
svg text{font:12px system-ui,sans-serif}.verdict{color:#333;font-style:italic}
"""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _funnel_svg(funnel: list[dict[str, Any]]) -> str:
    if not funnel:
        return '<p class="empty">no stage transitions in the period</p>'
    top = max(t["transitions"] for t in funnel)
    rows = []
    for i, t in enumerate(funnel):
        label = f"{t['from'] or '(none)'} \u2192 {t['to'] or '(none)'}"
        width = max(1, round(460 * t["transitions"] / top))
        y = i * 26
        rows.append(
            f'<g class="funnel-bar" data-from="{escape(t["from"] or "")}" data-to="{escape(t["to"] or "")}">'
            f'<text x="0" y="{y + 16}">{escape(label)}</text>'
            f'<rect x="220" y="{y + 4}" width="{width}" height="18" fill="#2563eb"></rect>'
            f'<text x="{226 + width}" y="{y + 17}">{t["transitions"]:,}</text></g>'
        )
    return (
        f'<svg id="funnel-chart" xmlns="http://www.w3.org/2000/svg" width="780" '
        f'height="{len(funnel) * 26 + 8}" role="img" aria-label="stage transitions">{"".join(rows)}</svg>'
    )


def _daily_svg(goal: str, days: list[dict[str, Any]]) -> str:
    if not days:
        return f'<p class="empty">no conversions per day for {escape(goal)}</p>'
    width, height, left, bottom = 720, 220, 50, 30
    rates = [d[k]["cumulative_rate"] or 0.0 for d in days for k in ("treatment", "holdout")]
    top = max(rates) or 1.0
    step = (width - left - 10) / max(1, len(days) - 1)

    def point(i: int, rate: float) -> str:
        return f"{left + i * step:.1f},{height - bottom - (height - bottom - 10) * rate / top:.1f}"

    lines = []
    for cohort in ("treatment", "holdout"):
        points = " ".join(point(i, d[cohort]["cumulative_rate"] or 0.0) for i, d in enumerate(days))
        lines.append(
            f'<polyline class="daily-line" data-cohort="{cohort}" points="{points}" fill="none" '
            f'stroke="{_COLORS[cohort]}" stroke-width="2"></polyline>'
        )
    axis = (
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" stroke="#999"></line>'
        f'<text x="0" y="14">{_pct(top)}</text><text x="0" y="{height - bottom}">0%</text>'
        f'<text x="{left}" y="{height - 8}">{escape(days[0]["day"])}</text>'
        f'<text x="{width - 80}" y="{height - 8}">{escape(days[-1]["day"])}</text>'
        f'<text x="{left + 10}" y="14" fill="{_COLORS["treatment"]}">treatment</text>'
        f'<text x="{left + 90}" y="14" fill="{_COLORS["holdout"]}">holdout</text>'
    )
    return (
        f'<svg class="daily-chart" data-goal="{escape(goal)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" role="img" aria-label="cumulative conversion rate per day">'
        f"{axis}{''.join(lines)}</svg>"
    )


def _variants_svg(variants: list[dict[str, Any]]) -> str:
    if not variants:
        return '<p class="empty">no step sent more than one variant in the period</p>'
    top = max((v["rate"] or 0.0) for v in variants) or 1.0
    rows = []
    for i, v in enumerate(variants):
        width = max(1, round(400 * (v["rate"] or 0.0) / top))
        y = i * 26
        label = f"{v['step'] or '-'} {v['template']}"
        rows.append(
            f'<g class="variant-bar" data-template="{escape(v["template"])}">'
            f'<text x="0" y="{y + 16}">{escape(label)}</text>'
            f'<rect x="260" y="{y + 4}" width="{width}" height="18" fill="#10b981"></rect>'
            f'<text x="{266 + width}" y="{y + 17}">{_pct(v["rate"])} of {v["sent"]:,}</text></g>'
        )
    return (
        f'<svg id="variants-chart" xmlns="http://www.w3.org/2000/svg" width="780" '
        f'height="{len(variants) * 26 + 8}" role="img" aria-label="conversion rate per variant">'
        f"{''.join(rows)}</svg>"
    )


def _steps_table(steps: list[dict[str, Any]]) -> str:
    head = (
        "stage",
        "step",
        "template",
        "channel",
        "entered",
        "planned",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "unsubscribed",
        "converted",
    )
    cells = []
    for s in steps:
        cells.append(
            "<tr>"
            + "".join(f"<td>{escape(str(s[k] or '-'))}</td>" for k in head[:4])
            + "".join(f'<td class="n">{s[k]:,}</td>' for k in head[4:])
            + "</tr>"
        )
    return (
        '<table id="steps"><tr>'
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>"
        + "".join(cells)
        + "</table>"
    )


def _goals_table(data: dict[str, Any]) -> str:
    rows = []
    for goal, cmp in zip(data["goals"], data["holdout"]["goals"], strict=True):
        h = cmp["vs_holdout"]
        low, high = h["ci95"]
        ci = f"[{_pct(low)}, {_pct(high)}]" if low is not None else "-"
        p = "-" if h["p_value"] is None else f"{h['p_value']:.4f}"
        rows.append(
            f"<tr><td>{escape(goal['goal'])}</td>"
            + "".join(
                f'<td class="n">{goal["converted"][k]:,}/{goal["entries"][k]:,} '
                f"({_pct(goal['rates'][k])})</td>"
                for k in COHORTS
            )
            + f'<td class="n">{_pct(h["lift"])}</td><td class="n">{ci}</td><td class="n">{p}</td>'
            f'<td class="verdict">{escape(h["verdict"])}</td></tr>'
        )
    head = "".join(f"<th>{h}</th>" for h in ("goal", *COHORTS, "lift vs holdout", "95% CI", "p", "verdict"))
    return f'<table id="goals"><tr>{head}</tr>{"".join(rows)}</table>'


def render_html(report: Report) -> str:
    """The whole page as text."""
    data = report.as_json()
    title = f"{data['playbook']}: report {data['period']['since']} to {data['period']['until']}"
    daily = (
        "".join(
            f"<h3>{escape(g['goal'])}</h3>{_daily_svg(g['goal'], data['daily'][g['goal']])}"
            for g in data["goals"]
        )
        or '<p class="empty">no conversions recorded for entries in the period</p>'
    )
    entries = data["holdout"]["entries"]
    summary = ", ".join(f"{k}: {entries.get(k, 0):,}" for k in COHORTS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p id="summary">Program entries in the period, by cohort: {escape(summary)}; '
        f"messages held out: {data['holdout']['messages_held_out']:,}.</p>"
        f"<h2>Steps</h2>{_steps_table(data['steps'])}"
        f"<h2>Goals</h2>{_goals_table(data)}"
        '<section id="daily"><h2>Cumulative conversion rate per day: treatment and holdout</h2>'
        f"{daily}</section>"
        f'<section id="funnel"><h2>Stage transitions</h2>{_funnel_svg(data["funnel"])}</section>'
        f'<section id="variants"><h2>Variants</h2>{_variants_svg(data["variants"])}</section>'
        "</body></html>\n"
    )


def write_html(report: Report, path: Path) -> Path:
    """Write the page to ``path`` (folders made as needed); returns the resolved path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path.resolve()
