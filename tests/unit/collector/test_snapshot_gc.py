"""Saving detector state runs no garbage collection (it promoted the snapshot's own lists and
then collected the whole heap: most of exfiltration's and rules' snapshot cost)."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.gc_pause import gc_paused
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.store import Store
from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import Batch, Finding


class ManyLists(Detector):
    """A snapshot shaped like exfiltration's: many small lists, all alive until it is saved."""

    name = "many_lists"

    def __init__(self) -> None:
        self.collections: list[int] = []

    def observe(self, batch: Batch) -> list[Finding]:
        return []

    def snapshot(self) -> dict[str, Any]:
        return {"sessions": [[f"s{i}", [i, "srv", "tool", [i]]] for i in range(50_000)]}

    def restore(self, state: dict[str, Any]) -> None:
        return None


class Failing(ManyLists):
    name = "failing"

    def snapshot(self) -> dict[str, Any]:
        raise RuntimeError("boom")


def pipeline(tmp_path, *detectors: Detector) -> tuple[Pipeline, Store]:
    store = Store(tmp_path / "t.db")
    metrics = Metrics()
    router = AlertRouter(store, metrics, [], group_window_ns=0)
    return Pipeline(list(detectors), router, store, metrics, snapshot_interval_s=3600), store


@pytest.fixture
def collections():
    """Generations of the collections that start while the test runs."""
    seen: list[int] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    try:
        yield seen
    finally:
        gc.callbacks.remove(record)


def test_the_snapshot_alone_triggers_collections(collections):
    """The yardstick: without the pause, building that snapshot collects (else the next test proves nothing)."""
    assert gc.isenabled()
    state = ManyLists().snapshot()
    assert len(state["sessions"]) == 50_000
    assert collections


def test_save_state_collects_nothing_and_saves_the_same_state(tmp_path, collections):
    det = ManyLists()
    p, store = pipeline(tmp_path, det)
    p.save_state()
    assert collections == []
    assert gc.isenabled()
    assert store.load_state("many_lists") == det.snapshot()


def test_collection_is_back_on_after_a_failed_snapshot(tmp_path, collections):
    p, store = pipeline(tmp_path, Failing(), ManyLists())
    p.save_state()
    assert collections == [] and gc.isenabled()
    assert store.load_state("failing") is None and store.load_state("many_lists") is not None
    assert p.saved_seq == 0  # a detector that was not saved keeps its input unconfirmed


def test_gc_paused_leaves_a_disabled_collector_disabled():
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(KeyError):
        with gc_paused():
            raise KeyError("x")
    assert gc.isenabled()
