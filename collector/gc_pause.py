"""Cyclic garbage collection held off while detector state is snapshotted.

Why: a snapshot builds hundreds of thousands of short-lived lists (one per session, per taint
entry, ...). While they are being built they survive the young collections that their own
allocation triggers, so the collector promotes them to the oldest generation, and once enough
have been promoted it runs a full collection of the whole heap (~0.4 s with fleet state). That
was most of what exfiltration's and rules' ``snapshot()`` cost. With collection paused, the
lists are freed by reference counting when the save is done and are never promoted: the full
collections are avoided, not postponed. Snapshots make no reference cycles, so nothing is
left for the collector to find.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable automatic garbage collection inside the block; restore the previous setting after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
