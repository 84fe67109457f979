from __future__ import annotations

import json

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from toolwatch.collector.normalize import Normalizer
from toolwatch.instrumentation import semconv as sc


def _attr(span, key, value):
    kv = span.attributes.add()
    kv.key = key
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, list):
        for v in value:
            kv.value.array_value.values.add().string_value = v
    else:
        kv.value.string_value = value


def _request(service="svc"):
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", service
    return req, rs.scope_spans.add()


def test_toolwatch_span_maps_every_field():
    req, ss = _request()
    s = ss.spans.add()
    s.trace_id, s.span_id, s.start_time_unix_nano, s.end_time_unix_nano = b"\x01" * 16, b"\x02" * 8, 10, 25
    for k, v in {
        sc.MCP_METHOD_NAME: "tools/call",
        sc.GEN_AI_TOOL_NAME: "send_mail",
        sc.GEN_AI_AGENT_ID: "mailbot",
        sc.MCP_SESSION_ID: "sess",
        sc.TW_SERVER_NAME: "mail",
        sc.TW_ARGS_BYTES: 120,
        sc.TW_ARGS_LABELS: ["email"],
        sc.TW_ARGS_FINGERPRINTS: ["fp1"],
        sc.TW_ARGS_DESTINATIONS: ["evil.example"],
        sc.ERROR_TYPE: "tool_error",
        sc.TW_REDACTED: True,
        sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"to": "<email>"}',
    }.items():
        _attr(s, k, v)
    out = Normalizer().normalize(req)
    assert out.spans == 1 and out.rejected == 0
    (c,) = out.calls
    assert (c.agent_id, c.tool, c.server, c.session_id) == ("mailbot", "send_mail", "mail", "sess")
    assert (c.time_ns, c.duration_ns, c.args_bytes, c.error_type) == (10, 15, 120, "tool_error")
    assert c.args_labels == ("email",) and c.args_fingerprints == ("fp1",) and c.destinations == ("evil.example",)
    assert c.args_json == '{"to": "<email>"}'
    assert c.span_id == "02" * 8 and c.trace_id == "01" * 16


def test_agent_falls_back_to_parent_invoke_agent_then_resource():
    req, ss = _request(service="the-service")
    parent = ss.spans.add()
    parent.span_id = b"\x09" * 8
    _attr(parent, sc.GEN_AI_OPERATION_NAME, "invoke_agent")
    _attr(parent, sc.GEN_AI_AGENT_NAME, "planner")
    child = ss.spans.add()
    child.parent_span_id = parent.span_id
    _attr(child, sc.GEN_AI_OPERATION_NAME, "execute_tool")
    _attr(child, sc.GEN_AI_TOOL_NAME, "search")
    orphan = ss.spans.add()
    _attr(orphan, sc.GEN_AI_OPERATION_NAME, "execute_tool")
    _attr(orphan, sc.GEN_AI_TOOL_NAME, "search")
    out = Normalizer().normalize(req)
    assert [c.agent_id for c in out.calls] == ["planner", "the-service"]


def test_unredacted_arguments_never_kept_raw():
    req, ss = _request()
    s = ss.spans.add()
    _attr(s, sc.GEN_AI_OPERATION_NAME, "execute_tool")
    _attr(s, sc.GEN_AI_TOOL_NAME, "t")
    _attr(s, sc.GEN_AI_TOOL_CALL_ARGUMENTS, '{"key": "AKIAABCDEFGHIJKLMNOP"}')
    (c,) = Normalizer().normalize(req).calls
    assert "AKIA" not in c.args_json and c.args_bytes > 0


def test_non_tool_spans_skipped_and_bad_listing_rejected():
    req, ss = _request()
    other = ss.spans.add()
    other.name = "GET /"
    listing = ss.spans.add()
    _attr(listing, sc.MCP_METHOD_NAME, "tools/list")
    _attr(listing, sc.GEN_AI_TOOL_DEFINITIONS, "not json")
    good = ss.spans.add()
    _attr(good, sc.MCP_METHOD_NAME, "tools/list")
    _attr(good, sc.TW_SERVER_NAME, "files")
    _attr(good, sc.GEN_AI_TOOL_DEFINITIONS, json.dumps([{"name": "read", "description": "Read a file", "inputSchema": {}}]))
    nameless = ss.spans.add()
    _attr(nameless, sc.GEN_AI_OPERATION_NAME, "execute_tool")
    out = Normalizer().normalize(req)
    assert out.spans == 4 and out.calls == [] and out.rejected == 2
    assert [t.name for t in out.listings[0].tools] == ["read"] and out.listings[0].server == "files"
    assert any("gen_ai.tool.name" in e for e in out.errors)
