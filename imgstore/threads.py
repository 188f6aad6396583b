"""Worker threads that never swallow Ctrl-C, and imports that must not happen in them.

The kernel may deliver a process-wide signal to any thread that does not
block it. Python runs signal handlers only in the main thread, and a main
thread blocked in a read (say, of stdin) is woken only when the signal lands
on it. Every worker thread imgstore starts (hash workers, upload pools)
blocks SIGINT and SIGTERM, so they always reach the caller at once.

Libraries that import eventlet (oslo.service's looping calls for VMware,
os-brick and oslo.privsep for Cinder) are imported by the drivers when they are
built (:func:`import_here`), not in whichever thread uses them first.
"""

from __future__ import annotations

import contextvars
import importlib
import signal
import threading

MAIN_THREAD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def block_signals() -> None:
    """Block SIGINT and SIGTERM in the calling thread (a pool's ``initializer``)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)


def start_without_signals(thread: threading.Thread) -> None:
    """Start ``thread`` with SIGINT and SIGTERM blocked in it from its first instruction,
    running in a copy of the caller's context (the operation it works for stays the
    current one: :mod:`imgstore.telemetry`)."""
    context = contextvars.copy_context()
    run = thread.run
    thread.run = lambda: context.run(run)  # type: ignore[method-assign]
    old = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def import_here(*modules: str) -> None:
    """Import ``modules`` now, in the calling thread: call it from a driver's constructor,
    in the thread that builds the Stores (the application's main thread, as a rule).

    For modules that import eventlet: its import imports a second copy of
    :mod:`threading`, and that copy's import takes over the importing thread's
    end-of-thread lock (``_thread._set_sentinel``). Done first in a worker thread
    (the first add in a server's ThreadPoolExecutor, say), the thread could never be
    joined again: ``join()`` and ``ThreadPoolExecutor.shutdown(wait=True)`` hung
    forever. In the main thread that lock is never waited for.
    """
    for name in modules:
        importlib.import_module(name)
