"""The last steps of ``make demo`` (examples/live_demo.py and examples/outcomes_demo.py) on a small
sample project: they run to the end and show what they promise."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.worker_tools import cli, cli_env, load_sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("demo")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    load_sample(partial(cli, env=env()), cwd, customers=400, seed=7, now=now)
    return cwd


def env() -> dict[str, str]:
    return cli_env(
        AUTOMATION_TEMPLATES_DIR=str(ROOT / "templates"), AUTOMATION_PLAYBOOKS_DIR=str(ROOT / "playbooks")
    )


def run(project: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        cwd=project,
        env=env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_the_live_demo_shows_reactions_and_a_click(project: Path) -> None:
    result = run(project, "live_demo.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "entered acquisition; email welcome queued" in result.stdout
    assert "entered loyalty; email vip_welcome queued" in result.stdout
    assert ": 302 to https://" in result.stdout and "recorded as the event email_clicked" in result.stdout


def test_the_outcomes_demo_reports_the_goal_against_the_holdout(project: Path) -> None:
    result = run(project, "outcomes_demo.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "placed a first order" in result.stdout
    assert "Goals: treatment against holdout and control" in result.stdout
    page = (project / "report.html").read_text()
    assert "<svg" in page and "onboarding" in page
