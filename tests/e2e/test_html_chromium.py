"""``automation preview --html`` opened in a real headless Chromium: the page loads and shows its parts.

Needs Debian's ``chromium`` at /usr/bin/chromium (``.ci/run`` installs it): skipped locally when it
is missing, a failure when ``CI`` is set.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.test_cli_playbooks import run
from tests.e2e.worker_tools import load_sample

CHROMIUM = Path("/usr/bin/chromium")
AT = "2026-11-22T12:00:00Z"


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {CHROMIUM} is missing: install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,2000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML report of the example playbook for a SQLite project with sample data."""
    cwd = tmp_path_factory.mktemp("html_project")
    load_sample(run, cwd, customers=300, seed=3, now=AT)
    playbook = str(ROOT / "playbooks" / "lifecycle.yaml")
    result = run("preview", playbook, "--at", AT, "--html", "out/report.html", cwd=cwd)
    assert result.returncode == 0, result.stderr
    path = cwd / "out" / "report.html"
    assert result.stdout.strip() == str(path.resolve())
    return path


def test_chromium_renders_every_part(report: Path, tmp_path: Path) -> None:
    result = chromium("--dump-dom", report.as_uri(), profile=tmp_path / "profile-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for ident in ("summary", "matrix", "funnel", "plan", "reasons", "templates", "actions"):
        assert f'id="{ident}"' in dom, ident
    assert 'class="heatmap"' in dom and len(re.findall(r'<td class="cell"', dom)) >= 3 * 5
    funnel = re.findall(r'class="bar-row funnel-stage" data-stage="([^"]+)"', dom)
    assert funnel == ["loyalty", "retention", "conversion", "acquisition", "(none)"]
    assert re.search(r'class="channel-row" data-channel="email"', dom)
    assert 'class="bar-row reason"' in dom
    for channel in ("email", "sms", "task", "webhook"):
        assert f'data-channel="{channel}"' in dom, channel
    assert 'class="email-html"' in dom and 'class="sms-body"' in dom
    assert 'class="webhook-json"' in dom and 'class="task-body"' in dom


def test_chromium_screenshot(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "preview-report.png"
    result = chromium(f"--screenshot={shot}", report.as_uri(), profile=tmp_path / "profile-shot")
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2000)
    assert len(data) > 50_000, f"a {len(data)} byte screenshot is too small to show the report"
    print(f"screenshot of the HTML report: {shot}")
