"""OpenLLMetry (traceloop opentelemetry-instrumentation-mcp 0.62) spans, as its code writes them."""

from __future__ import annotations

import json
from dataclasses import dataclass

from helpers.otlp_build import add_span, request

from toolwatch.collector.normalize import Normalizer

RAW_ARGS = {"path": "/etc/passwd", "token": "sk-live-abcdef0123456789"}


@dataclass
class Red:
    value: object
    labels: tuple[str, ...] = ("secret",)
    fingerprints: tuple[str, ...] = ("fp1",)
    destinations: tuple[str, ...] = ()
    sketch: tuple[int, ...] = ()


def _tool_span(req, **extra):
    attrs = {
        "traceloop.span.kind": "tool",
        "traceloop.entity.name": "read_file",
        "traceloop.entity.input": json.dumps({"tool_name": "read_file", "arguments": RAW_ARGS}),
        "traceloop.entity.output": json.dumps({"result": "root:x:0:0"}),
    }
    attrs.update(extra)
    return add_span(req, attrs, name="read_file.tool")


def test_tool_span_becomes_a_call_with_only_the_arguments_redacted():
    seen = []

    def redactor(text):
        seen.append(text)
        return Red({"path": "<path>", "token": "<secret>"})

    req = request("agent-svc")
    _tool_span(req, **{"traceloop.workflow.name": "files"})
    out = Normalizer(redactor).normalize(req)
    (call,) = out.calls
    assert (call.tool, call.server, call.agent_id, call.source) == ("read_file", "files", "agent-svc", "openllmetry")
    assert json.loads(seen[0]) == RAW_ARGS  # the redactor gets the arguments, not the wrapper
    assert "sk-live" not in call.args_json and "passwd" not in call.args_json
    assert call.args_labels == ("secret",) and call.args_fingerprints == ("fp1",)
    assert call.args_bytes == len(seen[0].encode())


def test_raw_arguments_are_dropped_without_a_redactor():
    req = request()
    _tool_span(req)
    (call,) = Normalizer().normalize(req).calls
    assert call.args_json == "" and call.args_bytes > 0
    assert "sk-live" not in repr(call) and "root:x" not in repr(call)


def test_truncated_input_is_redacted_as_a_whole():
    seen = []
    req = request()
    _tool_span(req, **{"traceloop.entity.input": '{"tool_name": "read_file", "arguments": {"path": "/et'})
    Normalizer(lambda t: seen.append(t) or Red(None)).normalize(req)
    assert seen == ['{"tool_name": "read_file", "arguments": {"path": "/et']


def test_tool_error_is_kept():
    req = request()
    _tool_span(req, **{"error.type": "tool_error"})
    assert Normalizer().normalize(req).calls[0].error_type == "tool_error"


def test_tools_list_output_becomes_a_listing_keyed_on_the_input_method():
    req = request("agent-svc")
    tools = {"meta": None, "nextCursor": None, "tools": [{"name": "read_file", "description": "Reads", "inputSchema": {"type": "object"}}]}
    add_span(
        req,
        {
            "traceloop.entity.input": json.dumps({"method": "tools/list", "params": None}),
            "traceloop.entity.output": json.dumps(tools),
        },
        name="renamed-by-a-processor",
    )
    out = Normalizer().normalize(req)
    (listing,) = out.listings
    assert [t.name for t in listing.tools] == ["read_file"] and listing.tools[0].input_schema == {"type": "object"}
    assert listing.source == "openllmetry" and listing.agent_id == "agent-svc"


def test_other_mcp_method_spans_are_skipped():
    req = request()
    add_span(req, {"traceloop.entity.input": json.dumps({"method": "initialize"}), "traceloop.entity.output": "{}"}, name="initialize.mcp")
    add_span(req, {"traceloop.span.kind": "session", "traceloop.entity.name": "mcp.client.session"})
    out = Normalizer().normalize(req)
    assert (out.calls, out.listings, out.rejected, out.spans) == ([], [], 0, 2)


def test_tool_span_without_entity_name_is_rejected_by_name():
    req = request()
    _tool_span(req, **{"traceloop.entity.name": ""})
    out = Normalizer().normalize(req)
    assert out.rejected == 1 and "traceloop.entity.name" in out.errors[0]
