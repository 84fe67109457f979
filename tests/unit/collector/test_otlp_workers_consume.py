"""The daemon's side of an INGEST frame (``OtlpHttpWorkers._consume``), without worker processes."""

from __future__ import annotations

import time

import pytest

from tests.helpers.otlp_build import add_span, request
from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.normalize import Normalizer
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.receivers import Ingest
from toolwatch.collector.receivers import worker_frames as wf
from toolwatch.collector.receivers.otlp_workers import OtlpHttpWorkers
from toolwatch.collector.store import Store
from toolwatch.instrumentation import semconv as sc


def _receiver() -> tuple[OtlpHttpWorkers, Pipeline]:
    store, metrics = Store(":memory:"), Metrics()
    # No detectors, and a partial batch waits a minute: what was admitted stays in the queue to be read.
    pipeline = Pipeline([], AlertRouter(store, metrics, [], group_window_ns=0), store, metrics,
                        batch_max_size=10_000, batch_max_delay_s=60, snapshot_interval_s=3600)  # fmt: skip
    ingest = Ingest(Normalizer(lambda text: text), pipeline, metrics)
    return OtlpHttpWorkers("127.0.0.1", 0, ingest, metrics, processes=1, fingerprint_key="k", max_body_bytes=1 << 20), pipeline


def _norm(agent: str, n: int, tool: str = "tool"):
    req = request("svc")
    now = time.time_ns()
    for i in range(n):
        add_span(req, {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: f"{tool}{i % 3}",
                       sc.GEN_AI_AGENT_ID: agent, sc.MCP_SESSION_ID: "s1"}, start_ns=now + i)  # fmt: skip
    return Normalizer(lambda text: text).normalize(req)


def _body(data: bytes) -> tuple:
    return wf.unframe(data[wf.HEADER.size :])


async def test_calls_admitted_from_frames_equal_the_normalisers_and_share_objects_across_requests():
    receiver, pipeline = _receiver()
    await pipeline.start()
    try:
        norms = [_norm("agent-1", 4), _norm("agent-1", 3)]
        for rid, norm in enumerate(norms, 1):
            reply = _body(receiver._consume(_body(wf.ingest_frame(rid, "otlp_http", norm, 0, ()))))
            assert reply == (wf.REPLY, rid, wf.OK, len(norm.calls), 0, "")
        queued = [item.calls for item in pipeline._queue]
        assert queued == [norm.calls for norm in norms]
        assert [c.token for calls in queued for c in calls] == [c.token for norm in norms for c in norm.calls]
        first, second = queued[0][0], queued[1][0]
        for name in ("agent_id", "tool", "session_id", "token"):
            assert getattr(first, name) is getattr(second, name), name
    finally:
        await pipeline.shutdown()


async def test_a_frame_whose_columns_do_not_fit_is_answered_unavailable_and_admits_nothing():
    receiver, pipeline = _receiver()
    await pipeline.start()
    try:
        msg = list(_body(wf.ingest_frame(9, "otlp_http", _norm("a", 3), 0, ())))
        n, columns = msg[3]
        msg[3] = (n + 1, columns)  # one call more than the columns hold
        reply = _body(receiver._consume(tuple(msg)))
        assert reply[:3] == (wf.REPLY, 9, wf.UNAVAILABLE) and "ValueError" in reply[5]
        assert pipeline.depth == 0
    finally:
        await pipeline.shutdown()


async def test_frames_of_a_worker_value_table_admit_its_calls_and_one_out_of_step_is_raised():
    """Frames built with the worker's value table are read with that worker's mirror; a frame that does
    not follow it (a frame lost) is raised, so ``_serve`` stops the worker rather than misread the rest."""
    receiver, pipeline = _receiver()
    await pipeline.start()
    try:
        table, mirror = wf.ValueTable(), wf.TableMirror()
        norms = [_norm("agent-1", 4), _norm("agent-2", 3)]
        for rid, norm in enumerate(norms, 1):
            frame = wf.ingest_frame(rid, "otlp_http", norm, 0, (), table=table)
            assert _body(receiver._consume(_body(frame), mirror)) == (wf.REPLY, rid, wf.OK, len(norm.calls), 0, "")
        assert [item.calls for item in pipeline._queue] == [norm.calls for norm in norms]
        wf.ingest_frame(3, "otlp_http", _norm("agent-3", 3, "other"), 0, (), table=table)  # new tools, never sent
        with pytest.raises(wf.OutOfStep):
            receiver._consume(_body(wf.ingest_frame(4, "otlp_http", _norm("agent-4", 3), 0, (), table=table)), mirror)
        assert pipeline.depth == 7
    finally:
        await pipeline.shutdown()
