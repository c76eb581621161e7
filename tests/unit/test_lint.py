"""``automation lint``: one test per rule, on small playbooks and templates written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from automation.authoring.lint import LintResult, lint_paths
from automation.cli import main
from automation.messages.store import TemplateStore
from tests.conftest import ROOT

LAYOUT = """{% block subject %}{% endblock %}
{% block text %}{% block text_body %}{% endblock %}
Unsubscribe: {{ unsubscribe_url }}{% endblock %}
{% block html %}{% block html_body %}{% endblock %}
<a href="{{ unsubscribe_url }}">Unsubscribe</a>{% endblock %}
"""
WELCOME = """{% extends "layout.email.j2" %}
{% block subject %}Welcome{% endblock %}
{% block text_body %}Hi {{ customer.first_name|fallback("there") }}{% endblock %}
{% block html_body %}<p>Hi {{ customer.first_name|fallback("there") }}</p>{% endblock %}
"""
SMS = "Hi {{ customer.first_name|fallback('there') }}, your code is ready. Reply STOP to opt out.\n"
HOOK = '{"id": {{ customer.id|tojson }}}\n'


def playbook(name: str = "pb", stages: str = "", programs: str = "", segments: str = "") -> str:
    segments = segments or "  - name: everyone\n    touch: none\n"
    stages = stages or "  - name: new\n    when: orders_count == 0\n"
    programs = programs or "  new:\n    none:\n      - email: welcome\n"
    return f"name: {name}\nsegments:\n{segments}stages:\n{stages}programs:\n{programs}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "playbooks").mkdir()
    for name, text in {
        "layout.email.j2": LAYOUT,
        "welcome.email.j2": WELCOME,
        "code.sms.j2": SMS,
        "hook.webhook.j2": HOOK,
    }.items():
        (tmp_path / "templates" / name).write_text(text)
    return tmp_path


def lint(project: Path, *texts: str, env: dict[str, str] | None = None) -> LintResult:
    for i, text in enumerate(texts):
        (project / "playbooks" / f"p{i}.yaml").write_text(text)
    return lint_paths([project / "playbooks"], TemplateStore(project / "templates"), env or {})


def messages(result: LintResult, rule: str | None = None) -> list[str]:
    return [f.render() for f in result.findings if rule is None or f.rule == rule]


def test_clean_project_has_no_findings(project: Path) -> None:
    result = lint(project, playbook())
    assert result.findings == []


def test_shipped_lifecycle_playbook_has_no_errors() -> None:
    result = lint_paths([ROOT / "playbooks"], TemplateStore(ROOT / "templates"), {})
    assert result.errors == 0, messages(result)
    assert messages(result) == []  # no warnings either


# -- unreachable ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("first", "second", "why"),
    [
        ("true", "orders_count == 0", "is always true"),
        ("orders_count >= 2", "orders_count   >=   2", "same rule"),
        ("orders_count >= 2", "orders_count >= 10", "already matches the earlier rule"),
        ("orders_count > 1", "orders_count == 5 and clv > 100", "already matches the earlier rule"),
        ("clv < 100 or nps <= 6", "nps < 3", "already matches the earlier rule"),
    ],
)
def test_shadowed_stage_is_an_error(project: Path, first: str, second: str, why: str) -> None:
    stages = f"  - name: a\n    when: {first}\n  - name: b\n    when: {second}\n"
    result = lint(project, playbook(stages=stages, programs="  b:\n    none:\n      - email: welcome\n"))
    found = messages(result, "unreachable")
    assert len(found) == 1, messages(result)
    assert f"{project / 'playbooks' / 'p0.yaml'}:9:11: error: stage 'b' can never match" in found[0]
    assert why in found[0]
    assert "fix: move stage 'b' above 'a'" in found[0]
    assert result.errors == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("orders_count >= 10", "orders_count >= 2"),
        ("orders_count > 2", "orders_count >= 2"),
        ("orders_count >= 2", "clv >= 10"),
        ("orders_count >= 2 and clv > 5", "orders_count >= 10"),
        ('plan == "pro"', 'plan == "free"'),
    ],
)
def test_reachable_stages_are_not_reported(project: Path, first: str, second: str) -> None:
    stages = f"  - name: a\n    when: {first}\n  - name: b\n    when: {second}\n"
    result = lint(project, playbook(stages=stages, programs="  b:\n    none:\n      - email: welcome\n"))
    assert messages(result) == []


def test_boolean_true_segment_shadows_later_segments(project: Path) -> None:
    segments = (
        "  - name: all\n    when: true\n    touch: low\n"
        "  - name: vip\n    when: clv > 1000\n    touch: high\n"
        "  - name: rest\n    touch: none\n"
    )
    result = lint(project, playbook(segments=segments))
    found = messages(result, "unreachable")
    assert len(found) == 1
    assert "segment 'vip' can never match: segment 'all' comes first" in found[0]


def test_segment_after_catch_all_is_an_error(project: Path) -> None:
    segments = "  - name: rest\n    touch: none\n  - name: vip\n    when: clv > 1000\n    touch: high\n"
    result = lint(project, playbook(segments=segments))
    assert result.errors == 1
    assert ":3:11: error: catch-all segment 'rest' is not last" in messages(result)[0]
    assert "segment 'vip' (line 5) can never match" in messages(result)[0]


# -- templates -------------------------------------------------------------------------------------
def test_email_without_unsubscribe_link_is_an_error(project: Path) -> None:
    (project / "templates" / "bare.email.j2").write_text(
        "{% block subject %}Hi{% endblock %}{% block text %}Hi{% endblock %}\n"
        "{% block html %}<p>Hi</p>{% endblock %}"
    )
    result = lint(project, playbook(programs="  new:\n    none:\n      - email: bare\n"))
    found = messages(result, "unsubscribe")
    assert len(found) == 1
    assert f"{project / 'templates' / 'bare.email.j2'}:1:1: error: email template 'bare'" in found[0]
    assert "p0.yaml:11:16" in found[0]  # where the playbook uses it
    assert "layout.email.j2" in found[0]


def test_unsubscribe_link_in_the_layout_counts(project: Path) -> None:
    result = lint(project, playbook())
    assert messages(result, "unsubscribe") == []


def test_unsubscribe_in_a_comment_does_not_count(project: Path) -> None:
    (project / "templates" / "layout.email.j2").write_text(
        "{# remember unsubscribe_url #}" + LAYOUT.replace("{{ unsubscribe_url }}", "")
    )
    result = lint(project, playbook())
    assert len(messages(result, "unsubscribe")) == 1


def test_sms_without_opt_out_is_a_warning(project: Path) -> None:
    (project / "templates" / "nag.sms.j2").write_text("{# STOP #}Come back, we miss you!\n")
    result = lint(project, playbook(programs="  new:\n    none:\n      - sms: nag\n      - sms: code\n"))
    found = messages(result, "sms-opt-out")
    assert len(found) == 1
    assert "nag.sms.j2:1:1: warning: SMS template 'nag'" in found[0]
    assert "Reply STOP to opt out" in found[0]
    assert result.errors == 0


@pytest.mark.parametrize(
    "text", ["Text STOP to end", "to opt-out reply N", "Unsubscribe: example.com/u", "reply stop to opt out"]
)
def test_sms_opt_out_wordings(project: Path, text: str) -> None:
    (project / "templates" / "ok.sms.j2").write_text(text)
    result = lint(project, playbook(programs="  new:\n    none:\n      - sms: ok\n"))
    assert messages(result) == []


def test_template_that_fails_for_a_customer_with_empty_fields(project: Path) -> None:
    (project / "templates" / "company.email.j2").write_text(
        '{% extends "layout.email.j2" %}\n'
        "{% block subject %}News{% endblock %}\n"
        "{% block text_body %}\n"
        "Hello {{ customer.first_name|fallback('there') }},\n"
        "news for {{ customer.attributes.company }}\n"
        "{% endblock %}\n"
    )
    result = lint(project, playbook(programs="  new:\n    none:\n      - email: company\n"))
    found = messages(result, "render")
    assert len(found) == 1, messages(result)
    assert f"{project / 'templates' / 'company.email.j2'}:5:1: error:" in found[0]
    assert "has no attribute 'company'" in found[0]
    assert "fix:" in found[0] and "fallback" in found[0]


def test_render_checks_every_template_once(project: Path) -> None:
    result = lint(
        project, playbook(programs="  new:\n    none:\n      - email: welcome\n      - email: welcome\n")
    )
    assert result.findings == []


# -- webhooks ---------------------------------------------------------------------------------------
def hook(url: str) -> str:
    return playbook(programs=f"  new:\n    none:\n      - webhook: hook\n        url: {url}\n")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/x",
        "http://127.0.0.1:8000/x",
        "http://localhost/x",
        "${HOOK_URL}",
        "https://hooks.example.com/x?token=${HOOK_TOKEN}",
    ],
)
def test_acceptable_webhook_urls(project: Path, url: str) -> None:
    assert messages(lint(project, hook(url))) == []


def test_plain_http_webhook_is_an_error(project: Path) -> None:
    result = lint(project, hook("http://hooks.example.com/x"))
    found = messages(result, "webhook-url")
    assert len(found) == 1
    assert "p0.yaml:12:14: error: webhook 'hook' posts customer data over plain http" in found[0]
    assert "https://" in found[0]


def test_env_url_is_checked_when_the_variable_is_set(project: Path) -> None:
    result = lint(project, hook("${HOOK_URL}"), env={"HOOK_URL": "http://hooks.example.com/x"})
    assert len(messages(result, "webhook-url")) == 1
    result = lint(project, hook("${HOOK_URL}"), env={"HOOK_URL": "https://hooks.example.com/x"})
    assert messages(result) == []


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/x?token=abc123",
        "https://hooks.example.com/x?a=1&api_key=abc123",
        "https://hooks.example.com/x?client_secret=s3cr3t",
        "https://hooks.example.com/x?password=hunter2",
        "https://user:hunter2@hooks.example.com/x",
    ],
)
def test_secret_in_webhook_url_is_an_error(project: Path, url: str) -> None:
    result = lint(project, hook(url))
    found = messages(result, "secret")
    assert len(found) == 1, messages(result)
    assert ": error: webhook 'hook': a" in found[0]
    assert "fix: write url: ${HOOK_WEBHOOK_URL}" in found[0]


# -- across playbooks -------------------------------------------------------------------------------
def test_two_playbooks_emailing_on_the_same_stage_warn(project: Path) -> None:
    result = lint(project, playbook("one"), playbook("two"))
    found = messages(result, "overlap")
    assert len(found) == 1
    assert str(project / "playbooks" / "p1.yaml") + ":9:3: warning: playbooks 'two' and 'one'" in found[0]
    assert str(project / "playbooks" / "p0.yaml") + ":9:3" in found[0]
    assert "AUTOMATION_FREQUENCY_CAP" in found[0]
    assert result.errors == 0


def test_no_overlap_for_other_channels_stages_or_a_global_cap(project: Path) -> None:
    sms = playbook("two", programs="  new:\n    none:\n      - sms: code\n")
    assert messages(lint(project, playbook("one"), sms)) == []
    other = playbook(
        "three",
        stages="  - name: later\n    when: orders_count > 3\n",
        programs="  later:\n    none:\n      - email: welcome\n",
    )
    assert messages(lint(project, playbook("one"), other)) == []
    waited = playbook("four", programs="  new:\n    none:\n      - wait: 1d\n      - email: welcome\n")
    assert messages(lint(project, playbook("one"), waited)) == []
    capped = lint_paths([project / "playbooks"], TemplateStore(project / "templates"), {}, global_cap=True)
    assert capped.findings == []


# -- validation problems and the command ------------------------------------------------------------
def test_validation_problems_are_lint_errors(project: Path) -> None:
    result = lint(project, playbook(programs="  new:\n    none:\n      - email: welcom\n"))
    assert result.errors >= 1
    assert "did you mean 'welcome'" in "\n".join(messages(result))


def test_command_exit_codes_and_format(project: Path) -> None:
    runner = CliRunner()
    base = ["--templates", str(project / "templates"), "lint"]
    (project / "playbooks" / "p0.yaml").write_text(playbook())
    result = runner.invoke(main, [*base, str(project / "playbooks")])
    assert result.exit_code == 0, result.output
    (project / "templates" / "nag.sms.j2").write_text("Come back!\n")
    (project / "playbooks" / "p0.yaml").write_text(playbook(programs="  new:\n    none:\n      - sms: nag\n"))
    result = runner.invoke(main, [*base, str(project / "playbooks")])
    assert result.exit_code == 0
    assert ": warning: SMS template 'nag'" in result.output
    assert runner.invoke(main, [*base, "--strict", str(project / "playbooks")]).exit_code == 2
    (project / "playbooks" / "p0.yaml").write_text(hook("http://example.com/x"))
    result = runner.invoke(main, [*base, str(project / "playbooks" / "p0.yaml")])
    assert result.exit_code == 2
    assert f"{project / 'playbooks' / 'p0.yaml'}:12:14: error: webhook" in result.output
    assert "1 error(s), 0 warning(s)" in result.output
