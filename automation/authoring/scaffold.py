"""``automation init DIR``: a new project with a small lifecycle playbook, its templates and sample data.

Everything is written from the strings below (the repository's ``templates/`` folder is not part of the
installed package). The result validates and lints cleanly, so a new user starts from a working example.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from automation.errors import InputError
from automation.ingest.sample_data import SampleSummary, generate_sample_data
from automation.playbook.schema import schema_json

PLAYBOOK = """\
# yaml-language-server: $schema=../playbook.schema.json
# A small lifecycle playbook. Reference: `automation schema`, and the README of the automation package.
name: {name}
description: New, active and loyal customers; people handle key accounts, email and SMS everyone else
schedule: every 15 minutes           # or: cron "*/15 * * * *"
quiet_hours: "21:00-08:00"           # in each customer's own time zone
frequency_cap: 3 per 7d              # email and SMS per customer from this playbook

segments:                            # first match wins; the last one (no `when`) takes everyone left
  - name: key_accounts
    when: clv >= 5000 or plan == "enterprise"
    touch: high
  - name: everyone_else
    touch: none

stages:                              # first match wins, in file order
  - name: loyal
    when: orders_count >= 5
  - name: active
    when: orders_count >= 1
  - name: new
    when: orders_count == 0 and days_since(signed_up_at) <= 30

programs:                            # started when a customer enters a stage, by the segment's touch
  new:
    none:
      - email: welcome
      - wait: 3d
      - email: first_steps
        unless: events("activated", within="3d") > 0
    high:
      - task: kickoff_call
        due: 2d
  active:
    none:
      - email: thank_you
      - wait: 14d
      - sms: feedback
        when: nps is null
    high:
      - task: check_in
        due: 7d
  loyal:
    none:
      - email: vip
    high:
      - task: check_in
        due: 3d
"""

LAYOUT = """\
{#- Every email extends this layout: it adds the footer with the unsubscribe link to both versions.
    A child fills: subject, text_body, html_body. -#}
{% set brand = "Example Shop" %}
{% set site_url = "https://www.example.com" %}
{% block text %}
{% block text_body %}{% endblock %}

--
{{ brand }} | {{ site_url }}
Unsubscribe: {{ unsubscribe_url }}
{% endblock %}
{% block html %}
<!doctype html>
<html><body style="font-family:Arial,sans-serif;">
{% block html_body %}{% endblock %}
<p style="font-size:12px;color:#666;">{{ brand }} | <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
{% endblock %}
"""

EMAILS = {
    "welcome": (
        "Welcome to Example Shop{% if customer.first_name %}, {{ customer.first_name }}{% endif %}!",
        "Hi {{ name }},\n\nWelcome! Your account is ready. Take the two-minute tour: {{ site_url }}/start",
        "<p>Hi {{ name }},</p>\n<p>Welcome! Your account is ready. "
        '<a href="{{ site_url }}/start">Take the two-minute tour</a>.</p>',
    ),
    "first_steps": (
        "Three quick ways to get started",
        "Hi {{ name }},\n\n1. Complete your profile\n2. Save your favourites\n3. Place your first order\n\n"
        "{{ site_url }}/getting-started",
        "<p>Hi {{ name }},</p>\n<ol><li>Complete your profile</li><li>Save your favourites</li>"
        "<li>Place your first order</li></ol>\n"
        '<p><a href="{{ site_url }}/getting-started">Get started</a></p>',
    ),
    "thank_you": (
        "Thank you for your order",
        "Hi {{ name }},\n\nThank you for shopping with us"
        "{% if customer.orders_count > 1 %} again{% endif %}. "
        "Here is 10% off your next order with the code THANKS10.",
        "<p>Hi {{ name }},</p>\n<p>Thank you for shopping with us{% if customer.orders_count > 1 %} again"
        "{% endif %}. Here is <strong>10% off</strong> your next order with the code THANKS10.</p>",
    ),
    "vip": (
        "You're a VIP now",
        "Hi {{ name }},\n\n{{ customer.orders_count }} orders: thank you! From today you get free express "
        "shipping and early access to sales.",
        "<p>Hi {{ name }},</p>\n<p>{{ customer.orders_count }} orders: thank you! From today you get free "
        "express shipping and early access to sales.</p>",
    ),
}

EMAIL = """\
{{% extends "layout.email.j2" %}}
{{% set name = customer.first_name|fallback("there") %}}
{{% block subject %}}{subject}{{% endblock %}}
{{% block text_body %}}
{text}
{{% endblock %}}
{{% block html_body %}}
{html}
{{% endblock %}}
"""

SMS = """\
{#- Keep to plain characters (no emoji, straight quotes) so one SMS holds 160 characters. -#}
Hi {{ customer.first_name|fallback("there") }}, how likely are you to recommend Example Shop? \
Reply 0-10. Reply STOP to opt out.
"""

TASK = """\
{{% set who = [customer.first_name, customer.last_name]|select|join(" ")|fallback(customer.email)\
|fallback(customer.id) %}}
{{% block title %}}{title}{{% endblock %}}
{{% block body %}}
{body}

- Customer: {{{{ who }}}} ({{{{ customer.id }}}})
- Email: {{{{ customer.email|fallback("none on file") }}}}
- Plan: {{{{ customer.plan|fallback("none") }}}}
- Lifetime value: {{{{ customer.clv|number(2, locale="en")|fallback("unknown") }}}}
- Orders: {{{{ customer.orders_count }}}}
{{% endblock %}}
"""

TASKS = {
    "kickoff_call": (
        "Kickoff call with {{ who }}",
        "{{ who }} is a new key account. Book a 30-minute kickoff call this week: their goals, their "
        "team, and one next step.",
    ),
    "check_in": (
        "Check in with {{ who }}",
        "Time for a personal check-in with {{ who }}: how are things going, and is anything in the way?",
    ),
}

README = """\
# {name}

A campaign automation project created by `automation init`.

- `playbooks/{name}.yaml`: segments, lifecycle stages and the program of each stage
- `templates/`: one Jinja2 file per message (`<name>.<channel>.j2`); every email extends `layout.email.j2`
{test_item}- `sample/`: {customers} synthetic customers and their events, to try the playbook
- `playbook.schema.json`: the JSON Schema of playbooks, for editor completion (see the first line of the
  playbook)

## Next steps

Run these in this folder:

```sh
automation validate                       # check the playbook, its rules and templates
automation lint                           # likely mistakes: unreachable stages, missing opt-out, ...
automation db upgrade                     # create the database (automation.db; see --database-url)
automation import customers sample/customers.csv
automation import events sample/events.jsonl
automation preview playbooks/{name}.yaml  # what the next tick would do, without sending anything
{test_line}automation tick                           # record stages and queue messages
automation dispatch --once                # send what is due (configure channels first)
```

Then replace the sample data with your own customers and events, and edit the playbook and templates.
"""

TEST_FILE = """\
# Journeys through {playbook_file} on a simulated clock: run them with `automation test`.
# Times like +3d are relative to `start`; `automation validate` and `lint` skip *.test.yaml files.
playbook: {playbook_file}
start: 2026-03-02T10:00:00Z          # a Monday, 11:00 in Berlin: outside quiet hours (21:00-08:00)
step: 6h

customers:
  # new, everyone_else (touch none): welcome, then first_steps after 3 days
  - {id: ada, email: ada@example.com, timezone: Europe/Berlin, orders_count: 0, clv: 50, signed_up_at: -1h}
  # the same, but activated within 3 days: first_steps is skipped
  - {id: bea, email: bea@example.com, timezone: Europe/Berlin, orders_count: 0, clv: 50, signed_up_at: -1h}
  # new key account (touch high): a kickoff call task for the owner, no email
  - {id: cal, email: cal@example.com, timezone: Europe/Berlin, owner_email: owner@example.com,
     plan: enterprise, orders_count: 0, signed_up_at: -2h}
  # active: thank_you, then the feedback SMS after 14 days (no NPS answer yet)
  - {id: dee, email: dee@example.com, phone: "+4915112345678", timezone: Europe/Berlin,
     orders_count: 1, clv: 80, signed_up_at: -60d}
  # loyal: the VIP email
  - {id: eli, email: eli@example.com, timezone: Europe/Berlin, orders_count: 6, clv: 900, signed_up_at: -400d}

events:
  - {customer: bea, name: activated, at: +2d}

expect:
  - at: +0h
    customer: ada
    segment: everyone_else
    stage: new
    sent: [{channel: email, template: welcome}]
  - at: +3d
    customer: ada
    sent: [{channel: email, template: first_steps}]

  - at: +0h
    customer: bea
    sent: [{channel: email, template: welcome}]
  - at: +4d
    customer: bea
    sent: []

  - at: +0h
    customer: cal
    segment: key_accounts
    stage: new
    sent: [{channel: task, template: kickoff_call}]

  - at: +0h
    customer: dee
    stage: active
    sent: [{channel: email, template: thank_you}]
  - at: +14d
    customer: dee
    sent: [{channel: sms, template: feedback}]

  - at: +0h
    customer: eli
    stage: loyal
    sent: [{channel: email, template: vip}]
"""

TEST_ITEM = "- `playbooks/{name}.test.yaml`: journeys of a few customers, checked by `automation test`\n"
TEST_LINE = "automation test                           # run the journeys in playbooks/*.test.yaml\n"

GITIGNORE = """\
automation.db
outbox/
"""


@dataclass(frozen=True)
class Scaffold:
    root: Path
    playbook: Path
    files: list[Path]
    sample: SampleSummary


def template_files() -> dict[str, str]:
    """File name -> text of every template the scaffold playbook uses (and the email layout)."""
    files = {"layout.email.j2": LAYOUT, "feedback.sms.j2": SMS}
    for name, (subject, text, html) in EMAILS.items():
        files[f"{name}.email.j2"] = EMAIL.format(subject=subject, text=text, html=html)
    for name, (title, body) in TASKS.items():
        files[f"{name}.task.j2"] = TASK.format(title=title, body=body)
    return files


def init_project(
    root: Path,
    name: str = "lifecycle",
    customers: int = 200,
    seed: int = 42,
    now: datetime | None = None,
    *,
    with_tests: bool = False,
) -> Scaffold:
    """Create a project in ``root`` (missing or empty); refuse to touch a folder that has files.

    ``with_tests`` adds ``playbooks/<name>.test.yaml`` (journeys for ``automation test``).
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", name):
        raise InputError(f"playbook name {name!r}: use letters, digits, _ and -, starting with a letter")
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        raise InputError(f"{root} is not empty; choose a new folder (nothing was written)")
    files: dict[Path, str] = {
        root / "playbooks" / f"{name}.yaml": PLAYBOOK.format(name=name),
        root / "README.md": README.format(
            name=name,
            customers=customers,
            test_item=TEST_ITEM.format(name=name) if with_tests else "",
            test_line=TEST_LINE if with_tests else "",
        ),
        root / ".gitignore": GITIGNORE,
        root / "playbook.schema.json": schema_json(),
    }
    if with_tests:
        files[root / "playbooks" / f"{name}.test.yaml"] = TEST_FILE.replace("{playbook_file}", f"{name}.yaml")
    for fname, text in template_files().items():
        files[root / "templates" / fname] = text
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{exc.filename or root}: cannot write: {exc.strerror or exc}") from None
    sample = generate_sample_data(root / "sample", customers, seed, now)
    return Scaffold(root, root / "playbooks" / f"{name}.yaml", sorted(files), sample)
