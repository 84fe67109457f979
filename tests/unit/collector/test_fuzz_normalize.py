"""Property tests over the normaliser: any attribute of any type under any dialect's keys."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.otlp_build import add_span, request
from toolwatch.collector.dialects import MARKER_KEYS
from toolwatch.collector.normalize import Normalizer
from toolwatch.detectors.events import ToolCall, ToolListing
from toolwatch.instrumentation import semconv as sc

KEYS = sorted(
    MARKER_KEYS
    | {
        sc.GEN_AI_TOOL_NAME, sc.GEN_AI_TOOL_CALL_ARGUMENTS, sc.GEN_AI_TOOL_DEFINITIONS, sc.GEN_AI_AGENT_ID,
        sc.TW_ARGS_BYTES, sc.TW_ARGS_LABELS, sc.TW_ARGS_SKETCH, sc.TW_RESULT_INJECTION_SCORE, sc.TW_REDACTED,
        sc.MCP_SESSION_ID, sc.ERROR_TYPE, "traceloop.entity.name", "tool.name", "input.value",
        "target_mcp_server.name", "traceloop.workflow.name",
    }
)
MARKER_VALUES = ["execute_tool", "tools/call", "tools/list", "invoke_agent", "tool", "TOOL", '{"method":"tools/list"}']
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.binary(max_size=8)
    | st.text(max_size=30) | st.sampled_from(MARKER_VALUES),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
spans = st.lists(st.dictionaries(st.sampled_from(KEYS), values, max_size=8), max_size=6)


@settings(max_examples=150, deadline=None)
@given(spans, st.integers(0, 2**64 - 1))
def test_normaliser_never_raises_and_accounts_for_every_span(span_attrs, start):
    req = request()
    for attrs in span_attrs:
        add_span(req, attrs, start_ns=start, duration_ns=0)
    out = Normalizer().normalize(req)
    assert out.spans == len(span_attrs)
    assert len(out.calls) + len(out.listings) + out.rejected <= out.spans
    edge_redacted = any(v is True for a in span_attrs for k, v in a.items() if k == sc.TW_REDACTED)
    for c in out.calls:
        assert isinstance(c, ToolCall) and c.tool and c.agent_id
        assert c.args_json == "" or edge_redacted  # raw args are never kept without a redactor
        assert c.args_bytes >= 0 and 0.0 <= c.result_injection_score <= 1.0
    assert all(isinstance(t, ToolListing) for t in out.listings)
