"""``automation report`` as a user runs it: the table, the JSON keys, exit codes, and the HTML page in
headless Chromium (it loads, shows its figures, and logs no console errors)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from automation.db.connect import make_engine
from tests import report_data as rd
from tests.conftest import ROOT
from tests.e2e.test_cli_playbooks import run
from tests.e2e.test_html_chromium import chromium

UNTIL = rd.UNTIL.isoformat()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("report")
    result = run("db", "upgrade", cwd=cwd)
    assert result.returncode == 0, result.stderr
    engine = make_engine(f"sqlite:///{cwd / 'automation.db'}")
    rd.insert_data(engine, rd.generate(seed=5, customers=300))
    engine.dispose()
    return cwd


def test_json_has_the_documented_keys(project: Path) -> None:
    result = run("report", rd.PLAYBOOK, "--until", UNTIL, "--since", "30d", "--format", "json", cwd=project)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("playbook", "period", "stages", "steps", "goals", "holdout", "variants", "funnel", "daily"):
        assert key in data, key
    assert data["playbook"] == rd.PLAYBOOK
    assert data["period"] == {"since": rd.SINCE.isoformat(), "until": UNTIL}
    assert {"stage", "step", "template", "channel", "entered", "planned", "sent", "rates"} <= set(
        data["steps"][0]
    )
    assert {"vs_holdout", "vs_control"} <= set(data["holdout"]["goals"][0])
    assert {"p_value", "ci95", "enough_data", "verdict"} <= set(data["holdout"]["goals"][0]["vs_holdout"])
    assert {v["template"] for v in data["variants"]} >= {"welcome", "welcome_short"}


def test_table(project: Path) -> None:
    result = run("report", rd.PLAYBOOK, "--until", UNTIL, cwd=project)
    assert result.returncode == 0, result.stderr
    for title in ("Steps", "Goals: treatment against holdout", "Variants", "Stage transitions"):
        assert title in result.stdout, title
    assert "welcome_short" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope",), "unknown playbook 'nope'"),
        ((rd.PLAYBOOK, "--since", "yesterday"), "--since 'yesterday' is neither a duration"),
        ((rd.PLAYBOOK, "--until", "soon"), "--until 'soon' is not an ISO 8601 time"),
        ((rd.PLAYBOOK, "--since", "2026-12-01T00:00:00Z", "--until", UNTIL), "is not after --since"),
    ],
)
def test_bad_input_exits_2(project: Path, args: tuple[str, ...], message: str) -> None:
    result = run("report", *args, cwd=project)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_html_in_chromium(project: Path, tmp_path: Path) -> None:
    result = run("report", rd.PLAYBOOK, "--until", UNTIL, "--html", "out/report.html", cwd=project)
    assert result.returncode == 0, result.stderr
    page = project / "out" / "report.html"
    assert result.stdout.strip() == str(page.resolve())
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?https?:""", text), "the page must load nothing"
    shown = chromium("--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri(), profile=tmp_path / "p")
    assert shown.returncode == 0, shown.stderr[-2000:]
    dom = shown.stdout
    for ident in ("summary", "steps", "goals", "daily", "funnel-chart", "variants-chart"):
        assert f'id="{ident}"' in dom, ident
    assert len(re.findall(r'class="funnel-bar"', dom)) >= 3
    assert re.findall(r'class="daily-line" data-cohort="(\w+)"', dom)[:2] == ["treatment", "holdout"]
    assert len(re.findall(r'class="variant-bar" data-template="welcome(?:_short)?"', dom)) >= 2
    assert "CONSOLE" not in shown.stderr and "Refused to" not in shown.stderr, shown.stderr[-2000:]


def test_a_playbook_file_names_its_playbook(project: Path) -> None:
    path = str(ROOT / "playbooks" / "lifecycle.yaml")
    result = run("report", path, "--until", UNTIL, "--format", "json", cwd=project)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["playbook"] == rd.PLAYBOOK
