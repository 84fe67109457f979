"""Request/response pairing of the proxy's tracker, on JSON-RPC bytes as they cross the wire."""

from __future__ import annotations

import asyncio
import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redactor_double import RedactorDouble
from toolwatch.instrumentation import semconv as sc
from toolwatch.instrumentation.proxy.framing import Oversized
from toolwatch.instrumentation.proxy.tracker import CallTracker, ProxyStats, Recorder, request_ids
from toolwatch.instrumentation.spans import SessionInfo


def msg(**fields) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **fields}).encode()


@pytest.fixture
def setup():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stats = ProxyStats()
    tracker = CallTracker(SessionInfo(agent_id="a", emitter="proxy"), provider.get_tracer("t"),
                          RedactorDouble(), stats, max_pending=4)
    return tracker, exporter, stats


def test_pairs_by_id_and_takes_server_identity_from_initialize(setup):
    tracker, exporter, _ = setup
    tracker.observe("c2s", msg(id=0, method="initialize", params={}), 1)
    tracker.observe("s2c", msg(id=0, result={"protocolVersion": "2025-11-25",
                                             "serverInfo": {"name": "notes", "version": "1"}}), 2)
    tracker.observe("c2s", msg(id=1, method="tools/call", params={"name": "a", "arguments": {"x": 1}}), 10)
    tracker.observe("c2s", msg(id="1", method="tools/call", params={"name": "b", "arguments": {}}), 11)
    tracker.observe("s2c", msg(id="1", result={"content": []}), 30)
    tracker.observe("s2c", msg(id=1, result={"content": [], "isError": True}), 40)
    b, a = exporter.get_finished_spans()
    assert (a.name, b.name) == ("tools/call a", "tools/call b")
    assert a.attributes[sc.JSONRPC_REQUEST_ID] == "1" and (a.start_time, a.end_time) == (10, 40)
    assert a.attributes[sc.ERROR_TYPE] == "tool_error" and sc.ERROR_TYPE not in b.attributes
    assert a.attributes[sc.TW_SERVER_NAME] == "notes" and a.attributes[sc.MCP_PROTOCOL_VERSION] == "2025-11-25"
    assert a.attributes[sc.TW_EMITTER] == "proxy"


def test_server_initiated_requests_and_client_responses_are_not_confused(setup):
    tracker, exporter, _ = setup
    tracker.observe("c2s", msg(id=1, method="tools/call", params={"name": "a"}), 1)
    # the server asks the client something with the same id; the client answers it
    tracker.observe("s2c", msg(id=1, method="sampling/createMessage", params={}), 2)
    tracker.observe("c2s", msg(id=1, result={"content": {"type": "text", "text": "hi"}}), 3)
    assert exporter.get_finished_spans() == ()
    tracker.observe("s2c", msg(id=1, result={"content": []}), 4)
    (span,) = exporter.get_finished_spans()
    assert span.end_time == 4


def test_batches_notifications_cancellation_and_list_changed(setup):
    tracker, exporter, _ = setup
    batch = json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "slow"}},
                        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}]).encode()
    tracker.observe("c2s", batch, 1)
    tracker.observe("s2c", msg(id=1, result={"tools": [{"name": "slow"}]}), 2)
    tracker.observe("c2s", msg(method="notifications/cancelled", params={"requestId": 2}), 3)
    tracker.observe("s2c", msg(method="notifications/tools/list_changed"), 4)
    tracker.observe("c2s", msg(id=3, method="tools/list"), 5)
    tracker.observe("s2c", msg(id=3, result={"tools": []}), 6)
    first, cancelled, second = exporter.get_finished_spans()
    assert first.name == "tools/list" and first.attributes[sc.TW_TOOLS_AFTER_LIST_CHANGED] is False
    assert cancelled.attributes[sc.ERROR_TYPE] == "cancelled"
    assert second.attributes[sc.TW_TOOLS_AFTER_LIST_CHANGED] is True
    assert tracker.inflight_ids() == []


def test_invalid_json_counted_and_errors_recorded(setup):
    tracker, exporter, stats = setup
    tracker.observe("s2c", b"this is not json", 1)
    tracker.observe("c2s", b"[1, 2]", 1)
    assert stats.invalid_json == {"c2s": 2, "s2c": 1}
    tracker.observe("c2s", msg(id=9, method="tools/call", params={"name": "x"}), 1)
    tracker.observe("s2c", msg(id=9, error={"code": -32602, "message": "Unknown tool"}), 2)
    (span,) = exporter.get_finished_spans()
    assert span.attributes[sc.ERROR_TYPE] == "-32602" and span.status.description == "Unknown tool"


def test_oversized_response_is_paired_by_the_id_in_its_head(setup):
    tracker, exporter, stats = setup
    tracker.observe("c2s", msg(id="big-1", method="tools/call", params={"name": "dump"}), 1)
    tracker.observe("s2c", Oversized(b'{"jsonrpc":"2.0","id":"big-1","result":{"content":[{"text":"xxx', 9_000_000), 2)
    (span,) = exporter.get_finished_spans()
    assert span.attributes[sc.TW_RESULT_BYTES] == 9_000_000 and span.attributes[sc.TW_RESULT_LABELS] == ("oversized",)
    assert stats.oversized["s2c"] == 1


def test_fail_inflight_answers_every_open_request_and_pending_is_bounded(setup):
    tracker, exporter, stats = setup
    for i in range(6):
        tracker.observe("c2s", msg(id=i, method="tools/call" if i % 2 else "ping", params={"name": "t"}), i)
    assert stats.dropped_pending == 2  # only the 4 newest in-flight ids are kept
    assert tracker.fail_inflight("server_exited") == [2, 3, 4, 5]
    assert [s.attributes[sc.ERROR_TYPE] for s in exporter.get_finished_spans()] == ["server_exited"] * 2
    assert tracker.inflight_ids() == []


def test_request_ids_of_messages_and_batches():
    assert request_ids(msg(id=1, method="a")) == [1]
    assert request_ids(b'[{"jsonrpc":"2.0","id":"x","method":"a"},{"jsonrpc":"2.0","method":"n"}]') == ["x"]
    assert request_ids(b"garbage") == [] and request_ids(msg(id=1, result={})) == []


async def test_recorder_observes_after_forwarding_and_drops_when_full(setup):
    tracker, exporter, stats = setup
    recorder = Recorder(max_queue=2, delay=0)
    recorder.submit(tracker, "c2s", msg(id=1, method="tools/call", params={"name": "a"}), 1)
    recorder.submit(tracker, "s2c", msg(id=1, result={"content": []}), 2)
    recorder.submit(tracker, "s2c", msg(method="n"), 3)
    assert stats.dropped_observations == 1 and stats.messages["c2s"] == 0  # nothing parsed yet
    await asyncio.sleep(0)  # let the loop run the scheduled drain
    assert stats.messages == {"c2s": 1, "s2c": 1} and len(exporter.get_finished_spans()) == 1


async def test_recorder_flush_observes_everything_queued(setup):
    tracker, exporter, stats = setup
    recorder = Recorder(delay=60)  # the scheduled drain would come far too late: flush is what counts
    recorder.submit(tracker, "c2s", msg(id=1, method="tools/call", params={"name": "a"}), 1)
    recorder.submit(tracker, "s2c", msg(id=1, result={"content": []}), 2)
    assert stats.messages == {"c2s": 0, "s2c": 0}
    recorder.flush()
    assert stats.messages == {"c2s": 1, "s2c": 1} and len(exporter.get_finished_spans()) == 1


def test_2026_discover_and_request_meta_fill_session_info(setup):
    tracker, exporter, _ = setup
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    tracker.observe("c2s", msg(id=1, method="server/discover", params={"_meta": meta}), 1)
    tracker.observe("s2c", msg(id=1, result={"_meta": {"io.modelcontextprotocol/serverInfo": {
        "name": "modern", "version": "9"}}, "instructions": "hi", "supportedVersions": ["2026-07-28"]}), 2)
    tracker.observe("c2s", msg(id=2, method="tools/call", params={"name": "t", "_meta": meta}), 3)
    tracker.observe("s2c", msg(id=2, result={"content": []}), 4)
    (span,) = exporter.get_finished_spans()
    assert span.attributes[sc.TW_SERVER_NAME] == "modern" and span.attributes[sc.TW_SERVER_VERSION] == "9"
    assert span.attributes[sc.MCP_PROTOCOL_VERSION] == "2026-07-28"
    assert len(span.attributes[sc.TW_SERVER_INSTRUCTIONS_SHA256]) == 64
