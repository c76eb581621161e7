"""``automation init``, ``lint`` and ``schema`` as a user runs them: subprocess, exit codes, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
