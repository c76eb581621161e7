"""Python's cyclic garbage collector, paused while a tick runs.

A tick allocates hundreds of thousands of short-lived objects (rows, transitions, planned messages)
that reference counting frees as soon as they are done with. The cyclic collector would still walk
them, and the objects of the whole process, every few thousand allocations: a measurable share of a
steady-state tick (docs/decisions/0013-pause-the-garbage-collector-during-a-tick.md). Almost none of
them form cycles, so pausing the collector for the tick costs no memory worth counting; what cycles
there are are collected as usual once the last running tick has finished. The pause is process-wide:
cycles the dispatcher makes meanwhile (an exception's traceback, say) wait for the end of the tick
too, which bounds them by the length of a tick.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_running = 0  # ticks running now, in any thread
_was_enabled = False  # whether the collector ran before the first of them paused it


@contextmanager
def paused() -> Iterator[None]:
    """Pause automatic collection for the block; nested and concurrent blocks restore it once, at the end."""
    global _running, _was_enabled
    with _lock:
        if _running == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _was_enabled:
                gc.enable()


__all__ = ["paused"]
