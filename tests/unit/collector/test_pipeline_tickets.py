"""Pipeline tickets: what at-least-once sources rely on to know input is processed and snapshotted."""

from __future__ import annotations

import asyncio
import threading

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.store import Store
from toolwatch.detectors.events import ToolCall
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector


def make(tmp_path, **kw):
    store = Store(tmp_path / "t.db")
    metrics = Metrics()
    det = NewToolDetector(NewToolConfig(min_calls=1))
    router = AlertRouter(store, metrics, [], group_window_ns=0)
    return Pipeline([det], router, store, metrics, batch_max_delay_s=0.001, snapshot_interval_s=3600, **kw), store


def calls(n, start=0, agent="a"):
    return [ToolCall(time_ns=i, agent_id=agent, tool=f"t{i % 3}") for i in range(start, start + n)]


async def test_tickets_are_done_in_order_and_saved_only_after_a_snapshot(tmp_path):
    p, store = make(tmp_path)
    await p.start()
    assert p.last_ticket == 0 and p.done_seq == 0
    assert p.submit(calls(5), [])
    t1 = p.last_ticket
    assert p.submit([], []) and p.last_ticket == t1  # nothing to do: no new ticket
    assert p.submit(calls(5, 5), [])
    t2 = p.last_ticket
    assert t2 == t1 + 1
    await p.drained()
    assert p.done_seq == t2
    assert p.saved_seq == 0 and store.load_state("new_tool") is None  # processed, not yet snapshotted
    p.request_snapshot()
    for _ in range(100):  # the pipeline task saves on its next turn of the loop
        if p.saved_seq >= t2:
            break
        await asyncio.sleep(0)
    assert p.saved_seq == t2
    assert store.load_state("new_tool")["agents"]["a"]["calls"] == 10
    await p.shutdown()
    await p.shutdown()


async def test_refused_submit_takes_no_ticket(tmp_path):
    p, _ = make(tmp_path, queue_max=4, batch_max_size=4)
    assert p.submit(calls(4), [])
    before = p.last_ticket
    assert not p.submit(calls(1, 4), [])
    assert p.last_ticket == before
    await p.start()
    await p.wait_progress()
    await p.drained()
    assert p.done_seq == before and p.processed == 4
    await p.shutdown()


class GateDetector:
    """Counts calls; its observe blocks until released (a batch still running at shutdown)."""

    name = "gate"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def observe(self, batch):
        self.entered.set()
        assert self.release.wait(10)
        self.calls += len(batch.calls)
        return []

    def snapshot(self) -> dict:
        return {"calls": self.calls}

    def restore(self, state: dict) -> None:
        self.calls = state["calls"]


async def test_shutdown_during_a_batch_snapshots_after_it(tmp_path):
    """The final snapshot waits for the batch in the worker thread; it used to read the detectors
    while that batch was changing them (and so saved a torn state, or failed)."""
    store = Store(tmp_path / "t.db")
    metrics = Metrics()
    gate = GateDetector()
    p = Pipeline([gate], AlertRouter(store, metrics, [], group_window_ns=0), store, metrics,
                 batch_max_delay_s=0.001, snapshot_interval_s=3600)
    await p.start()
    assert p.submit(calls(3), [])
    assert await asyncio.to_thread(gate.entered.wait, 5)
    asyncio.get_running_loop().call_later(0.3, gate.release.set)
    await p.shutdown()
    assert store.load_state("gate") == {"calls": 3}
