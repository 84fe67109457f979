"""The pipeline hands detectors each batch sorted by event time, and ``by_time()`` is that list itself."""

from __future__ import annotations

import random

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.store import Store
from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import Batch, Finding, ToolCall


class Recorder(Detector):
    """Keeps what each batch's ``calls`` and ``by_time()`` were (detectors read both)."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[list[ToolCall], list[ToolCall], bool]] = []

    def observe(self, batch: Batch) -> list[Finding]:
        ordered = batch.by_time()
        self.seen.append((list(batch.calls), list(ordered), ordered is batch.calls))
        return []

    def snapshot(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        return None


async def test_batches_are_stably_time_sorted_and_by_time_reuses_them(tmp_path):
    store = Store(tmp_path / "t.db")
    metrics = Metrics()
    rec = Recorder()
    p = Pipeline([rec], AlertRouter(store, metrics, [], group_window_ns=0), store, metrics,
                 batch_max_size=64, batch_max_delay_s=0.001, snapshot_interval_s=3600)
    rnd = random.Random(3)
    # Requests out of order and with many equal times: ties must keep their submit order.
    requests = [[ToolCall(time_ns=1_000 + rnd.randrange(20), agent_id=f"r{r}-{i}", tool="t") for i in range(rnd.randrange(1, 30))]
                for r in range(40)]
    for req in requests:
        assert p.submit(req, [])
    await p.start()
    await p.drained()
    await p.shutdown()
    store.close()
    assert sum(len(calls) for calls, _, _ in rec.seen) == sum(map(len, requests))
    submitted = [c for req in requests for c in req]
    done = 0
    for calls, ordered, shared in rec.seen:
        expected = sorted(submitted[done: done + len(calls)], key=lambda c: c.time_ns)
        assert [c.agent_id for c in calls] == [c.agent_id for c in expected]  # stable: ties in submit order
        assert ordered == calls and shared
        done += len(calls)
