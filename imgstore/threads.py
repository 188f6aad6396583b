"""Worker threads that never swallow Ctrl-C.

The kernel may deliver a process-wide signal to any thread that does not
block it. Python runs signal handlers only in the main thread, and a main
thread blocked in a read (say, of stdin) is woken only when the signal lands
on it. Every worker thread imgstore starts (hash workers, upload pools)
blocks SIGINT and SIGTERM, so they always reach the caller at once.
"""

from __future__ import annotations

import signal
import threading

MAIN_THREAD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def block_signals() -> None:
    """Block SIGINT and SIGTERM in the calling thread (a pool's ``initializer``)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)


def start_without_signals(thread: threading.Thread) -> None:
    """Start ``thread`` with SIGINT and SIGTERM blocked in it from its first instruction."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
