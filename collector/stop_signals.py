"""SIGINT/SIGTERM handlers for the time a daemon runs, and what was installed before them afterwards."""

from __future__ import annotations

import asyncio
import signal
from contextlib import contextmanager
from typing import Any, Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_signals(loop: asyncio.AbstractEventLoop, on_signal: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Call ``on_signal(sig)`` on the loop for SIGINT and SIGTERM inside the block, then restore the
    handlers that were there before (a Python handler, or the loop's own handler for that signal).

    ``loop.remove_signal_handler`` alone would leave SIG_DFL / Python's KeyboardInterrupt, not the
    embedding process's handler (``asyncio.run``'s cancel-the-main-task on Ctrl-C, or the loop
    handler of an application running several daemons one after another); leaving ours installed
    sent later signals to a daemon that had already stopped, where they did nothing. Where the loop
    cannot take signal handlers (not the main thread, Windows) nothing is installed."""
    installed: list[tuple[signal.Signals, Any, Any]] = []
    loop_handlers = getattr(loop, "_signal_handlers", {})  # asyncio's own: the only record of them
    for sig in STOP_SIGNALS:
        before, loop_before = signal.getsignal(sig), loop_handlers.get(sig)
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append((sig, before, loop_before))
    try:
        yield
    finally:
        for sig, before, loop_before in installed:
            loop.remove_signal_handler(sig)
            if loop_before is not None:
                loop.add_signal_handler(sig, loop_before._callback, *loop_before._args)
            elif before is not None:  # None: a handler not installed from Python, nothing to put back
                signal.signal(sig, before)
