"""``automation serve --workers N``: N server processes on one port.

One process answers HTTP with one CPU core at most (Python's interpreter lock); parsing and checking
the calls of the ingestion API is where its time goes. With ``--workers N`` the command starts N
processes that each listen on the same port with ``SO_REUSEPORT`` (the kernel spreads new
connections over them) and each run the whole app with its own database connections. The parent
only watches: on SIGTERM or SIGINT it tells every worker to stop (with ``SIGUSR1``), each drains its
requests as one server does, and the parent exits 0 once all have; a second signal is passed on
the same way and cuts the wait short. Workers ignore SIGTERM and SIGINT themselves, so a signal sent
to the whole process group (Ctrl-C, systemd's default ``KillMode``) counts once. A worker that dies
on its own stops the others and the parent exits 1, so the service manager restarts the whole set;
a worker whose parent is gone stops by itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from types import FrameType

log = logging.getLogger("automation.serve")

_WATCH = 0.2  # seconds between looks at the workers


#: What a worker takes as SIGTERM/SIGINT: stop (drain), and the second time, stop now.
STOP = signal.SIGUSR1


def serve_workers(workers: int, serve_one: Callable[[int], None]) -> int:
    """Run ``serve_one(index)`` in ``workers`` forked processes until they stop; the exit code.

    ``serve_one`` must open its own database connections (nothing the parent holds is shared) and
    stop on :data:`STOP` as a single server stops on SIGTERM.
    """
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_worker, args=(serve_one, i, os.getpid()), name=f"serve-{i}")
        for i in range(workers)
    ]
    stopping = False

    def forward(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, STOP)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process in processes:
            process.start()
        return _watch(processes, lambda: stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker(serve_one: Callable[[int], None], index: int, parent: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # the parent decides; see the module's docstring

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("serve-%d: the parent process is gone; stopping", index)
        os.kill(os.getpid(), STOP)

    threading.Thread(target=orphaned, name="parent-watch", daemon=True).start()
    serve_one(index)


def _watch(processes: Sequence[BaseProcess], stopping: Callable[[], bool]) -> int:
    failed = False
    while any(process.exitcode is None for process in processes):
        time.sleep(_WATCH)
        for process in processes:
            if process.exitcode not in (None, 0) and not failed:
                failed = True
                if not stopping():
                    log.error("%s exited with %s; stopping the other workers", process.name, process.exitcode)
                for other in processes:
                    if other.exitcode is None and other.pid is not None:
                        os.kill(other.pid, STOP)
    for process in processes:
        process.join()
    return 1 if failed or any(process.exitcode != 0 for process in processes) else 0
