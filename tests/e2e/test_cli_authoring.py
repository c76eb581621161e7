"""``automation init``, ``lint`` and ``schema`` as a user runs them: subprocess, exit codes, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

EXE = Path(sys.executable).with_name("automation")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
    return subprocess.run(
        [str(EXE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("init")
    result = run("init", "shop", "--name", "shop_lifecycle", "--customers", "150", cwd=base)
    assert result.returncode == 0, result.stderr
    assert "created shop/playbooks/shop_lifecycle.yaml" in result.stdout
    return base / "shop"


def test_init_writes_a_complete_project(project: Path) -> None:
    for relative in (
        "README.md",
        "playbook.schema.json",
        "playbooks/shop_lifecycle.yaml",
        "templates/layout.email.j2",
        "templates/welcome.email.j2",
        "templates/feedback.sms.j2",
        "templates/check_in.task.j2",
        "sample/customers.csv",
        "sample/events.jsonl",
    ):
        assert (project / relative).is_file(), relative
    readme = (project / "README.md").read_text()
    assert "automation preview playbooks/shop_lifecycle.yaml" in readme
    assert json.loads((project / "playbook.schema.json").read_text())["title"]
    assert len((project / "sample" / "customers.csv").read_text().splitlines()) == 151


def test_scaffold_validates_and_lints_clean(project: Path) -> None:
    result = run("validate", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "shop_lifecycle.yaml: ok" in result.stdout
    result = run("lint", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "0 error(s), 0 warning(s)" in result.stderr


def test_scaffold_imports_and_previews(project: Path, tmp_path: Path) -> None:
    db = ["--database-url", f"sqlite:///{tmp_path / 'a.db'}"]
    for args in (
        ("db", "upgrade"),
        ("import", "customers", "sample/customers.csv"),
        ("import", "events", "sample/events.jsonl"),
    ):
        result = run(*db, *args, cwd=project)
        assert result.returncode == 0, result.stderr
    result = run(*db, "preview", "playbooks/shop_lifecycle.yaml", "--format", "json", cwd=project)
    assert result.returncode == 0, result.stderr
    preview = json.loads(result.stdout)
    assert isinstance(preview, dict) and preview
    text = run(*db, "preview", "playbooks/shop_lifecycle.yaml", cwd=project)
    assert text.returncode == 0, text.stderr
    assert "shop_lifecycle at" in text.stdout and "150 customers" in text.stdout
    assert "welcome" in text.stdout or "thank_you" in text.stdout


def test_init_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = run("init", "taken", cwd=tmp_path)
    assert result.returncode == 2
    assert "is not empty" in result.stderr
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["notes.txt"]


def test_init_into_an_empty_folder_and_bad_name(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert run("init", "empty", "--customers", "5", cwd=tmp_path).returncode == 0
    assert (tmp_path / "empty" / "playbooks" / "lifecycle.yaml").is_file()
    result = run("init", "other", "--name", "9 lives", cwd=tmp_path)
    assert result.returncode == 2
    assert "playbook name '9 lives'" in result.stderr
    assert not (tmp_path / "other").exists()


def test_lint_reports_errors_with_exit_2(project: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (project / "playbooks" / "shop_lifecycle.yaml").read_text()
    bad.write_text(text.replace("when: orders_count >= 1", "when: orders_count >= 10"))
    result = run("lint", str(bad), cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{bad}:" in result.stdout
    assert ": error: stage 'active' can never match: stage 'loyal' comes first" in result.stdout
    assert "    fix: move stage 'active' above 'loyal'" in result.stdout
    assert "Traceback" not in result.stderr


def test_schema_command(project: Path) -> None:
    result = run("schema", cwd=project)
    assert result.returncode == 0
    assert json.loads(result.stdout) == json.loads((project / "playbook.schema.json").read_text())


def test_scaffold_journeys_pass_when_automation_test_exists(project: Path) -> None:
    has_test_command = "\n  test " in run("--help", cwd=project).stdout
    journeys = project / "playbooks" / "shop_lifecycle.test.yaml"
    assert journeys.is_file() == has_test_command
    if not has_test_command:
        assert "automation test" not in (project / "README.md").read_text()
        return
    assert "playbook: shop_lifecycle.yaml" in journeys.read_text()
    result = run("test", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shop_lifecycle.test.yaml: ok" in result.stdout


# ------------------------------------------------- validate: templates the sandbox refuses at send time

REFUSED_PLAYBOOK = """\
name: refused
segments:
  - name: everyone
    touch: none
stages:
  - name: new
    when: orders_count == 0
programs:
  new:
    none:
      - sms: class_peek
      - wait: 1d
      - sms: huge_range
      - wait: 1d
      - task: init_peek
      - wait: 1d
      - sms: fine_for_some
"""

REFUSED_TEMPLATES = {
    "class_peek.sms.j2": "Hi {{ customer.first_name }}\n{{ ''.__class__.__mro__ }}\nReply STOP to opt out.\n",
    "huge_range.sms.j2": "Hi\nReply STOP to opt out.\n{{ range(10**9)|list|length }}\n",
    "init_peek.task.j2": (
        "{% block title %}Call{% endblock %}\n{% block body %}{{ customer.__init__ }}{% endblock %}\n"
    ),
    # fails only for customers without the attribute: lint's business, not a validate error
    "fine_for_some.sms.j2": "Seats: {{ customer.attributes.seats }}\nReply STOP to opt out.\n",
}


def refused_project(base: Path, **templates: str) -> Path:
    (base / "playbooks").mkdir()
    (base / "templates").mkdir()
    (base / "playbooks" / "refused.yaml").write_text(REFUSED_PLAYBOOK)
    for name, text in {**REFUSED_TEMPLATES, **templates}.items():
        (base / "templates" / name).write_text(text)
    return base


def test_validate_reports_templates_the_sandbox_refuses_at_their_line(tmp_path: Path) -> None:
    project = refused_project(tmp_path)
    result = run("validate", cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err
    assert (
        "templates/class_peek.sms.j2:2: sms template 'class_peek' (used at playbooks/refused.yaml:11:" in err
    )
    assert "access to attribute '__class__' of 'str' object is unsafe" in err
    assert "    {{ ''.__class__.__mro__ }}" in err
    assert "templates/huge_range.sms.j2:3: sms template 'huge_range'" in err
    assert "Range too big" in err
    assert "templates/init_peek.task.j2:2: task template 'init_peek'" in err
    assert "access to attribute '__init__'" in err
    assert "fine_for_some" not in err  # depends on the customer's data: lint reports it
    assert "refused.yaml: ok" not in result.stdout


def test_validate_passes_once_the_templates_are_fixed(tmp_path: Path) -> None:
    project = refused_project(
        tmp_path,
        **{
            "class_peek.sms.j2": "Hi {{ customer.first_name }}\nReply STOP to opt out.\n",
            "huge_range.sms.j2": "Hi\nReply STOP to opt out.\n{{ range(3)|list|length }}\n",
            "init_peek.task.j2": "{% block title %}Call{% endblock %}\n{% block body %}Hi{% endblock %}\n",
        },
    )
    result = run("validate", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "playbooks/refused.yaml: ok" in result.stdout
    lint = run("lint", cwd=project)
    assert lint.returncode == 2 and "fine_for_some" in lint.stdout  # the data-dependent one, found by lint


def test_the_worker_does_not_start_with_a_template_the_sandbox_refuses(tmp_path: Path) -> None:
    project = refused_project(tmp_path)
    db = ["--database-url", f"sqlite:///{tmp_path / 'a.db'}"]
    assert run(*db, "db", "upgrade", cwd=project).returncode == 0
    result = run(*db, "run", "--once", cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "templates/class_peek.sms.j2:2:" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_renders_each_template_once_across_playbooks(tmp_path: Path) -> None:
    from automation.authoring.validate import validate_paths
    from automation.messages.store import RenderedMessage, TemplateStore

    class Counting(TemplateStore):
        calls: ClassVar[list[tuple[str, str]]] = []

        def render(self, name: str, channel: str, context: Mapping[str, Any]) -> RenderedMessage:
            self.calls.append((name, channel))
            return super().render(name, channel, context)

    project = refused_project(
        tmp_path,
        **{
            "class_peek.sms.j2": "Hi\nReply STOP to opt out.\n",
            "huge_range.sms.j2": "Hi\nReply STOP to opt out.\n",
            "init_peek.task.j2": "{% block title %}Call{% endblock %}\n{% block body %}Hi{% endblock %}\n",
        },
    )
    twice = REFUSED_PLAYBOOK.replace("name: refused", "name: again") + "      - sms: class_peek\n"
    (project / "playbooks" / "again.yaml").write_text(twice)
    compiled = validate_paths([project / "playbooks"], Counting(project / "templates"))
    assert sorted(c.name for c in compiled) == ["again", "refused"]
    assert sorted(Counting.calls) == sorted(
        [("class_peek", "sms"), ("huge_range", "sms"), ("init_peek", "task"), ("fine_for_some", "sms")]
    )


def test_the_shipped_playbooks_still_validate() -> None:
    root = Path(__file__).resolve().parents[2]
    result = run("validate", "playbooks/", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "playbooks/lifecycle.yaml: ok" in result.stdout
