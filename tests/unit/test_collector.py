"""The cyclic collector is paused while ticks run and restored once the last one has finished."""

from __future__ import annotations

import gc
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from automation.plan import incremental
from automation.playbook.models import load_playbook
from automation.rules.compiled import compile_playbook
from automation.worker import gcpause as collector
from automation.worker.tick import run_tick
from tests.conftest import ROOT


def test_paused_restores_the_collector_after_nested_and_concurrent_blocks() -> None:
    assert gc.isenabled()
    entered, release = threading.Event(), threading.Event()

    def other_tick() -> None:
        with collector.paused():
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=other_tick)
    with collector.paused():
        assert not gc.isenabled()
        thread.start()
        assert entered.wait(5)
    assert not gc.isenabled()  # the other tick still runs
    release.set()
    thread.join(5)
    assert gc.isenabled()


def test_paused_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_paused_restores_the_collector_when_the_block_fails() -> None:
    try:
        with collector.paused():
            raise RuntimeError("tick failed")
    except RuntimeError:
        pass
    assert gc.isenabled()


def test_a_tick_runs_with_the_collector_paused(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    begin = incremental.begin

    def watching(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return begin(*args, **kwargs)

    monkeypatch.setattr(incremental, "begin", watching)
    loaded = load_playbook(ROOT / "playbooks" / "lifecycle.yaml")
    result = run_tick(sqlite_engine, compile_playbook(loaded, datetime(2026, 11, 22, 12, tzinfo=UTC)))
    assert result.stats["full"] == 1
    assert seen == [False]
    assert gc.isenabled()
