"""Interpreter settings the daemon owns while it runs, and gives back on shutdown.

Two process-wide knobs matter for a Python daemon that keeps large, long-lived detector state:

* the garbage collector's young-generation threshold. Every 700 net allocations (Python's default)
  CPython collects generation 0, and every 10th of those generation 1, each time walking every
  tracked object that survived since; a batch of a few thousand tool calls allocates hundreds of
  thousands of short-lived objects, so at defaults the collector ran dozens of times per batch and
  took about a third of the daemon's CPU (bench/ingest.py --soak). Detector state is plain dicts,
  lists, tuples and numpy arrays with no reference cycles to find, so collecting less often loses
  nothing but a little memory held between collections;
* the thread switch interval (see ``pipeline.switch_interval_ms``).

``gc.freeze()`` (after a state restore, after each refit) was measured and left out: with the
young threshold above, a daemon under fleet load made no full collection at all in 210 s and
2.7 million spans (bench/ingest.py --soak, gc.callbacks from process start), so there was nothing
for freezing to skip (a full collection of a warmed fleet heap costs 0.2-0.9 s of CPU; the only
one seen came after the soak had ended). Freezing would also keep for good every object alive at that
moment that later ends in a reference cycle (asyncio futures and tasks among them): a leak per
refit for no measured gain.
"""

from __future__ import annotations

import gc
import sys


class InterpreterSettings:
    """Apply ``pipeline.gc_young_threshold`` and ``pipeline.switch_interval_ms``; ``restore`` undoes both."""

    def __init__(self, gc_young_threshold: int, switch_interval_ms: float) -> None:
        self.gc_young_threshold = gc_young_threshold
        self.switch_interval_ms = switch_interval_ms
        self._saved_gc: tuple[int, ...] | None = None
        self._saved_switch: float | None = None

    def apply(self) -> None:
        if self.gc_young_threshold > 0 and self._saved_gc is None:
            self._saved_gc = gc.get_threshold()
            _, *older = self._saved_gc
            gc.set_threshold(self.gc_young_threshold, *older)
        if self.switch_interval_ms > 0 and self._saved_switch is None:
            self._saved_switch = sys.getswitchinterval()
            sys.setswitchinterval(self.switch_interval_ms / 1000)

    def restore(self) -> None:
        if self._saved_gc is not None:
            gc.set_threshold(*self._saved_gc)
            self._saved_gc = None
        if self._saved_switch is not None:
            sys.setswitchinterval(self._saved_switch)
            self._saved_switch = None
