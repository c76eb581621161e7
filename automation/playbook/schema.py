"""``automation schema``: a JSON Schema of the playbook format, for editors (completion, hover, checks).

The schema comes from the pydantic models in ``automation.playbook.models``; this module adds what
editors show (a title, descriptions of every field) and fixes what pydantic cannot know: defaults are
written the way a playbook writes them (``3d``, not ``P3D``) and a rule may be a YAML boolean
(``when: true``).

The schema checks the shape only. Rule syntax and types, template names and references between names
are checked by ``automation validate``.
"""

from __future__ import annotations

import json
from typing import Any

from automation.playbook.models import (
    EmailStep,
    Goal,
    Playbook,
    Recurring,
    Segment,
    SmsStep,
    Stage,
    TaskStep,
    Tracking,
    WaitStep,
    WebhookStep,
)

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_RULE_DESCRIPTION = "a rule expression, e.g. clv >= 1000"
_GUARDS = {
    "when": "send this step only if this rule is true when it comes due",
    "unless": "skip this step if this rule is true when it comes due",
    "priority": "which action goes first when several compete for the same customer (higher first)",
}

#: (definition or "" for the top level, property) -> description shown by editors
DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("", "name"): "unique playbook name (letters, digits, _ and -); part of every idempotency key",
    ("", "description"): "free text",
    ("", "schedule"): 'how often the playbook is evaluated: "every 15 minutes", "every 15m" or '
    'cron "*/15 * * * *" (5 fields)',
    ("", "react"): "immediately (default): also tick within seconds when customers or events are "
    "written; on schedule: tick only on the schedule",
    ("", "timezone"): "IANA time zone used for customers whose own timezone is unknown, e.g. Europe/Berlin",
    ("", "quiet_hours"): '"HH:MM-HH:MM" in each customer\'s local time (may wrap midnight): email and SMS '
    "wait until the window ends",
    ("", "frequency_cap"): '"<count> per <duration>": email and SMS from this playbook per customer',
    ("", "priority"): "default priority of this playbook's actions when several compete",
    ("", "hold_during_tasks"): "hold automated email and SMS while a high-touch task is open for the "
    "customer",
    ("", "reentry"): "never, always or after <duration>: may a customer who returns to a stage run its "
    "program again",
    ("", "tracking"): "our own click and open tracking of this playbook's emails (needs "
    "AUTOMATION_PUBLIC_URL): {clicks: true, opens: false} by default",
    ("Tracking", "clicks"): "rewrite the http(s) links of emails to AUTOMATION_PUBLIC_URL/c/<token>, "
    "which records the click and redirects to the link",
    ("Tracking", "opens"): "add a 1x1 image AUTOMATION_PUBLIC_URL/o/<token> that records opens; off by "
    "default: image proxies and privacy protection fetch it without anyone reading",
    ("", "segments"): "who a customer is: first match wins; a segment without `when` (the catch-all) "
    "must be last",
    ("", "stages"): "where a customer is in the lifecycle: first match wins; no match means no stage and "
    "no actions",
    ("", "programs"): "{stage: {high|low|none: [steps]}}: the steps started when a customer enters a stage, "
    "by the touch model of their segment",
    ("", "recurring"): "date-based rules checked on every tick, at most once per period (no wait steps)",
    ("", "goal"): "the playbook's goal {when: RULE, within: 7d}: a customer converts when the rule holds "
    "at a tick within `within` of entering any of its programs (recorded in `conversion` as `playbook`)",
    ("", "goals"): "{stage: {when: RULE, within: 7d}}: the goal of a stage's program, recorded under the "
    "stage's name",
    ("Goal", "when"): "the rule that means the customer converted, e.g. orders_count >= 1",
    ("Goal", "within"): "how long after entering the goal counts, an absolute duration such as 7d or 48h",
    ("Segment", "name"): "segment name, usable in rules as segment == \"name\"",
    ("Segment", "when"): "the rule a customer must match; leave it out for the catch-all (last) segment",
    ("Segment", "touch"): "how much people are involved: high (tasks), low (mixed) or none (automated only)",
    ("Stage", "name"): "stage name, the key of its program under `programs`",
    ("Stage", "when"): "the rule a customer must match to be in this stage",
    ("Recurring", "name"): "unique name of the recurring rule",
    ("Recurring", "when"): "the rule that triggers the steps, e.g. anniversary(birthday)",
    ("Recurring", "once_per"): "send at most once per day, week, month or year",
    ("Recurring", "steps"): "steps sent together when the rule matches (no wait)",
    ("EmailStep", "email"): "send templates/NAME.email.j2",
    ("SmsStep", "sms"): "send templates/NAME.sms.j2 to the customer's E.164 phone",
    ("WebhookStep", "webhook"): "POST templates/NAME.webhook.j2 (JSON) to `url`",
    ("WebhookStep", "url"): "an https URL, or ${ENV_VAR} holding one so hosts and secrets stay out of "
    "the playbook",
    ("TaskStep", "task"): "a task for a person from templates/NAME.task.j2 (blocks title and body)",
    ("TaskStep", "assign"): "owner (the account owner) or an email address",
    ("TaskStep", "due"): "how long after creation the task is due, e.g. 2d",
    ("WaitStep", "wait"): "pause the program; the next step comes due after this duration, e.g. 3d",
}
for _model in ("EmailStep", "SmsStep", "WebhookStep", "TaskStep"):
    for _field, _text in _GUARDS.items():
        DESCRIPTIONS[(_model, _field)] = _text

MODEL_DESCRIPTIONS = {
    "Segment": "a group of customers with a touch model",
    "Stage": "a lifecycle stage",
    "Recurring": "a date-based rule with steps",
    "EmailStep": "send an email",
    "SmsStep": "send an SMS",
    "WebhookStep": "POST a JSON body to a URL",
    "TaskStep": "create a task for a person",
    "WaitStep": "pause the program",
    "Tracking": "click and open tracking of emails",
    "Goal": "a conversion goal: a rule and the window after entry in which it counts",
}

# Minimal valid instances, dumped to get each default the way a playbook writes it.
_MINIMAL: dict[str, Any] = {
    "": Playbook.model_validate(
        {"name": "x", "segments": [{"name": "s", "touch": "none"}], "stages": [{"name": "t", "when": "true"}]}
    ),
    "Segment": Segment(name="s", touch="none"),
    "Stage": Stage.model_validate({"name": "t", "when": "true"}),
    "Recurring": Recurring.model_validate({"name": "r", "when": "true", "steps": [{"email": "e"}]}),
    "EmailStep": EmailStep(email="e"),
    "SmsStep": SmsStep(sms="s"),
    "WebhookStep": WebhookStep(webhook="w", url="https://example.com"),
    "TaskStep": TaskStep(task="t"),
    "WaitStep": WaitStep.model_validate({"wait": "1d"}),
    "Tracking": Tracking(),
    "Goal": Goal.model_validate({"when": "true", "within": "7d"}),
}


def playbook_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a playbook file."""
    schema = Playbook.model_json_schema()
    defs: dict[str, Any] = schema.get("$defs", {})
    _allow_boolean_rules(schema)
    for name, definition in [("", schema), *defs.items()]:
        _describe(name, definition)
    schema["properties"]["programs"]["additionalProperties"] = False
    url = defs["WebhookStep"]["properties"]["url"]
    url["pattern"] = r"^(https?://|\$\{[A-Z_][A-Z0-9_]*\})"
    url["examples"] = ["https://hooks.example.com/loyalty", "${LOYALTY_WEBHOOK_URL}"]
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "automation playbook",
        "description": "A playbook: segments, lifecycle stages, and the programs of steps (email, SMS, "
        "webhook, task, wait) run for each stage. Checked fully by `automation validate`.",
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }


def schema_json() -> str:
    return json.dumps(playbook_schema(), indent=2, ensure_ascii=False) + "\n"


def _describe(name: str, definition: dict[str, Any]) -> None:
    if name in MODEL_DESCRIPTIONS:
        definition["description"] = MODEL_DESCRIPTIONS[name]
    dumped = _MINIMAL[name].model_dump(mode="json") if name in _MINIMAL else {}
    for prop, sub in definition.get("properties", {}).items():
        text = DESCRIPTIONS.get((name, prop))
        if text:
            sub["description"] = text
        if "default" in sub and prop in dumped and prop not in ("segments", "stages", "name"):
            sub["default"] = dumped[prop]


def _allow_boolean_rules(node: Any) -> None:
    """A rule may be written as a YAML boolean (``when: true``): widen every rule string."""
    if isinstance(node, dict):
        if node.get("description") == _RULE_DESCRIPTION and node.get("type") == "string":
            node["type"] = ["string", "boolean"]
            node["examples"] = ["orders_count >= 2", 'plan == "enterprise"', "true"]
        for value in node.values():
            _allow_boolean_rules(value)
    elif isinstance(node, list):
        for value in node:
            _allow_boolean_rules(value)
