"""Pipeline.shutdown stops the run loop at once, whatever the batch settings, and drains the queue."""

from __future__ import annotations

import asyncio
import time

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.store import Store
from toolwatch.detectors.events import ToolCall
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector


def calls(n: int, start: int = 0) -> list[ToolCall]:
    return [ToolCall(time_ns=i, agent_id="a", tool=f"t{i % 3}") for i in range(start, start + n)]


def slow_batching_pipeline(tmp_path) -> tuple[Pipeline, Store]:
    """The settings of the hang seen in the field: a batch fills for up to 600 s."""
    store = Store(tmp_path / "t.db")
    metrics = Metrics()
    det = NewToolDetector(NewToolConfig(min_calls=1))
    return Pipeline([det], AlertRouter(store, metrics, [], group_window_ns=0), store, metrics,
                    batch_max_size=100_000, batch_max_delay_s=600.0, snapshot_interval_s=3600), store


async def test_shutdown_right_after_a_submit_does_not_wait_for_the_batch_delay(tmp_path):
    """A submit wakes the run loop while it waits for its partial batch to fill; a shutdown in the
    same turn of the event loop cancels it. ``asyncio.wait_for`` (Python 3.11) swallowed that
    cancellation when the wake-up had already completed the wait, and the loop went back to
    waiting out the 600 s batch delay: shutdown hung with the task stuck "cancelling"."""
    p, store = slow_batching_pipeline(tmp_path)
    await p.start()
    assert p.submit(calls(491), [])
    await asyncio.sleep(0.05)  # the run loop now waits for the batch to fill (or 600 s)
    assert p.running and p.processed == 0
    assert p.submit(calls(1, 491), [])  # wakes the run loop...
    started = time.monotonic()
    await asyncio.wait_for(p.shutdown(), 10)  # ...and is cancelled in the same turn
    assert time.monotonic() - started < 10
    assert not p.running and p.processed == 492 and p.depth == 0
    assert store.load_state("new_tool")["agents"]["a"]["calls"] == 492


async def test_shutdown_while_waiting_for_a_batch_to_fill(tmp_path):
    p, store = slow_batching_pipeline(tmp_path)
    await p.start()
    assert p.submit(calls(492), [])
    await asyncio.sleep(0.05)
    await asyncio.wait_for(p.shutdown(), 10)
    assert p.processed == 492 and store.load_state("new_tool")["agents"]["a"]["calls"] == 492
