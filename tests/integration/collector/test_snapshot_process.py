"""Detector-state snapshots written by a forked child (``pipeline.snapshot_process``): the child
writes the state as of the fork while the daemon goes on with batches; ``saved_seq`` moves only
once it is written; a state an approval saved after the fork is kept; a child that fails or hangs
is reported and the save is made in the daemon."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.config import Config, ConfigError, config_from_mapping, snapshot_in_process
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.snapshot_process import fork_snapshot
from toolwatch.collector.state_json import dumps_state
from toolwatch.collector.store import Store
from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import Batch, Finding, ToolCall
from toolwatch.detectors.iforest_detector import ForestConfig, IsolationForestDetector
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector

PARENT = os.getpid()


class Counting(Detector):
    """Counts the calls it observed. Its snapshot in a child process (never in the test's own) takes
    ``child_delay_s``, raises with ``child_fails``, and records the CPUs the child may run on."""

    name = "counting"

    def __init__(self, child_delay_s: float = 0.0, child_fails: bool = False) -> None:
        self.calls = 0
        self.child_delay_s = child_delay_s
        self.child_fails = child_fails

    def observe(self, batch: Batch) -> list[Finding]:
        self.calls += len(batch.calls)
        return []

    def snapshot(self) -> dict[str, Any]:
        in_child = os.getpid() != PARENT
        if in_child:
            if self.child_fails:
                raise RuntimeError("snapshot refused in the child")
            time.sleep(self.child_delay_s)
        return {"calls": self.calls, "in_child": in_child, "cpus": sorted(os.sched_getaffinity(0))}

    def restore(self, state: dict[str, Any]) -> None:
        self.calls = state["calls"]


def _calls(n: int, agent: str = "a") -> list[ToolCall]:
    return [ToolCall(time_ns=i + 1, agent_id=agent, server="s", tool=f"t{i % 3}", session_id="s1") for i in range(n)]


def _pipeline(tmp_path, dets: list[Detector], **kw: Any) -> tuple[Pipeline, Store, Metrics]:
    store, metrics = Store(tmp_path / "t.db"), Metrics()
    router = AlertRouter(store, metrics, [], group_window_ns=0)
    p = Pipeline(dets, router, store, metrics, batch_max_delay_s=0.001, snapshot_interval_s=3600,
                 snapshot_process=True, **kw)
    return p, store, metrics


def _snapshots(metrics: Metrics, where: str, outcome: str) -> float:
    return metrics.registry.get_sample_value("toolwatch_state_snapshots_total",
                                             {"where": where, "outcome": outcome}) or 0.0


def test_a_child_writes_what_the_daemon_would_have_written(tmp_path):
    """Real detectors with state (IsolationForest windows and sessions, new_tool's known tools): the
    child's rows read back as the daemon's own ``snapshot()`` of the same moment."""
    dets: list[Detector] = [IsolationForestDetector(ForestConfig(min_rows=16, warm_calls=0)),
                            NewToolDetector(NewToolConfig(min_calls=1))]
    for k in range(4):
        batch = Batch(calls=_calls(40, agent=f"agent{k}"), listings=[])
        for d in dets:
            d.observe(batch)
    store = Store(tmp_path / "t.db")
    child = fork_snapshot(dets, store.state_path, seq=7, generation=store.reserve_generation(), now=123.0)
    assert child.wait(60) is None
    for d in dets:
        assert store.load_state(d.name) == json.loads(dumps_state(d.snapshot())), d.name


async def test_batches_go_on_while_the_child_writes_and_saved_seq_waits_for_it(tmp_path):
    det = Counting(child_delay_s=1.5)
    p, store, metrics = _pipeline(tmp_path, [det])
    seen: list[int] = []
    p.state_listeners.append(seen.append)
    await p.start()
    try:
        assert p.submit(_calls(5), [])
        await p.drained()
        p.request_snapshot()
        p._wake.set()
        for _ in range(200):
            if p._child is not None:
                break
            await asyncio.sleep(0.01)
        assert p._child is not None, "no snapshot process started"
        forked_at = p.done_seq
        assert p.submit(_calls(3), [])  # processed while the child still sleeps in its snapshot
        await p.drained()
        assert det.calls == 8 and p.done_seq > forked_at
        assert p.saved_seq == 0 and seen == []
        await asyncio.wait_for(asyncio.shield(p._child), 30)
        assert p.saved_seq == forked_at and seen == [forked_at]
        assert 0 < p.last_save_s < 1.0  # the child's CPU time (what the Kafka receiver spaces by), not its 1.5 s
        state = store.load_state("counting")
        assert state["calls"] == 5 and state["in_child"] is True  # the state as of the fork, not of now
        assert _snapshots(metrics, "process", "ok") == 1
    finally:
        await p.shutdown()
    assert store.load_state("counting")["calls"] == 8  # the stop's save: after everything


async def test_a_state_saved_after_the_fork_is_not_replaced_by_the_child(tmp_path):
    """An approval saves its detector's state (``Store.save_state``) while a child started before it
    still writes: the child's older state must not put the approval back."""
    det, other = Counting(child_delay_s=1.0), NewToolDetector(NewToolConfig(min_calls=1))
    p, store, _metrics = _pipeline(tmp_path, [det, other])
    await p.start()
    try:
        assert p.submit(_calls(4), [])
        await p.drained()
        saving = asyncio.create_task(p.save_state_exclusive())
        for _ in range(200):
            if p._child is not None:
                break
            await asyncio.sleep(0.01)
        assert p._child is not None
        store.save_state("counting", {"calls": 999, "approved": True})
        await asyncio.wait_for(saving, 30)
        assert store.load_state("counting") == {"calls": 999, "approved": True}
        assert store.load_state("new_tool") == json.loads(dumps_state(other.snapshot()))
    finally:
        p.snapshot_process = False
        await p.shutdown()


async def test_a_failing_child_is_reported_and_the_daemon_saves_instead(tmp_path, caplog):
    det = Counting(child_fails=True)
    p, store, metrics = _pipeline(tmp_path, [det])
    await p.start()
    try:
        assert p.submit(_calls(6), [])
        await p.drained()
        with caplog.at_level(logging.WARNING, logger="toolwatch.pipeline"):
            await asyncio.wait_for(p.save_state_exclusive(), 30)
        assert "snapshot refused in the child" in caplog.text and "saved in the daemon's process" in caplog.text
        assert p.snapshot_process is False
        assert p.saved_seq == p.done_seq
        assert store.load_state("counting") == {"calls": 6, "in_child": False, "cpus": sorted(os.sched_getaffinity(0))}
        assert _snapshots(metrics, "process", "failed") == 1 and _snapshots(metrics, "daemon", "ok") == 1
    finally:
        await p.shutdown()


async def test_a_hung_child_is_killed_after_the_timeout(tmp_path, caplog):
    det = Counting(child_delay_s=60)
    p, store, metrics = _pipeline(tmp_path, [det], snapshot_timeout_s=1.0)
    await p.start()
    try:
        assert p.submit(_calls(2), [])
        await p.drained()
        t = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="toolwatch.pipeline"):
            await asyncio.wait_for(p.save_state_exclusive(), 30)
        assert time.monotonic() - t < 20
        assert "did not finish within 1 s and was killed" in caplog.text
        assert store.load_state("counting")["in_child"] is False and p.saved_seq == p.done_seq
    finally:
        await p.shutdown()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell masks apart")
async def test_the_child_runs_on_the_cpus_it_is_given(tmp_path):
    """The daemon's threads may be pinned to one CPU (cpu_affinity); the child gets the mask from
    before the pin, as the worker processes do."""
    allowed = sorted(os.sched_getaffinity(0))
    det = Counting()
    p, store, _m = _pipeline(tmp_path, [det], child_cpus=lambda: {allowed[0]})
    await p.start()
    try:
        assert p.submit(_calls(1), [])
        await p.drained()
        await asyncio.wait_for(p.save_state_exclusive(), 30)
        state = store.load_state("counting")
        assert state["in_child"] is True and state["cpus"] == [allowed[0]]
    finally:
        p.snapshot_process = False
        await p.shutdown()


def test_generations_keep_the_newest_state_across_restarts(tmp_path):
    from toolwatch.collector.store import write_states

    store = Store(tmp_path / "t.db")
    old = store.reserve_generation()
    store.save_state("d", {"v": "newer"})
    write_states(store.state_db, [("d", b'{"v": "older"}'), ("e", b'{"v": 1}')], old, 1.0)
    assert store.load_state("d") == {"v": "newer"} and store.load_state("e") == {"v": 1}
    store.close()
    reopened = Store(tmp_path / "t.db")
    assert reopened.reserve_generation() > old + 1  # continues after what is stored


def test_state_an_older_version_kept_in_the_main_database_moves_to_the_state_database(tmp_path):
    import sqlite3

    old = sqlite3.connect(tmp_path / "toolwatch.db")
    old.executescript("CREATE TABLE detector_state (name TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL);"
                      "INSERT INTO detector_state VALUES ('volume', '{\"agents\": {\"a\": 1}}', 5.0);")
    old.commit()
    old.close()
    store = Store(tmp_path / "toolwatch.db")
    assert store.state_path == tmp_path / "toolwatch-state.db"
    assert store.load_state("volume") == {"agents": {"a": 1}}
    assert store.db.execute("SELECT name FROM sqlite_master WHERE name='detector_state'").fetchone() is None
    store.save_state("volume", {"agents": {}})
    store.close()
    assert Store(tmp_path / "toolwatch.db").load_state("volume") == {"agents": {}}


def test_setting_snapshot_process():
    assert config_from_mapping({"pipeline": {"snapshot_process": False}}).pipeline.snapshot_process == "off"
    assert config_from_mapping({"pipeline": {"snapshot_process": True}}).pipeline.snapshot_process == "on"
    cfg = Config()
    cfg.validate()
    assert cfg.pipeline.snapshot_process == "auto"
    assert snapshot_in_process(cfg, Store(":memory:").state_path) is False
    assert snapshot_in_process(cfg, Path("/tmp/x-state.db")) is True
    bad = config_from_mapping({"pipeline": {"snapshot_process": "sometimes"}})
    with pytest.raises(ConfigError, match=r"pipeline.snapshot_process: 'sometimes' is not one of auto, on, off"):
        bad.validate()
    changelog = {"kafka": {"enabled": True, "state_changelog_topic": "states"}}
    cfg = config_from_mapping(changelog)
    cfg.validate()
    assert snapshot_in_process(cfg, Path("/tmp/x-state.db")) is False
    with pytest.raises(ConfigError, match="pipeline.snapshot_process: on cannot be used with kafka.state_changelog_topic"):
        config_from_mapping({**changelog, "pipeline": {"snapshot_process": "on"}}).validate()


DAEMON_WITH_GRPC = r'''
import asyncio, sys, tempfile
from toolwatch.collector.config import Config
from toolwatch.collector.daemon import Daemon
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

async def main():
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(otlp_http="off", otlp_grpc="127.0.0.1:0", listen="127.0.0.1:0", data_dir=tmp,
                     fingerprint_key="k" * 32)
        cfg.pipeline.snapshot_interval_s = 0.3
        cfg.validate()
        d = Daemon(cfg)
        await d.start()
        tp = TracerProvider()
        exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{d.receiver('otlp_grpc').bound_port}", insecure=True)
        tp.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = tp.get_tracer("test")

        def call(i):
            with tracer.start_as_current_span("execute_tool lookup", attributes={
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup", "gen_ai.agent.id": "a"}):
                pass

        for i in range(20):
            await asyncio.to_thread(call, i)
            await asyncio.sleep(0.05)
        await d.pipeline.drained()
        await asyncio.sleep(0.5)
        saves = d.metrics.registry.get_sample_value(
            "toolwatch_state_snapshots_total", {"where": "process", "outcome": "ok"}) or 0
        received = d.pipeline.processed
        await d.shutdown()
        tp.shutdown()
        print(f"saves={saves:.0f} processed={received}")

asyncio.run(main())
'''


def test_snapshot_processes_beside_the_grpc_receiver_leave_stderr_quiet():
    """gRPC's fork handlers logged a line to stderr at every snapshot fork while the OTLP/gRPC receiver
    ran; the collector package turns them off (GRPC_ENABLE_FORK_SUPPORT), the snapshots still work."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    out = subprocess.run([sys.executable, "-c", DAEMON_WITH_GRPC], capture_output=True, text=True, timeout=120,
                         env=env, cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 0, out.stderr[-3000:]
    saves, processed = (int(part.split("=")[1]) for part in out.stdout.split())
    assert saves >= 2 and processed >= 20
    assert "fork() handlers" not in out.stderr
