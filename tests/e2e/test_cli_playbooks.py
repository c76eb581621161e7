"""``automation validate`` and ``automation preview`` as a user runs them: subprocess, exit codes, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.worker_tools import load_sample

EXE = Path(sys.executable).with_name("automation")


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "AUTOMATION_TEMPLATES_DIR": str(ROOT / "templates"), **(env or {})}
    full_env.pop("AUTOMATION_DATABASE_URL", None)
    return subprocess.run(
        [str(EXE), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with the default SQLite database, migrated and loaded with sample data."""
    cwd = tmp_path_factory.mktemp("project")
    return load_sample(run, cwd, customers=300, seed=3, now="2026-11-22T12:00:00Z")


def test_validate_ok(project: Path) -> None:
    result = run("validate", str(ROOT / "playbooks"), cwd=project)
    assert result.returncode == 0, result.stderr
    assert "lifecycle.yaml: ok (3 segments, 4 stages, 18 program steps, 1 recurring rules)" in result.stdout


def test_validate_bad_playbook_exits_2_with_file_line_and_caret(project: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "playbooks" / "lifecycle.yaml").read_text().replace("orders_count >= 2", "ordres_count >= 2")
    )
    result = run("validate", str(bad), cwd=project)
    assert result.returncode == 2
    assert f"{bad}:21:11: unknown field 'ordres_count' (did you mean 'orders_count'?)" in result.stderr
    assert "          ^" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_reports_every_file(project: Path, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\nsegments: []\nstages: []\n")
    (tmp_path / "b.yaml").write_text("name: b\n  broken: [\n")
    result = run("validate", str(tmp_path), cwd=project)
    assert result.returncode == 2
    assert f"{tmp_path / 'a.yaml'}:2" in result.stderr and f"{tmp_path / 'b.yaml'}:2" in result.stderr


def test_preview_json_has_the_contract_keys(project: Path) -> None:
    result = run(
        "preview",
        str(ROOT / "playbooks" / "lifecycle.yaml"),
        "--format",
        "json",
        "--at",
        "2026-11-22T12:00:00Z",
        "--limit",
        "0",
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"segments", "stages", "matrix", "actions"} <= set(data)
    assert data["customers"] == 300
    assert sum(v["customers"] for v in data["segments"].values()) == 300
    assert sum(data["stages"].values()) == 300
    assert sum(n for row in data["matrix"].values() for n in row.values()) == 300
    assert len(data["actions"]) == data["summary"]["actions"] > 0
    assert {a["status"] for a in data["actions"]} <= {"planned", "suppressed"}
    assert all(a["reason"] for a in data["actions"] if a["status"] == "suppressed")


def test_preview_table_and_customer(project: Path) -> None:
    result = run("preview", str(ROOT / "playbooks" / "lifecycle.yaml"), "--limit", "5", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "Segment x stage" in result.stdout and "First 5 of" in result.stdout
    one = run("preview", str(ROOT / "playbooks" / "lifecycle.yaml"), "--customer", "cus_00001", cwd=project)
    assert one.returncode == 0, one.stderr
    assert "Rules, in order" in one.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--at", "yesterday"), "--at 'yesterday' is not an ISO 8601 time"),
        (("--customer", "nobody"), "no customer with id 'nobody'"),
    ],
)
def test_preview_bad_input_exits_2(project: Path, args: tuple[str, ...], message: str) -> None:
    result = run("preview", str(ROOT / "playbooks" / "lifecycle.yaml"), *args, cwd=project)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_preview_needs_a_migrated_database(tmp_path: Path) -> None:
    result = run("preview", str(ROOT / "playbooks" / "lifecycle.yaml"), cwd=tmp_path)
    assert result.returncode == 1
    assert "run `automation db upgrade` first" in result.stderr and "Traceback" not in result.stderr
