"""Every CLI entry point over a corpus of hostile and careless inputs (``tests/hostile.py``).

Each command runs as a subprocess with an address-space limit and a time limit, and must answer with
exit code 2, a ``file:line`` message (or one per rejected row), no traceback, and a database exactly as
it was before.
"""

from __future__ import annotations

import resource
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.worker_tools import EXE, cli_env, wait_until
from tests.hostile import CUSTOMER_FILES, EVENT_FILES, PLAYBOOKS, TEMPLATES, TEST_FILES, Case

pytestmark = pytest.mark.slow

MEMORY_LIMIT = 768 * 1024 * 1024  # address space per command; a normal command needs well under 600 MiB
SECONDS = 20.0  # per command; each takes about a second


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    code: int
    output: str
    seconds: float


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run(project: Path, *args: str, templates: str = "templates") -> Result:
    started = time.monotonic()
    done = subprocess.run(
        [str(EXE), *args],
        cwd=project,
        env=cli_env(AUTOMATION_TEMPLATES_DIR=templates),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
        preexec_fn=_limit_memory,
    )
    return Result(args, done.returncode, done.stdout + done.stderr, time.monotonic() - started)


def run_all(project: Path, commands: Sequence[Sequence[str]], templates: str = "templates") -> list[Result]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda args: run(project, *args, templates=templates), commands))


def snapshot(project: Path) -> list[str]:
    with closing(sqlite3.connect(project / "automation.db")) as conn:
        return list(conn.iterdump())


def assert_refused(result: Result, where: str, says: str) -> None:
    shown = f"{result.args}: {result.output[-3000:]}"
    assert result.code == 2, shown
    assert "Traceback" not in result.output, shown
    assert where in result.output, shown
    assert says in result.output, shown
    assert result.seconds < SECONDS, shown


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project made by ``automation init``, migrated, with its sample customers and events."""
    root = tmp_path_factory.mktemp("hostile")
    made = run(root, "init", "proj", "--customers", "60")
    assert made.code == 0, made.output
    project = root / "proj"
    for args in (("db", "upgrade"), ("import", "customers", "sample/customers.csv")):
        result = run(project, *args)
        assert result.code == 0, result.output
    result = run(project, "import", "events", "sample/events.jsonl")
    assert result.code == 0, result.output
    (project / "hostile").mkdir()
    yield project


def write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def where(rel: str, case: Case, good: str) -> str:
    return f"{rel}:{case.line(good)}:" if case.line is not None else f"{rel}:"


@pytest.mark.parametrize("case", PLAYBOOKS, ids=lambda c: c.name)
def test_hostile_playbooks_are_refused_by_every_command(project: Path, case: Case) -> None:
    good = (project / "playbooks" / "lifecycle.yaml").read_text()
    rel = f"hostile/{case.name}.yaml"
    write(project / rel, case.make(good))
    tests = (project / "playbooks" / "lifecycle.test.yaml").read_text()
    test_file = f"hostile/{case.name}.test.yaml"
    (project / test_file).write_text(tests.replace("playbook: lifecycle.yaml", f"playbook: {case.name}.yaml"))
    before = snapshot(project)
    results = run_all(
        project,
        [
            ("validate", rel),
            ("lint", rel),
            ("preview", rel),
            ("tick", rel),
            ("run", "--once", "--playbooks", rel),
            ("explain", "cus_00001", "--playbook", rel),
            ("test", test_file),
        ],
    )
    for result in results:
        assert_refused(result, where(rel, case, good), case.says)
    assert snapshot(project) == before
    assert not (project / "pwned").exists()


@pytest.mark.parametrize("case", TEST_FILES, ids=lambda c: c.name)
def test_hostile_test_files_are_refused(project: Path, case: Case) -> None:
    good = (project / "playbooks" / "lifecycle.test.yaml").read_text()
    rel = f"playbooks/{case.name}.test.yaml"
    write(project / rel, case.make(good))
    before = snapshot(project)
    try:
        (result,) = run_all(project, [("test", rel)])
    finally:
        (project / rel).unlink()
    assert_refused(result, where(rel, case, good), case.says)
    assert snapshot(project) == before
    assert not (project / "pwned").exists()


@pytest.mark.parametrize("case", TEMPLATES, ids=lambda c: c.name)
def test_hostile_templates_are_refused_by_every_command(project: Path, case: Case) -> None:
    folder = f"templates-{case.name}"
    shutil.copytree(project / "templates", project / folder)
    rel = f"{folder}/welcome.email.j2"
    write(project / rel, case.make(""))
    before = snapshot(project)
    results = run_all(
        project,
        [
            ("validate", "playbooks/lifecycle.yaml"),
            ("lint", "playbooks/lifecycle.yaml"),
            ("preview", "playbooks/lifecycle.yaml"),
            ("run", "--once", "--playbooks", "playbooks/lifecycle.yaml"),
            ("test", "playbooks/lifecycle.test.yaml"),
        ],
        templates=folder,
    )
    for result in results:
        assert_refused(result, where(rel, case, ""), case.says)
    assert snapshot(project) == before


@pytest.mark.parametrize(
    ("kind", "name", "suffix", "content", "line", "says"),
    [("customers", *c) for c in CUSTOMER_FILES] + [("events", *c) for c in EVENT_FILES],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 and not v.endswith(("csv", "jsonl")) else "",
)
def test_hostile_import_files_are_rejected_row_by_row(
    project: Path, kind: str, name: str, suffix: str, content: bytes, line: int, says: str
) -> None:
    rel = f"hostile/{name}.{suffix}"
    (project / rel).write_bytes(content)
    before = snapshot(project)
    (result,) = run_all(project, [("import", kind, rel)])
    assert_refused(result, f"{rel}:{line}:", says)
    assert snapshot(project) == before


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_hostile_http_requests_get_4xx_and_change_nothing(project: Path) -> None:
    port = _free_port()
    server = subprocess.Popen(
        [str(EXE), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=project,
        env=cli_env(AUTOMATION_SECRET_KEY="a-long-random-test-secret"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_limit_memory,
    )
    base = f"http://127.0.0.1:{port}"
    before = snapshot(project)
    try:
        wait_until(lambda: _answers(base), 20, "automation serve")
        with httpx.Client(base_url=base, timeout=10) as client:
            forged = "Y3VzXzAwMDAxOmVtYWls.forged"
            statuses = {
                "forged token": client.post(f"/unsubscribe/{forged}", content=b"List-Unsubscribe=One-Click"),
                "forged form": client.get(f"/unsubscribe/{forged}"),
                "empty token": client.post("/unsubscribe/.", content=b""),
                "huge body": client.post(f"/unsubscribe/{forged}", content=b"x" * 5_000_000),
                "binary token": client.get("/unsubscribe/%FF%FE%00"),
                "script token": client.get("/unsubscribe/<script>alert(1)</script>"),
                "long token": client.get("/unsubscribe/" + "a" * 6_000),
                "unknown path": client.get("/../../etc/passwd"),
                "wrong method": client.delete(f"/unsubscribe/{forged}"),
            }
        for what, response in statuses.items():
            assert 400 <= response.status_code < 500, (what, response.status_code)
            assert "<script>" not in response.text, what
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=20)
    assert "Traceback" not in output, output
    assert snapshot(project) == before


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
