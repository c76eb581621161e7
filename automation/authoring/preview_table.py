"""Terminal output for ``preview`` (rich tables); JSON output is ``Preview.as_json``."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from automation.authoring.preview import Preview
from automation.masking import mask_email, mask_phone


def print_preview(console: Console, preview: Preview) -> None:
    data = preview.as_json()
    pb = preview.compiled.loaded.playbook
    console.print(
        f"[bold]{data['playbook']}[/] at {data['at']}: {data['customers']:,} customers, "
        f"{data['transitions']:,} would change segment or stage, "
        f"{data['summary']['actions']:,} actions ({data['summary']['planned']:,} planned, "
        f"{data['summary']['suppressed']:,} held back)"
    )

    segments = Table(title="Segments", title_justify="left")
    segments.add_column("segment")
    segments.add_column("touch")
    segments.add_column("customers", justify="right")
    for name, info in data["segments"].items():
        segments.add_row(name, info["touch"] or "-", f"{info['customers']:,}")

    stage_names = [s.name for s in pb.stages] + ["(none)"]
    matrix = Table(title="Segment x stage", title_justify="left")
    matrix.add_column("segment")
    for stage in stage_names:
        matrix.add_column(stage, justify="right")
    matrix.add_column("total", justify="right", style="bold")
    for segment, row in data["matrix"].items():
        matrix.add_row(segment, *(f"{row.get(s, 0):,}" for s in stage_names), f"{sum(row.values()):,}")
    matrix.add_row(
        "total",
        *(f"{data['stages'].get(s, 0):,}" for s in stage_names),
        f"{data['customers']:,}",
        style="bold",
    )
    console.print(segments)
    console.print(matrix)

    summary = Table(title="Actions the next tick would plan", title_justify="left")
    summary.add_column("channel")
    summary.add_column("planned", justify="right")
    summary.add_column("held back", justify="right")
    for channel, counts in data["summary"]["by_channel"].items():
        summary.add_row(channel, f"{counts['planned']:,}", f"{counts['suppressed']:,}")
    console.print(summary)
    if data["summary"]["reasons"]:
        reasons = Table(title="Why actions are held back", title_justify="left")
        reasons.add_column("reason")
        reasons.add_column("actions", justify="right")
        for reason, n in data["summary"]["reasons"].items():
            reasons.add_row(reason, f"{n:,}")
        console.print(reasons)

    if preview.customer is not None:
        print_customer(console, preview)
    actions = Table(
        title=f"First {len(data['actions'])} of {data['summary']['actions']:,} actions", title_justify="left"
    )
    for column in ("customer", "stage", "segment", "touch", "step", "channel", "template", "due", "status"):
        actions.add_column(column)
    for action in data["actions"]:
        status = action["status"] if not action["reason"] else f"{action['status']}: {action['reason']}"
        style = None if action["status"] == "planned" else "yellow"
        actions.add_row(
            action["customer_id"],
            action["stage"] or "-",
            action["segment"] or "-",
            action["touch"] or "-",
            action["step"],
            action["channel"],
            action["template"],
            action["due_at"][:16].replace("T", " "),
            status,
            style=style,
        )
    console.print(actions)


def print_customer(console: Console, preview: Preview) -> None:
    customer = preview.customer or {}
    console.print(
        f"\n[bold]Customer {customer.get('id')}[/]: {mask_email(customer.get('email'))}, "
        f"{mask_phone(customer.get('phone'))}, time zone {customer.get('timezone')}"
    )
    rules = Table(title="Rules, in order (first match wins)", title_justify="left")
    rules.add_column("kind")
    rules.add_column("name")
    rules.add_column("rule")
    rules.add_column("result")
    for item in preview.trace:
        result = "not evaluated" if item.matched is None else ("true" if item.matched else "false")
        if item.chosen:
            result = "[bold green]match[/]"
        rules.add_row(item.kind, item.name, item.rule or "(everyone left)", result)
    console.print(rules)
    for rendered in preview.rendered:
        console.print(f"\n[bold]{rendered['step']}[/] {rendered['channel']} {rendered['template']}")
        if "error" in rendered:
            console.print(f"[red]{rendered['error']}[/]", markup=True)
            continue
        console.print(_message_text(rendered["message"]), markup=False, highlight=False)


def _message_text(message: dict[str, Any]) -> str:
    channel = message.get("channel")
    if channel == "email":
        return f"Subject: {message.get('subject')}\n\n{message.get('text')}"
    if channel == "sms":
        return f"{message.get('body')}\n[{message.get('encoding')}, {message.get('segments')} segment(s)]"
    if channel == "task":
        return f"{message.get('title')}\n{message.get('body')}"
    return json.dumps(message.get("json"), indent=2, ensure_ascii=False)
