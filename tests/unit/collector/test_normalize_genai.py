"""toolwatch's own schema and the OTel MCP / GenAI execute_tool conventions; agent resolution."""

from __future__ import annotations

import json
from dataclasses import dataclass

from helpers.otlp_build import add_span, request

from toolwatch.collector.normalize import Normalizer
from toolwatch.instrumentation import semconv as sc


@dataclass
class Red:
    value: object
    labels: tuple[str, ...] = ()
    fingerprints: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    sketch: tuple[int, ...] = ()


def test_plain_genai_execute_tool_span_has_its_arguments_redacted():
    seen = []
    req = request()
    add_span(req, {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: "search", sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"q":"x"}'})
    (call,) = Normalizer(lambda t: seen.append(t) or Red({"q": "<r>"})).normalize(req).calls
    assert seen == ['{"q":"x"}'] and call.args_json == '{"q": "<r>"}' and call.source == "genai"


def test_mcp_tools_call_span_name_is_only_a_fallback_for_the_tool():
    req = request()
    add_span(req, {sc.MCP_METHOD_NAME: sc.METHOD_TOOLS_CALL}, name="tools/call fetch")
    add_span(req, {sc.MCP_METHOD_NAME: sc.METHOD_TOOLS_CALL, sc.GEN_AI_TOOL_NAME: "real"}, name="tools/call other")
    assert [c.tool for c in Normalizer().normalize(req).calls] == ["fetch", "real"]


def test_toolwatch_span_already_redacted_is_not_redacted_again():
    req = request()
    add_span(
        req,
        {
            sc.MCP_METHOD_NAME: sc.METHOD_TOOLS_CALL,
            sc.GEN_AI_TOOL_NAME: "t",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"a":"<secret>"}',
            sc.TW_REDACTED: True,
            sc.TW_ARGS_BYTES: 40,
            sc.TW_ARGS_LABELS: ["secret"],
            sc.TW_RESULT_INJECTION_SCORE: 0.75,
            sc.TW_SERVER_NAME: "srv",
        },
    )
    (call,) = Normalizer(lambda t: 1 / 0).normalize(req).calls
    assert (call.args_json, call.args_bytes, call.args_labels, call.source) == ('{"a":"<secret>"}', 40, ("secret",), "toolwatch")
    assert call.result_injection_score == 0.75 and call.server == "srv"


def test_agent_from_span_then_parent_invoke_agent_then_resource():
    req = request("the-service")
    parent = add_span(req, {sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT, sc.GEN_AI_AGENT_ID: "planner"})
    base = {sc.MCP_METHOD_NAME: sc.METHOD_TOOLS_CALL, sc.GEN_AI_TOOL_NAME: "t"}
    add_span(req, {**base, sc.GEN_AI_AGENT_ID: "own"})
    add_span(req, base, parent=parent.span_id)
    add_span(req, base)
    assert [c.agent_id for c in Normalizer().normalize(req).calls] == ["own", "planner", "the-service"]


def test_tools_list_span_becomes_a_listing():
    req = request()
    defs = [{"name": "a", "description": "d", "parameters": {"type": "object"}}]
    add_span(req, {sc.MCP_METHOD_NAME: sc.METHOD_TOOLS_LIST, sc.GEN_AI_TOOL_DEFINITIONS: json.dumps(defs), sc.TW_SERVER_NAME: "s"})
    (listing,) = Normalizer().normalize(req).listings
    assert listing.server == "s" and listing.tools[0].input_schema == {"type": "object"}


def test_non_tool_spans_are_skipped_and_counted():
    req = request()
    add_span(req, {"http.method": "GET"})
    add_span(req, {sc.MCP_METHOD_NAME: "initialize"})
    out = Normalizer().normalize(req)
    assert (out.spans, len(out.calls), out.rejected) == (2, 0, 0)


def test_error_status_without_error_type_reads_as_error():
    req = request()
    add_span(req, {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: "t"}, status_code=2)
    assert Normalizer().normalize(req).calls[0].error_type == "error"


def test_result_enrichments_are_read_even_without_argument_keys():
    req = request()
    add_span(req, {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: "t", sc.TW_RESULT_LABELS: ["instructions"], sc.TW_RESULT_INJECTION_SCORE: 0.9})
    (call,) = Normalizer().normalize(req).calls
    assert call.result_labels == ("instructions",) and call.result_injection_score == 0.9
