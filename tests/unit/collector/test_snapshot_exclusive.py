"""Snapshots from outside the run loop (the Kafka receiver's hand-over at a rebalance) never read
detector state while a batch, an approval or a rule reload is changing it, and never block the
event loop while they wait for them."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.config import KafkaConfig
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.receivers.kafka import KafkaReceiver
from toolwatch.collector.store import Store
from toolwatch.detectors.events import Batch, Finding, ToolCall
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector


class HeldDetector(NewToolDetector):
    """A real detector whose ``observe`` of agent "held"'s calls waits for ``release``: a batch
    stays in the detectors (the worker thread, under the detector lock) as long as the test wants."""

    def __init__(self) -> None:
        super().__init__(NewToolConfig(min_calls=1))
        self.inside = threading.Event()
        self.release = threading.Event()

    def observe(self, batch: Batch) -> list[Finding]:
        if any(c.agent_id == "held" for c in batch.calls):
            self.inside.set()
            assert self.release.wait(20), "the test never released the batch"
        return super().observe(batch)


def _pipeline(tmp_path) -> tuple[Pipeline, HeldDetector, Store]:
    store, metrics, det = Store(tmp_path / "t.db"), Metrics(), HeldDetector()
    router = AlertRouter(store, metrics, [], group_window_ns=0)
    return Pipeline([det], router, store, metrics, batch_max_delay_s=0.001, snapshot_interval_s=3600), det, store


def _calls(n: int, agent: str) -> list[ToolCall]:
    return [ToolCall(time_ns=i + 1, agent_id=agent, tool=f"t{i}") for i in range(n)]


def _receiver(p: Pipeline) -> KafkaReceiver:
    rx = KafkaReceiver(KafkaConfig(enabled=True), None, p, Metrics(), SimpleNamespace(flush=lambda timeout_s=None: None),
                       lambda: None, max_record_bytes=1 << 20, settle_timeout_s=10)
    rx._loop = asyncio.get_running_loop()
    return rx


def _locked_at_save(p: Pipeline) -> list[bool]:
    held: list[bool] = []
    p.state_listeners.append(lambda _seq: held.append(p.detector_lock.locked()))
    return held


async def test_the_rebalance_snapshot_waits_for_an_approval_or_rule_reload_holding_the_detector_lock(tmp_path):
    """``_drain_and_save`` called ``save_state`` straight away: while a rule reload or an approval
    (``Pipeline.exclusive``, the detector lock in a worker thread) was changing detector state."""
    p, det, store = _pipeline(tmp_path)
    rx = _receiver(p)
    held = _locked_at_save(p)
    await p.start()
    try:
        assert p.submit(_calls(3, "a"), [])
        await p.drained()
        inside, release = threading.Event(), threading.Event()

        def reload() -> None:  # as a rule reload: state changed under the lock, in two steps
            inside.set()
            assert release.wait(20)
            det.state_for("reloaded")

        holder = asyncio.create_task(p.exclusive(reload))
        assert await asyncio.to_thread(inside.wait, 10)
        saving = asyncio.create_task(asyncio.to_thread(rx._drain_and_save))  # the consumer thread, at a rebalance
        ticks = 0
        for _ in range(30):  # the event loop keeps running while the save waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 30 and not saving.done()
        assert store.load_state("new_tool") is None  # was saved here, halfway through the reload
        release.set()
        await holder
        await asyncio.wait_for(saving, 10)
        assert set(store.load_state("new_tool")["agents"]) == {"a", "reloaded"}
        assert held == [True]
    finally:
        release.set()
        await p.shutdown()
        store.close()


async def test_a_save_from_outside_the_run_loop_waits_for_the_batch_in_the_detectors_and_its_accounting(tmp_path):
    p, det, store = _pipeline(tmp_path)
    held = _locked_at_save(p)
    await p.start()
    try:
        assert p.submit(_calls(2, "a"), [])
        await p.drained()
        assert p.submit(_calls(4, "held"), [])
        ticket = p.last_ticket
        assert await asyncio.to_thread(det.inside.wait, 10)  # the batch is in the detectors
        saving = asyncio.create_task(p.save_state_exclusive())
        await asyncio.sleep(0.2)
        assert not saving.done() and store.load_state("new_tool") is None
        det.release.set()
        await asyncio.wait_for(saving, 10)
        # Saved after the batch and its accounting: saved_seq covers exactly what the state holds.
        assert p.saved_seq == p.done_seq == ticket
        assert store.load_state("new_tool")["agents"]["held"]["calls"] == 4
        assert held == [True]
    finally:
        det.release.set()
        await p.shutdown()
        store.close()


async def test_the_run_loops_own_snapshot_waits_for_an_approval_or_rule_reload_holding_the_detector_lock(tmp_path):
    """The periodic (and the Kafka commit's) snapshot came between batches, but not between an
    approval's or a rule reload's changes, which run in a worker thread under the detector lock."""
    p, det, store = _pipeline(tmp_path)
    held = _locked_at_save(p)
    await p.start()
    release = threading.Event()
    try:
        assert p.submit(_calls(3, "a"), [])
        await p.drained()
        inside = threading.Event()

        def reload() -> None:
            inside.set()
            assert release.wait(20)
            det.state_for("reloaded")

        holder = asyncio.create_task(p.exclusive(reload))
        assert await asyncio.to_thread(inside.wait, 10)
        p.request_snapshot()
        await asyncio.sleep(0.2)
        assert store.load_state("new_tool") is None and p.saved_seq == 0  # was saved here, mid-reload
        release.set()
        await holder
        for _ in range(200):
            if p.saved_seq:
                break
            await asyncio.sleep(0.01)
        assert p.saved_seq == p.done_seq
        assert set(store.load_state("new_tool")["agents"]) == {"a", "reloaded"}
        assert held == [True]
    finally:
        release.set()
        await p.shutdown()
        store.close()
