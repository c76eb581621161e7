"""Fixtures for tests that run the CLI and the worker as subprocesses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.worker_tools import Proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Long-lived ``automation`` subprocesses a test starts; each is stopped and closed afterwards."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.close()
