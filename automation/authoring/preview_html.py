"""``automation preview --html``: the preview as one self-contained HTML page. Writes nothing to the database.

The page is built from the preview's own parts: ``plan.evaluate.evaluate`` and ``plan.planner.plan``
into a ``PreviewSink`` (``Preview.as_json`` for the numbers) and ``preview.render_action`` (the channels'
template code) for the sample messages. It shows:

* the segment x stage matrix as a heat map and the funnel of customers per stage;
* what the next tick plans, per channel and day for the next 7 days: a message planned now counts on
  today, a message deferred by quiet hours or a frequency cap on the day it may go;
* why messages are held back;
* every template the playbook uses, rendered for 2-3 customers (ones the tick plans it for, else
  customers in the stage of its program, else any).

Everything is inline (CSS, bars); a Content-Security-Policy forbids loading anything, and emails are
shown in a sandboxed ``<iframe srcdoc>``. Values are escaped by Jinja2; email addresses and phone
numbers are masked.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, select_autoescape
from sqlalchemy import Connection, select

from automation.authoring.preview import Preview, PreviewSink, render_action
from automation.config import Settings
from automation.db.tables import CUSTOMER
from automation.errors import InputError
from automation.masking import mask_email, mask_phone, mask_text
from automation.messages.store import TemplateStore
from automation.plan.evaluate import evaluate
from automation.plan.planner import plan
from automation.plan.records import PlannedAction
from automation.playbook.models import WaitStep, step_channel, step_template
from automation.rules.compiled import CompiledPlaybook

DAYS = 7
SAMPLES = 3
CHANNEL_ORDER = ("email", "sms", "task", "webhook")


@dataclass
class ReportSink(PreviewSink):
    """The preview's sink, plus actions per channel and day and a few actions per template."""

    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    by_day: Counter[tuple[str, date]] = field(default_factory=Counter)
    unscheduled: Counter[str] = field(default_factory=Counter)
    samples: dict[tuple[str, str], list[PlannedAction]] = field(default_factory=dict)

    def action(self, item: PlannedAction) -> None:
        super().action(item)
        if item.status == "planned":
            self.by_day[(item.channel, item.due_at.astimezone(self.zone).date())] += 1
        elif item.until is not None:  # deferred: it may go then
            self.by_day[(item.channel, item.until.astimezone(self.zone).date())] += 1
        else:
            self.unscheduled[item.channel] += 1
        kept = self.samples.setdefault((item.channel, item.template), [])
        if len(kept) < SAMPLES and all(a.customer_id != item.customer_id for a in kept):
            kept.append(item)


@dataclass
class TemplateUse:
    channel: str
    template: str
    steps: list[tuple[str, str | None, str]]  # (stage or "recurring", touch, step name)


def templates_used(compiled: CompiledPlaybook) -> list[TemplateUse]:
    """Each (channel, template) the playbook sends, in file order, with the steps that send it."""
    pb = compiled.loaded.playbook
    uses: dict[tuple[str, str], TemplateUse] = {}

    def add(stage: str, touch: str | None, name: str, steps: list[Any]) -> None:
        for index, step in enumerate(steps):
            if isinstance(step, WaitStep):
                continue
            key = (step_channel(step), step_template(step))
            use = uses.setdefault(key, TemplateUse(key[0], key[1], []))
            use.steps.append((stage, touch, f"{name}#{index + 1}"))

    for stage, program in pb.programs.items():
        for touch, steps in program.items():
            add(stage, touch, f"{stage}/{touch}", steps)
    for rule in pb.recurring:
        add("recurring", None, f"recurring/{rule.name}", rule.steps)
    return list(uses.values())


def _sample_customers(
    conn: Connection, compiled: CompiledPlaybook, sink: ReportSink, use: TemplateUse
) -> list[tuple[dict[str, Any], PlannedAction]]:
    """2-3 customers and the action to render for them: planned ones first, then by stage, then any."""
    picked: list[tuple[str, PlannedAction]] = [
        (a.customer_id, a) for a in sink.samples.get((use.channel, use.template), [])
    ]
    stage, touch, step = use.steps[0]
    if len(picked) < SAMPLES:
        columns = (
            CUSTOMER.c.id,
            compiled.segment.label("segment"),
            compiled.touch.label("touch"),
            compiled.stage.label("stage"),
        )
        queries = []
        if stage != "recurring":
            queries.append(select(*columns).where(compiled.stage == stage, compiled.touch == touch))
            queries.append(select(*columns).where(compiled.stage == stage))
        queries.append(select(*columns))
        for query in queries:
            have = [cid for cid, _ in picked]
            if have:
                query = query.where(CUSTOMER.c.id.not_in(have))
            for row in conn.execute(query.order_by(CUSTOMER.c.id).limit(SAMPLES - len(picked))):
                action = PlannedAction(
                    playbook=compiled.name,
                    customer_id=row.id,
                    segment=row.segment,
                    touch=row.touch,
                    stage=row.stage,
                    step=step,
                    channel=use.channel,
                    template=use.template,
                    due_at=compiled.now,
                    idempotency_key="",
                    priority=0,
                    status="planned",
                )
                picked.append((row.id, action))
            if len(picked) >= SAMPLES:
                break
    if not picked:
        return []
    ids = [cid for cid, _ in picked]
    rows = {r["id"]: dict(r) for r in conn.execute(select(CUSTOMER).where(CUSTOMER.c.id.in_(ids))).mappings()}
    return [(rows[cid], action) for cid, action in picked if cid in rows]


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _sample(
    customer: dict[str, Any],
    action: PlannedAction,
    compiled: CompiledPlaybook,
    templates: TemplateStore,
    settings: Settings,
    planned: bool,
) -> dict[str, Any]:
    rendered = render_action(action, customer, compiled, templates, settings)
    message = _masked(rendered.get("message") or {})
    if "json" in message:
        message["pretty"] = json.dumps(message["json"], indent=2, ensure_ascii=False, default=str)
    return {
        "customer": customer["id"],
        "email": mask_email(customer.get("email")),
        "phone": mask_phone(customer.get("phone")),
        "segment": action.segment,
        "touch": action.touch,
        "stage": action.stage,
        "step": action.step,
        "planned": planned,
        "status": action.status if planned else None,
        "reason": mask_text(action.reason) if planned and action.reason else None,
        "message": message,
        "error": mask_text(rendered["error"]) if "error" in rendered else None,
    }


def _heat(n: int, top: int) -> str:
    """Background and text colour for a heat-map cell."""
    share = n / top if top else 0.0
    alpha = 0.0 if n == 0 else 0.08 + 0.82 * share
    text = "#ffffff" if alpha > 0.55 else "#1f2933"
    return f"background-color:rgba(47,111,79,{alpha:.3f});color:{text}"


def _pct(n: int, top: int) -> str:
    return f"{(100.0 * n / top) if top else 0.0:.1f}%"


def build_report(
    conn: Connection,
    compiled: CompiledPlaybook,
    templates: TemplateStore,
    settings: Settings,
    *,
    limit: int = 20,
) -> str:
    """The HTML page for ``compiled`` at its ``now``; nothing is written to the database."""
    pb = compiled.loaded.playbook
    zone = ZoneInfo(pb.timezone)
    counts = evaluate(conn, compiled)
    sink = ReportSink(limit=limit, zone=zone)
    plan(conn, compiled, sink)
    preview = Preview(compiled.name, compiled.now, counts, sink, compiled)
    data = preview.as_json()

    stage_names = [s.name for s in pb.stages] + ["(none)"]
    matrix_top = max((n for row in data["matrix"].values() for n in row.values()), default=0)
    matrix = [
        {
            "segment": segment,
            "touch": data["segments"].get(segment, {}).get("touch"),
            "cells": [
                {"stage": s, "n": row.get(s, 0), "style": _heat(row.get(s, 0), matrix_top)}
                for s in stage_names
            ],
            "total": sum(row.values()),
        }
        for segment, row in data["matrix"].items()
    ]
    funnel_top = max(data["stages"].values(), default=0)
    funnel = [
        {"stage": s, "n": data["stages"].get(s, 0), "width": _pct(data["stages"].get(s, 0), funnel_top)}
        for s in stage_names
    ]

    today = compiled.now.astimezone(zone).date()
    days = [today + timedelta(days=i) for i in range(DAYS)]
    channels = sorted(
        {c for c, _ in sink.by_day} | set(sink.unscheduled),
        key=lambda c: (CHANNEL_ORDER.index(c) if c in CHANNEL_ORDER else 99, c),
    )
    day_top = max(sink.by_day.values(), default=0)
    schedule = [
        {
            "channel": channel,
            "days": [
                {"n": sink.by_day[(channel, d)], "width": _pct(sink.by_day[(channel, d)], day_top)}
                for d in days
            ],
            "later": sum(n for (c, d), n in sink.by_day.items() if c == channel and d > days[-1]),
            "unscheduled": sink.unscheduled[channel],
        }
        for channel in channels
    ]
    day_totals = [sum(sink.by_day[(c, d)] for c in channels) for d in days]

    reasons_top = max(sink.reasons.values(), default=0)
    reasons = [
        {"reason": mask_text(reason), "n": n, "width": _pct(n, reasons_top)}
        for reason, n in sink.reasons.most_common()
    ]

    samples = []
    for use in templates_used(compiled):
        planned_ids = {a.customer_id for a in sink.samples.get((use.channel, use.template), [])}
        samples.append(
            {
                "channel": use.channel,
                "template": use.template,
                "steps": [step for _, _, step in use.steps],
                "renders": [
                    _sample(customer, action, compiled, templates, settings, customer["id"] in planned_ids)
                    for customer, action in _sample_customers(conn, compiled, sink, use)
                ],
            }
        )

    actions = [
        {
            **a.as_dict(),
            "assignee": mask_email(a.assignee) if a.assignee else None,
            "reason": mask_text(a.reason) if a.reason else None,
        }
        for a in sink.actions
    ]
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    page = env.from_string(PAGE).render(
        data=data,
        description=pb.description,
        timezone=pb.timezone,
        stage_names=stage_names,
        matrix=matrix,
        funnel=funnel,
        days=days,
        schedule=schedule,
        day_totals=day_totals,
        reasons=reasons,
        samples=samples,
        actions=actions,
    )
    return page


def write_report(path: Path, html: str) -> Path:
    """Write the page; InputError (exit 2) when the path cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the HTML report to {path}: {exc.strerror or exc}") from exc
    return path


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src about:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Preview of {{ data.playbook }} at {{ data.at }}</title>
<style>
body { font-family: Helvetica, Arial, sans-serif; color: #1f2933; margin: 0; background: #f4f5f7; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px 0; }
h2 { font-size: 18px; margin: 0 0 12px 0; }
h3 { font-size: 15px; margin: 0 0 8px 0; }
section { background: #fff; border-radius: 8px; padding: 20px; margin: 0 0 20px 0;
          box-shadow: 0 1px 2px rgba(0,0,0,.06); }
.muted { color: #7b8794; font-size: 13px; }
.kpis { display: flex; gap: 12px; flex-wrap: wrap; margin: 12px 0 20px 0; }
.kpi { background: #fff; border-radius: 8px; padding: 12px 16px; min-width: 140px; }
.kpi b { display: block; font-size: 22px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 6px 8px; text-align: right; border-bottom: 1px solid #e4e7eb; }
th:first-child, td:first-child { text-align: left; }
.heatmap td.cell { text-align: center; font-weight: bold; min-width: 70px; }
.bar-row { display: grid; grid-template-columns: 160px 1fr 70px; align-items: center; gap: 8px;
           margin: 4px 0; font-size: 13px; }
.bar-track { background: #eef0f3; border-radius: 4px; height: 20px; }
.bar { background: #2f6f4f; height: 20px; border-radius: 4px; min-width: 2px; }
.bar.held { background: #c9822b; }
.day-cell .mini { background: #eef0f3; height: 6px; border-radius: 3px; margin-top: 3px; }
.day-cell .mini div { background: #3e7cb1; height: 6px; border-radius: 3px; }
.template { border-top: 1px solid #e4e7eb; padding: 14px 0; }
.renders { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 12px; }
.render { border: 1px solid #e4e7eb; border-radius: 6px; padding: 10px; background: #fafbfc; }
.render .who { font-size: 12px; color: #52606d; margin-bottom: 6px; }
.subject { font-weight: bold; margin: 4px 0 6px 0; }
iframe.email-html { width: 100%; height: 460px; border: 1px solid #d9dde2; background: #fff; }
pre { white-space: pre-wrap; word-break: break-word; font-size: 12px; background: #fff;
      border: 1px solid #e4e7eb; padding: 8px; margin: 0; }
.sms-body { background: #e7f3ec; border-radius: 12px; padding: 10px 12px; white-space: pre-wrap; }
.tag { display: inline-block; font-size: 11px; padding: 1px 6px; border-radius: 8px;
       background: #e4e7eb; margin-right: 4px; }
.tag.held { background: #f8e3c8; }
.error { color: #b42318; }
</style>
</head>
<body>
<main>
<header id="summary">
<h1>{{ data.playbook }}</h1>
<div class="muted">{{ description }}</div>
<div class="muted">Evaluated at {{ data.at }}; days below are in {{ timezone }}.
  Nothing was written to the database.</div>
<div class="kpis">
  <div class="kpi">customers<b>{{ "{:,}".format(data.customers) }}</b></div>
  <div class="kpi">change segment or stage<b>{{ "{:,}".format(data.transitions) }}</b></div>
  <div class="kpi">actions next tick<b>{{ "{:,}".format(data.summary.actions) }}</b></div>
  <div class="kpi">planned<b>{{ "{:,}".format(data.summary.planned) }}</b></div>
  <div class="kpi">held back<b>{{ "{:,}".format(data.summary.suppressed) }}</b></div>
</div>
</header>

<section id="matrix">
<h2>Segment &times; stage</h2>
<table class="heatmap">
<thead><tr><th>segment</th>{% for s in stage_names %}<th>{{ s }}</th>{% endfor %}<th>total</th></tr></thead>
<tbody>
{% for row in matrix %}
<tr data-segment="{{ row.segment }}"><td>{{ row.segment }}{% if row.touch %}
  <span class="tag">{{ row.touch }} touch</span>{% endif %}</td>
{% for c in row.cells %}
<td class="cell" data-stage="{{ c.stage }}" style="{{ c.style }}">{{ c.n }}</td>
{% endfor %}
<td><b>{{ row.total }}</b></td></tr>
{% endfor %}
<tr><td><b>total</b></td>{% for s in stage_names %}<td><b>{{ data.stages.get(s, 0) }}</b></td>{% endfor %}
<td><b>{{ data.customers }}</b></td></tr>
</tbody>
</table>
</section>

<section id="funnel">
<h2>Customers per stage</h2>
{% for f in funnel %}
<div class="bar-row funnel-stage" data-stage="{{ f.stage }}">
  <span>{{ f.stage }}</span>
  <div class="bar-track"><div class="bar" style="width:{{ f.width }}"></div></div>
  <span class="count">{{ f.n }}</span>
</div>
{% endfor %}
</section>

<section id="plan">
<h2>What the next tick plans, per channel and day</h2>
<p class="muted">Messages planned now count on today; messages deferred by quiet hours or a frequency cap
count on the day they may go. Later steps of a program are planned by later ticks and are not shown.</p>
<table class="per-channel">
<thead><tr><th>channel</th>{% for d in days %}<th>{{ d.strftime("%a %d %b") }}</th>{% endfor %}
<th>later</th><th>held, not scheduled</th></tr></thead>
<tbody>
{% for row in schedule %}
<tr class="channel-row" data-channel="{{ row.channel }}"><td>{{ row.channel }}</td>
{% for c in row.days %}
<td class="day-cell">{{ c.n }}<div class="mini"><div style="width:{{ c.width }}"></div></div></td>
{% endfor %}
<td>{{ row.later }}</td><td>{{ row.unscheduled }}</td></tr>
{% else %}
<tr><td colspan="{{ days|length + 3 }}">The next tick plans nothing.</td></tr>
{% endfor %}
<tr><td><b>total</b></td>{% for n in day_totals %}<td><b>{{ n }}</b></td>{% endfor %}<td></td><td></td></tr>
</tbody>
</table>
</section>

<section id="reasons">
<h2>Why messages are held back</h2>
{% for r in reasons %}
<div class="bar-row reason" data-reason="{{ r.reason }}">
  <span>{{ r.reason }}</span>
  <div class="bar-track"><div class="bar held" style="width:{{ r.width }}"></div></div>
  <span class="count">{{ r.n }}</span>
</div>
{% else %}
<p class="muted">Nothing is held back.</p>
{% endfor %}
</section>

<section id="templates">
<h2>Templates, rendered for sample customers</h2>
<p class="muted">Customers the next tick plans the message for, else customers in the stage of the program,
else any. Addresses are masked.</p>
{% for t in samples %}
<div class="template" data-template="{{ t.template }}" data-channel="{{ t.channel }}">
<h3>{{ t.template }} <span class="tag">{{ t.channel }}</span></h3>
<div class="muted">sent by {{ t.steps|join(", ") }}</div>
<div class="renders">
{% for r in t.renders %}
<div class="render {{ t.channel }}">
  <div class="who">customer {{ r.customer }} ({{ r.email }}, {{ r.phone }}) &middot;
    {{ r.segment or "-" }} / {{ r.stage or "-" }} / {{ r.touch or "-" }}
    {% if r.planned %}<span class="tag{% if r.status != 'planned' %} held{% endif %}">next tick:
      {{ r.status }}{% if r.reason %}: {{ r.reason }}{% endif %}</span>
    {% else %}<span class="tag">sample</span>{% endif %}
  </div>
  {% if r.error %}<pre class="error">{{ r.error }}</pre>
  {% elif t.channel == "email" %}
  <div class="subject">{{ r.message.subject }}</div>
  <iframe class="email-html" sandbox="" title="{{ r.message.subject }}"
          srcdoc="{{ r.message.html }}"></iframe>
  {% elif t.channel == "sms" %}
  <div class="sms-body">{{ r.message.body }}</div>
  <div class="muted sms-meta">{{ r.message.encoding }}, {{ r.message.segments }} segment(s),
    {{ r.message.body|length }} characters</div>
  {% elif t.channel == "task" %}
  <div class="subject task-title">{{ r.message.title }}</div>
  <pre class="task-body">{{ r.message.body }}</pre>
  {% else %}
  <pre class="webhook-json">{{ r.message.pretty }}</pre>
  {% endif %}
</div>
{% else %}
<p class="muted">No customers in the database to render it for.</p>
{% endfor %}
</div>
</div>
{% endfor %}
</section>

<section id="actions">
<h2>First {{ actions|length }} of {{ data.summary.actions }} actions</h2>
<table>
<thead><tr><th>customer</th><th>stage</th><th>segment</th><th>touch</th><th>step</th><th>channel</th>
<th>template</th><th>due</th><th>status</th></tr></thead>
<tbody>
{% for a in actions %}
<tr><td>{{ a.customer_id }}</td><td>{{ a.stage or "-" }}</td><td>{{ a.segment or "-" }}</td>
<td>{{ a.touch or "-" }}</td><td>{{ a.step }}</td><td>{{ a.channel }}</td><td>{{ a.template }}</td>
<td>{{ a.due_at[:16].replace("T", " ") }}</td>
<td>{{ a.status }}{% if a.reason %}: {{ a.reason }}{% endif %}</td></tr>
{% endfor %}
</tbody>
</table>
</section>
</main>
</body>
</html>
"""
