"""The GenAI fast path of the normaliser gives exactly what the general dialect path gives.

The fast path reads toolwatch/GenAI ``execute_tool`` spans inline and hands anything unusual to the
general path; these tests build spans whose every attribute may be missing, empty, of another type
or oversized, and compare both paths call by call.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.otlp_build import add_span, request
from toolwatch.collector.normalize import Normalizer
from toolwatch.instrumentation import semconv as sc

STRING_KEYS = [
    sc.GEN_AI_TOOL_NAME, sc.GEN_AI_AGENT_ID, sc.GEN_AI_AGENT_NAME, sc.MCP_SESSION_ID, sc.TW_SERVER_NAME,
    sc.SERVER_ADDRESS, sc.JSONRPC_REQUEST_ID, sc.ERROR_TYPE, sc.GEN_AI_TOOL_CALL_ARGUMENTS, sc.TW_TOOL_DEFINITION_SHA256,
]
LIST_KEYS = [sc.TW_ARGS_LABELS, sc.TW_RESULT_LABELS, sc.TW_ARGS_FINGERPRINTS, sc.TW_RESULT_FINGERPRINTS, sc.TW_ARGS_DESTINATIONS]
NUMBER_KEYS = [sc.TW_ARGS_BYTES, sc.TW_RESULT_BYTES, sc.TW_RESULT_INJECTION_SCORE, sc.TW_ARGS_SKETCH, sc.TW_RESULT_SKETCH]

scalars = st.none() | st.booleans() | st.integers(-5, 2**40) | st.sampled_from(["12", "0.5", "-3"]) | st.floats(-1, 2) | st.binary(max_size=4)
texts = st.text(max_size=6) | st.sampled_from(["", "x" * 300, "read_file", "a,b,,c"])
any_value = scalars | texts | st.lists(scalars | texts, max_size=3) | st.dictionaries(st.text(max_size=3), texts, max_size=2)
typical = {
    **{k: texts for k in STRING_KEYS},
    **{k: st.lists(texts, min_size=1, max_size=3) for k in LIST_KEYS},
    sc.TW_ARGS_BYTES: st.integers(0, 10_000),
    sc.TW_RESULT_BYTES: st.integers(0, 10_000),
    sc.TW_RESULT_INJECTION_SCORE: st.floats(0, 1),
    sc.TW_ARGS_SKETCH: st.lists(st.integers(0, 2**31), max_size=4),
    sc.TW_RESULT_SKETCH: st.lists(st.integers(0, 2**31), max_size=4),
    sc.TW_REDACTED: st.booleans(),
}


@st.composite
def tool_span(draw: st.DrawFn) -> tuple[dict, int, bytes]:
    # Mostly a span the fast path takes (an execute_tool call naming its tool and agent), so the
    # comparison covers its reads; sometimes anything.
    attrs: dict = {}
    if draw(st.integers(0, 5)):
        attrs[sc.GEN_AI_OPERATION_NAME] = "execute_tool"
    elif draw(st.booleans()):
        attrs[sc.GEN_AI_OPERATION_NAME] = draw(st.sampled_from(["invoke_agent", "chat", 7]))
    if draw(st.booleans()):
        attrs[sc.MCP_METHOD_NAME] = draw(st.sampled_from(["tools/call", "tools/list", ""]))
    if draw(st.integers(0, 5)):
        attrs[sc.GEN_AI_TOOL_NAME] = draw(st.text(min_size=1, max_size=6))
    if draw(st.integers(0, 3)):
        attrs[sc.GEN_AI_AGENT_ID] = draw(st.text(min_size=1, max_size=6))
    for key in draw(st.lists(st.sampled_from(sorted(typical)), unique=True, max_size=len(typical))):
        # Mostly the type toolwatch sends; sometimes any type at all.
        attrs[key] = draw(any_value) if draw(st.integers(0, 3)) == 0 else draw(typical[key])
    status = draw(st.sampled_from([0, 1, 2]))
    parent = draw(st.sampled_from([b"", b"P" * 8]))
    return attrs, status, parent


@settings(max_examples=200, deadline=None)
@given(st.lists(tool_span(), max_size=6), st.booleans(), st.sampled_from(["svc", None]))
def test_fast_path_equals_general_path(spans, with_parent, service):
    req = request(service)
    if with_parent:
        add_span(req, {sc.GEN_AI_OPERATION_NAME: "invoke_agent", sc.GEN_AI_AGENT_ID: "planner"}, span_id=b"P" * 8)
    for i, (attrs, status, parent) in enumerate(spans):
        add_span(req, attrs, name=f"execute_tool t{i}", status_code=status, parent=parent, span_id=bytes([i + 1]) * 8,
                 duration_ns=(i - 2) * 1000)
    fast, general = Normalizer().normalize(req), Normalizer(fast=False).normalize(req)
    assert fast.calls == general.calls
    assert fast.listings == general.listings
    assert (fast.spans, fast.rejected, fast.errors) == (general.spans, general.rejected, general.errors)


def test_fast_path_keeps_span_order_when_some_spans_need_the_general_path():
    req = request()
    add_span(req, {sc.GEN_AI_OPERATION_NAME: "execute_tool", sc.GEN_AI_TOOL_NAME: "a", sc.GEN_AI_AGENT_ID: "x"})
    add_span(req, {sc.GEN_AI_OPERATION_NAME: "execute_tool", sc.GEN_AI_TOOL_NAME: "b"}, parent=b"P" * 8)  # agent from parent
    add_span(req, {sc.GEN_AI_OPERATION_NAME: "execute_tool", sc.GEN_AI_TOOL_NAME: 5, sc.GEN_AI_AGENT_ID: "x"})  # not a string
    add_span(req, {sc.GEN_AI_OPERATION_NAME: "execute_tool", sc.GEN_AI_TOOL_NAME: "d", sc.GEN_AI_AGENT_ID: "x"})
    add_span(req, {sc.GEN_AI_OPERATION_NAME: "invoke_agent", sc.GEN_AI_AGENT_ID: "planner"}, span_id=b"P" * 8)  # after its child
    calls = Normalizer().normalize(req).calls
    assert [(c.tool, c.agent_id) for c in calls] == [("a", "x"), ("b", "planner"), ("5", "x"), ("d", "x")]


TOOLWATCH_SPAN = {
    sc.MCP_METHOD_NAME: "tools/call", sc.GEN_AI_OPERATION_NAME: "execute_tool", sc.GEN_AI_TOOL_NAME: "read_file",
    sc.GEN_AI_AGENT_ID: "agent-1", sc.GEN_AI_AGENT_NAME: "Agent One", sc.MCP_SESSION_ID: "s-1",
    sc.TW_SERVER_NAME: "files", sc.SERVER_ADDRESS: "files.local", sc.JSONRPC_REQUEST_ID: "7",
    sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"path": "<path>"}', sc.TW_REDACTED: True, sc.TW_ARGS_BYTES: 40,
    sc.TW_RESULT_BYTES: 900, sc.TW_ARGS_LABELS: ["path"], sc.TW_RESULT_LABELS: ["email", "secret"],
    sc.TW_ARGS_FINGERPRINTS: ["fp1"], sc.TW_RESULT_FINGERPRINTS: ["fp2", "fp3"], sc.TW_ARGS_DESTINATIONS: ["x.org"],
    sc.TW_ARGS_SKETCH: [1, 2], sc.TW_RESULT_SKETCH: [3], sc.TW_RESULT_INJECTION_SCORE: 0.25,
    sc.TW_TOOL_DEFINITION_SHA256: "ab" * 32, sc.ERROR_TYPE: "timeout",
}
ODD_VALUES = [None, "", "12", "x" * 70_000, 0, 5, -3, 1.5, True, False, b"\x00\xff", [], ["a", ""], ["a", 3, None],
              ["y"] * 300, {"k": "v"}, "a,b,,c"]


def test_fast_path_equals_general_path_for_any_value_of_any_key():
    # Every key of a full toolwatch span, in turn: dropped, and replaced by values of every other type.
    for key in TOOLWATCH_SPAN:
        req = request()
        add_span(req, {k: v for k, v in TOOLWATCH_SPAN.items() if k != key})
        for value in ODD_VALUES:
            add_span(req, {**TOOLWATCH_SPAN, key: value}, status_code=2)
        fast, general = Normalizer().normalize(req), Normalizer(fast=False).normalize(req)
        assert fast.calls == general.calls, key
        assert (fast.rejected, fast.errors) == (general.rejected, general.errors), key
    # The fast path really runs on the full span (else the comparison above proves nothing).
    req = request()
    add_span(req, TOOLWATCH_SPAN)
    normalizer = Normalizer()
    normalizer._one = None  # type: ignore[method-assign,assignment]  # the general path would fail
    (call,) = normalizer.normalize(req).calls
    assert (call.tool, call.server, call.result_labels, call.source) == ("read_file", "files", ("email", "secret"), "toolwatch")
