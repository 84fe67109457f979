"""Pipeline.shutdown stops the run loop at once, whatever the batch settings, finishes the batch in
hand and drains the queue."""

from __future__ import annotations

import asyncio
import time

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.store import Store
from tests.helpers.gate import Gate
from toolwatch.detectors.events import Finding, ToolCall
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
    same turn of the event loop stops it. When shutdown cancelled the loop, ``asyncio.wait_for``
    (Python 3.11) swallowed that cancellation when the wake-up had already completed the wait, and
    the loop went back to waiting out the 600 s batch delay: shutdown hung, stuck "cancelling"."""
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


class _FlagEveryAgentOnRelease(Gate):
    """Holds the first batch, then finds one thing per agent in every batch."""

    name = "flagger"

    def observe(self, batch) -> list[Finding]:
        super().observe(batch)
        return [Finding(detector=self.name, severity="high", agent_id=a, reason="held batch", time_ns=1)
                for a in sorted({c.agent_id for c in batch.calls})]


async def test_shutdown_while_a_batch_is_with_the_detectors_keeps_its_findings(tmp_path):
    """The batch in the worker thread when shutdown starts is finished, not abandoned: its alerts
    are stored and its calls counted. Cancelling the run loop used to drop them, while the
    detectors' state (saved next) already held the batch."""
    store = Store(tmp_path / "t.db")
    metrics = Metrics()
    gate = _FlagEveryAgentOnRelease()
    p = Pipeline([gate], AlertRouter(store, metrics, [], group_window_ns=0), store, metrics,
                 batch_max_size=10, batch_max_delay_s=0.0, snapshot_interval_s=3600)
    await p.start()
    held = [ToolCall(time_ns=i, agent_id=f"held-{i}", tool="t") for i in range(3)]
    assert p.submit(held, [])
    assert await asyncio.to_thread(gate.entered.wait, 5)
    assert p.submit([ToolCall(time_ns=9, agent_id="queued", tool="t")], [])
    stopping = asyncio.create_task(p.shutdown())
    await asyncio.sleep(0.1)  # shutdown is now waiting for the batch in hand
    gate.release.set()
    await asyncio.wait_for(stopping, 10)
    assert sorted(a.agent_id for a in store.list_alerts()) == ["held-0", "held-1", "held-2", "queued"]
    assert p.processed == 4 and p.depth == 0 and p.done_seq >= 2


async def test_a_run_loop_that_dies_says_so_and_shutdown_still_saves(tmp_path, caplog):
    """OTLP worker processes refuse early only while the pipeline runs: they hear when its run
    loop dies, not only when it is shut down; the error is logged and shutdown still saves state."""
    p, store = slow_batching_pipeline(tmp_path)
    p.batch_max_delay_s = 0.0
    heard: list[bool] = []
    p.running_listeners.append(heard.append)

    def broken_listener(batch, findings) -> None:
        raise RuntimeError("listener bug")

    p.batch_listeners.append(broken_listener)
    await p.start()
    assert p.submit(calls(5), [])
    deadline = time.monotonic() + 20  # a loaded machine's thread pool can take seconds to run the batch
    while p.running and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not p.running and heard == [True, False]
    assert "the pipeline's run loop stopped" in caplog.text and "listener bug" in caplog.text
    await asyncio.wait_for(p.shutdown(), 10)
    assert store.load_state("new_tool")["agents"]["a"]["calls"] == 5


async def test_a_cancelled_shutdown_still_finishes_the_batch_drains_and_saves_then_is_cancelled(tmp_path):
    """A shutdown cancelled while the batch in hand is with the detectors (a supervisor's timeout,
    a second Ctrl-C): awaiting the run loop handed the cancel on to it, so that batch's alerts and
    the queue behind it were lost and no state was saved. Now the cancel waits for all of it."""
    store = Store(tmp_path / "t.db")
    metrics = Metrics()
    gate = _FlagEveryAgentOnRelease()
    p = Pipeline([gate], AlertRouter(store, metrics, [], group_window_ns=0), store, metrics,
                 batch_max_size=10, batch_max_delay_s=0.0, snapshot_interval_s=3600)
    saved: list[int] = []
    p.state_listeners.append(saved.append)
    await p.start()
    assert p.submit([ToolCall(time_ns=i, agent_id=f"held-{i}", tool="t") for i in range(3)], [])
    assert await asyncio.to_thread(gate.entered.wait, 5)
    assert p.submit([ToolCall(time_ns=9, agent_id="queued", tool="t")], [])
    stopping = asyncio.create_task(p.shutdown())
    await asyncio.sleep(0.1)  # shutdown is now waiting for the batch in hand
    stopping.cancel()
    await asyncio.sleep(0.1)
    assert not stopping.done()  # the cancel waits for the shutdown's work
    gate.release.set()
    try:
        await asyncio.wait_for(stopping, 10)
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the cancel of shutdown was swallowed")
    assert sorted(a.agent_id for a in store.list_alerts()) == ["held-0", "held-1", "held-2", "queued"]
    assert p.processed == 4 and p.depth == 0 and saved and saved[-1] >= 2


async def test_a_run_loop_failing_during_the_stop_is_logged_and_the_rest_still_drained_and_saved(tmp_path, caplog):
    """The batch in hand when shutdown starts fails after the detectors (a batch listener's error):
    shutdown had taken the task, so ``_ended`` did not log it, and ``_finish`` passed over it: the
    error was never seen. The drain then stopped at the next failing batch, leaving the calls behind
    it (acknowledged) unprocessed and the detector state unsaved."""
    store = Store(tmp_path / "t.db")
    metrics = Metrics()
    gate = _FlagEveryAgentOnRelease()
    counted = NewToolDetector(NewToolConfig(min_calls=1))
    p = Pipeline([gate, counted], AlertRouter(store, metrics, [], group_window_ns=0), store, metrics,
                 batch_max_size=1, batch_max_delay_s=0.0, snapshot_interval_s=3600)

    def broken_listener(batch, findings) -> None:
        raise RuntimeError("listener bug")

    p.batch_listeners.append(broken_listener)
    await p.start()
    assert p.submit([ToolCall(time_ns=1, agent_id="a", tool="held")], [])
    assert await asyncio.to_thread(gate.entered.wait, 5)
    for i in range(3):
        assert p.submit([ToolCall(time_ns=2 + i, agent_id="a", tool=f"queued{i}")], [])
    stopping = asyncio.create_task(p.shutdown())
    await asyncio.sleep(0.1)  # shutdown is now waiting for the batch in hand
    gate.release.set()
    await asyncio.wait_for(stopping, 10)
    assert "the pipeline's run loop failed while stopping: RuntimeError('listener bug')" in caplog.text
    drained = [r for r in caplog.records if "a batch failed while the pipeline drained for shutdown" in r.getMessage()]
    assert len(drained) == 3 and all(r.exc_info and "listener bug" in str(r.exc_info[1]) for r in drained)
    assert store.load_state("new_tool")["agents"]["a"]["calls"] == 4
    assert p.depth == 0


async def test_a_run_loop_that_died_before_the_stop_is_logged_once(tmp_path, caplog):
    p, store = slow_batching_pipeline(tmp_path)
    p.batch_max_delay_s = 0.0

    def broken_listener(batch, findings) -> None:
        raise RuntimeError("listener bug")

    p.batch_listeners.append(broken_listener)
    await p.start()
    assert p.submit(calls(5), [])
    deadline = time.monotonic() + 20
    while p.running and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(p.shutdown(), 10)
    assert sum("listener bug" in r.getMessage() for r in caplog.records) == 1


async def test_a_batch_that_failed_after_the_detectors_is_never_counted_done(tmp_path):
    """``done_seq`` (and so ``saved_seq``, up to which Kafka commits offsets) went past a batch whose
    accounting failed (its alerts perhaps never stored) as soon as a later batch succeeded: the
    drain at shutdown processed the rest, and the failed batch's offsets could be committed."""
    p, store = slow_batching_pipeline(tmp_path)
    p.batch_max_size, p.batch_max_delay_s = 1, 0.0
    failing = {2}
    seen = 0

    def listener_failing_on_the_second_batch(batch, findings) -> None:
        nonlocal seen
        seen += 1
        if seen in failing:
            raise RuntimeError("listener bug")

    p.batch_listeners.append(listener_failing_on_the_second_batch)
    gate = Gate()
    p.detectors.insert(0, gate)  # holds the first batch until all three are queued
    await p.start()
    for i in range(3):
        assert p.submit([ToolCall(time_ns=i, agent_id="a", tool=f"t{i}")], [])
    assert await asyncio.to_thread(gate.entered.wait, 5)
    gate.release.set()
    deadline = time.monotonic() + 20
    while p.running and time.monotonic() < deadline:  # the second batch kills the run loop
        await asyncio.sleep(0.01)
    assert not p.running and p.done_seq == 1
    await asyncio.wait_for(p.shutdown(), 10)  # drains the third
    assert store.load_state("new_tool")["agents"]["a"]["calls"] == 3
    assert p.done_seq == 1 and p.saved_seq == 1
