"""RuleFileWatcher.shutdown swallows its poll loop's own cancellation, not a cancel of its caller."""

from __future__ import annotations

import asyncio

import pytest

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.rules_watch import RuleFileWatcher
from toolwatch.collector.store import Store
from toolwatch.detectors.rules.engine import RuleEngine, RuleEngineConfig
from toolwatch.detectors.rules.loader import load_rule_files


async def _watcher(tmp_path) -> tuple[RuleFileWatcher, Store]:
    rules = tmp_path / "ops.rules.yaml"
    rules.write_text("[]\n")
    engine = RuleEngine(load_rule_files([]), config=RuleEngineConfig(files=(str(rules),)))
    store, metrics = Store(tmp_path / "t.db"), Metrics()
    pipeline = Pipeline([engine], AlertRouter(store, metrics, [], group_window_ns=0), store, metrics)
    watcher = RuleFileWatcher(engine, pipeline, metrics, interval_s=600)
    await watcher.start()
    return watcher, store


async def test_a_cancel_of_the_shutdown_itself_is_passed_on(tmp_path):
    watcher, store = await _watcher(tmp_path)
    polling = watcher._task
    stopping = asyncio.create_task(watcher.shutdown())
    await asyncio.sleep(0)  # shutdown has cancelled the poll loop and waits for it...
    stopping.cancel()  # ...when it is cancelled itself
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert stopping.cancelled() and polling.done() and watcher._task is None
    store.close()


async def test_shutdown_in_a_task_cancelled_earlier_still_returns(tmp_path):
    """A daemon shutdown goes on after an earlier step was cancelled; its task still counts that cancel."""
    watcher, store = await _watcher(tmp_path)
    polling = watcher._task

    async def after_a_cancel() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        await watcher.shutdown()

    task = asyncio.create_task(after_a_cancel())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait_for(task, 10)
    assert not task.cancelled() and polling.done() and watcher._task is None
    store.close()
