"""Under overload a request is refused before it is normalised (issue #4: sustained throughput).

With the queue full, exporters resend refused requests again and again; normalising every
resend only to refuse it took the CPU the detectors needed, so throughput fell as the backlog
lasted. These tests fail if the refusal happens after normalising, or if it ever refuses
something the exact (per-event) check would have let in when every span is a tool call.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.otlp_build import add_span, request
from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.normalize import Normalizer
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.receivers import Ingest, Overloaded, span_count
from toolwatch.collector.store import Store
from toolwatch.detectors.events import ToolCall
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector
from toolwatch.instrumentation import semconv as sc


class CountingNormalizer(Normalizer):
    """The real normalizer; counts how often it ran."""

    def __init__(self) -> None:
        super().__init__(lambda text: text)
        self.runs = 0

    def normalize(self, req):  # type: ignore[no-untyped-def]
        self.runs += 1
        return super().normalize(req)


def make(tmp_path, queue_max: int) -> tuple[Pipeline, Metrics]:
    # in memory: the property test builds hundreds of pipelines, and a file store's fsyncs made it minutes long
    store = Store(":memory:")
    metrics = Metrics()
    router = AlertRouter(store, metrics, [], group_window_ns=0)
    # A partial batch waits up to a minute to fill: nothing is processed while the test runs.
    p = Pipeline([NewToolDetector(NewToolConfig(min_calls=1))], router, store, metrics, queue_max=queue_max,
                 batch_max_size=10_000, batch_max_delay_s=60, snapshot_interval_s=3600)
    return p, metrics


def body(tools: int, other: int = 0):
    req = request("svc")
    now = time.time_ns()
    for i in range(tools):
        add_span(req, {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: f"t{i}",
                       sc.GEN_AI_AGENT_ID: "a"}, start_ns=now)
    for _ in range(other):
        add_span(req, {"http.method": "GET"}, start_ns=now)  # not a tool span
    return req


def refused(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("toolwatch_requests_rejected_total",
                                             {"receiver": "otlp_http", "reason": "queue_full"}) or 0.0


async def test_a_request_that_cannot_fit_is_refused_without_normalising(tmp_path):
    p, metrics = make(tmp_path, queue_max=10)
    norm = CountingNormalizer()
    ingest = Ingest(norm, p, metrics)
    await p.start()
    try:
        assert ingest("otlp_http", body(8)).spans == 8
        assert norm.runs == 1 and p.depth == 8
        for _ in range(5):  # an exporter retrying while the queue stays full
            with pytest.raises(Overloaded, match="queue is full"):
                ingest("otlp_http", body(3))
        assert norm.runs == 1, "a refused request was normalised"
        assert refused(metrics) == 5 and p.depth == 8 and p.last_ticket == 1
        assert ingest("otlp_http", body(2)).spans == 2  # exactly fills the queue
        assert p.depth == 10 and norm.runs == 2
    finally:
        await p.shutdown()


async def test_a_request_larger_than_the_queue_is_judged_by_its_events(tmp_path):
    """Spans only bound the events: one bigger than the whole queue goes to the exact check, so
    it is admitted when its tool calls fit instead of being refused forever."""
    p, metrics = make(tmp_path, queue_max=10)
    ingest = Ingest(CountingNormalizer(), p, metrics)
    await p.start()
    try:
        req = body(2, other=20)
        assert span_count(req) == 22
        assert ingest("otlp_http", req).spans == 22
        assert p.depth == 2 and refused(metrics) == 0
    finally:
        await p.shutdown()


def test_span_count_counts_every_scope_and_resource():
    req = body(3, other=1)
    rs = req.resource_spans.add()
    rs.scope_spans.add()
    rs.scope_spans.add().spans.add()
    assert span_count(req) == 5


@settings(max_examples=150, deadline=None)
@given(queue_max=st.integers(1, 60), depth=st.integers(0, 60), n=st.integers(1, 80))
def test_early_refusal_agrees_with_submit_when_every_span_is_an_event(tmp_path_factory, queue_max, depth, n):
    """The fast check (spans, before normalising) and the reference (``submit``, counting events)
    give the same answer whenever every span is a tool call."""
    depth = min(depth, queue_max)
    p, _ = make(tmp_path_factory.mktemp("p"), queue_max=queue_max)
    assert depth == 0 or p.submit([ToolCall(time_ns=i, agent_id="a", tool="t") for i in range(depth)], [])
    early = p.full_for(n)
    exact = not p.submit([ToolCall(time_ns=i, agent_id="a", tool="t") for i in range(n)], [])
    assert early == (exact and n <= queue_max)
    assert not early or exact, "refused early what would have fitted"


def test_normalized_spans_match_span_count():
    """``span_count`` is the ``spans`` the normalizer reports, so both agree on what a request is."""
    req = body(4, other=3)
    assert Normalizer(lambda text: text).normalize(req).spans == span_count(req)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_queue_whose_oldest_events_waited_too_long_refuses_until_it_is_fresh_again(tmp_path):
    """``queue_max_wait_s``: the detectors not keeping up is judged by how long the oldest queued
    events have waited, not only by their number; refused before normalising, like a full queue,
    and the OTLP worker processes are told through the depth listeners."""
    clock = Clock()
    store, metrics = Store(":memory:"), Metrics()
    p = Pipeline([NewToolDetector(NewToolConfig(min_calls=1))], AlertRouter(store, metrics, [], group_window_ns=0),
                 store, metrics, queue_max=1000, queue_max_wait_s=0.3, batch_max_size=100, batch_max_delay_s=0.2,
                 snapshot_interval_s=3600, clock=clock)
    shared: list[tuple[int, bool]] = []
    p.depth_listeners.append(lambda depth, behind: shared.append((depth, behind)))
    norm = CountingNormalizer()
    ingest = Ingest(norm, p, metrics)
    await p.start()  # its run loop never gets a turn below (no await): the test takes the batch itself
    assert ingest("otlp_http", body(3)).spans == 3
    clock.now += 0.4
    assert ingest("otlp_http", body(2)).spans == 2 and not p.behind()
    assert shared == [(3, False), (5, False)]
    clock.now += 0.2  # the first request has waited 0.6 s: past 0.2 + 0.3
    assert p.behind() and p.full_for(1)
    with pytest.raises(Overloaded, match=r"queue is full \(5 events waiting, the oldest for 600 ms, past pipeline.batch_max_delay_ms \+ queue_max_wait_ms\)"):
        ingest("otlp_http", body(1))
    assert norm.runs == 2, "a refused request was normalised"
    assert shared[-1] == (5, True), "the refusal did not tell the listeners the queue is behind"
    assert not p.submit([ToolCall(time_ns=1, agent_id="a", tool="t")], []), "submit took events while behind"
    assert len(shared) == 3, "told the listeners again what they knew"
    assert refused(metrics) == 1 and p.depth == 5
    taken = p._take()  # the run loop takes a batch: the first request (3 events) and the second (2)
    assert sum(len(i.calls) for i in taken) == 5 and shared[-1] == (0, False)
    assert not p.behind() and ingest("otlp_http", body(1)).spans == 1
    await p.shutdown()


def test_off_by_default_in_the_pipeline_and_checked_in_the_config():
    from toolwatch.collector.config import ConfigError, PipelineConfig

    clock = Clock()
    store, metrics = Store(":memory:"), Metrics()
    p = Pipeline([], AlertRouter(store, metrics, [], group_window_ns=0), store, metrics, clock=clock)
    assert p.submit([ToolCall(time_ns=1, agent_id="a", tool="t")], [])
    clock.now += 3600
    assert not p.behind() and p.submit([ToolCall(time_ns=2, agent_id="a", tool="t")], [])
    assert PipelineConfig().queue_max_wait_ms == 500
    PipelineConfig(queue_max_wait_ms=0).validate()
    PipelineConfig(queue_max_wait_ms=1, batch_max_delay_ms=600_000).validate()  # any batch delay goes with it
    with pytest.raises(ConfigError, match=r"pipeline.queue_max_wait_ms must be 0 \(off\) or positive \(got -1\)"):
        PipelineConfig(queue_max_wait_ms=-1).validate()
