"""The map-typed decode (``otlp_attrmap``) and today's normaliser give exactly what main's normaliser gave.

Each request is serialised once; main's normaliser (frozen in ``helpers/normalize_main.py``) reads
it as an ``ExportTraceServiceRequest``, the current one reads what ``otlp.decode_export`` returns
(an ``AttrMapRequest``) and the ``ExportTraceServiceRequest`` too (the OTLP/JSON and salvage
paths). Spans follow every convention of the docs' mapping table, with keys dropped, values of any
type, keys repeated (the last one wins) and attributes in any order, through a real redactor.

The OTLP worker processes' rows (``Normalizer(rows=True)``, no ToolCall built) are held to the
calls the in-process normaliser builds on the same requests: the same frame message
(``worker_frames``), and calls equal in value, type and token once the daemon reads it.
"""

from __future__ import annotations

import dataclasses
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from helpers import normalize_main
from helpers.otlp_build import T0, add_span, request, set_any
from toolwatch.collector import otlp
from toolwatch.collector.normalize import Normalized, Normalizer, drop_raw_args
from toolwatch.collector.otlp_attrmap import AttrMapRequest, is_attr_map, parse
from toolwatch.collector.receivers import worker_frames as wf
from toolwatch.collector.receivers.kafka_records import decode_record
from toolwatch.detectors.events import ToolCall
from toolwatch.instrumentation import semconv as sc
from toolwatch.instrumentation.fingerprint import key_from_text
from toolwatch.instrumentation.redact import Redactor

REDACT = Redactor(key_from_text("attrmap-test-key")).redact_json_text
RAW = json.dumps({"path": "/etc/passwd", "token": "sk-live-abcdef0123456789", "to": "x@evil.example"})
TOOLS = json.dumps({"tools": [{"name": "read_file", "description": "reads", "inputSchema": {"type": "object"}}]})

CONVENTIONS: dict[str, dict] = {
    "toolwatch": {
        sc.MCP_METHOD_NAME: "tools/call", sc.GEN_AI_OPERATION_NAME: "execute_tool", sc.GEN_AI_TOOL_NAME: "read_file",
        sc.GEN_AI_AGENT_ID: "agent-1", sc.GEN_AI_AGENT_NAME: "Agent One", sc.MCP_SESSION_ID: "s-1",
        sc.TW_SERVER_NAME: "files", sc.SERVER_ADDRESS: "files.local", sc.JSONRPC_REQUEST_ID: "7",
        sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"path": "<path>"}', sc.TW_REDACTED: True, sc.TW_ARGS_BYTES: 40,
        sc.TW_RESULT_BYTES: 900, sc.TW_ARGS_LABELS: ["path"], sc.TW_RESULT_LABELS: ["email", "secret"],
        sc.TW_ARGS_FINGERPRINTS: ["fp1"], sc.TW_RESULT_FINGERPRINTS: ["fp2"], sc.TW_ARGS_DESTINATIONS: ["x.org"],
        sc.TW_ARGS_SKETCH: [1, 2], sc.TW_RESULT_SKETCH: [3], sc.TW_RESULT_INJECTION_SCORE: 0.25,
        sc.TW_TOOL_DEFINITION_SHA256: "ab" * 32, sc.ERROR_TYPE: "timeout", sc.MCP_PROTOCOL_VERSION: "2025-06-18",
    },
    "genai": {
        sc.GEN_AI_OPERATION_NAME: "execute_tool", sc.GEN_AI_TOOL_NAME: "fetch", sc.GEN_AI_TOOL_CALL_ARGUMENTS: RAW,
        sc.SERVER_ADDRESS: "web.local", sc.MCP_SESSION_ID: "s-2",
    },
    "genai_list": {
        sc.MCP_METHOD_NAME: "tools/list", sc.GEN_AI_TOOL_DEFINITIONS: TOOLS, sc.TW_SERVER_NAME: "files",
        sc.TW_SERVER_VERSION: "1.0", sc.TW_SERVER_INSTRUCTIONS_SHA256: "cd" * 32,
    },
    "invoke_agent": {sc.GEN_AI_OPERATION_NAME: "invoke_agent", sc.GEN_AI_AGENT_ID: "planner", sc.GEN_AI_AGENT_NAME: "P"},
    "openllmetry": {
        "traceloop.span.kind": "tool", "traceloop.entity.name": "read_file", "traceloop.workflow.name": "files",
        "traceloop.entity.input": json.dumps({"tool_name": "read_file", "arguments": json.loads(RAW)}),
        "traceloop.entity.output": '{"result": "ok"}',
    },
    "openllmetry_list": {
        "traceloop.entity.input": '{"method": "tools/list"}', "traceloop.entity.output": TOOLS,
        "traceloop.workflow.name": "files",
    },
    "openinference": {
        "openinference.span.kind": "TOOL", "tool.name": "query", "input.value": RAW, "session.id": "s-3",
        "tool.parameters": '{"type": "object"}',
    },
    "contextforge": {
        "tool.invocation.args": RAW, "tool.name": "gw-send", "tool.target_tool_name": "send",
        "target_mcp_server.name": "mail", "target_mcp_server.id": "m1", "target_mcp_server.url": "http://mail",
        "request_id": "r-1", "headers": '{"authorization": "Bearer secret"}',
    },
    "other": {"http.method": "GET", "db.system": "postgres"},
}
NAMES = {"genai_list": "tools/list", "openllmetry_list": "tools/list.mcp", "genai": "execute_tool fetch"}

scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.binary(max_size=6)
    | st.text(max_size=8) | st.sampled_from(["", "12", "0.5", "x" * 300, "a,b,,c", "execute_tool", "tools/call", "TOOL"])
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=8)


@st.composite
def span_attrs(draw: st.DrawFn) -> tuple[str, list[tuple[str, object]]]:
    """A span name and attributes as (key, value) pairs: a convention's, perturbed; keys may repeat."""
    convention = draw(st.sampled_from(sorted(CONVENTIONS)))
    base = CONVENTIONS[convention]
    pairs: list[tuple[str, object]] = []
    for key, value in base.items():
        roll = draw(st.integers(0, 9))
        if roll == 0:
            continue  # dropped
        pairs.append((key, draw(values) if roll == 1 else value))
        if roll == 2:
            pairs.append((key, draw(values)))  # repeated key
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    name = NAMES.get(convention, "span") if draw(st.integers(0, 3)) else draw(st.sampled_from(["tools/call t", "execute_tool x", ""]))
    return name, pairs


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rs = req.resource_spans.add()
        for name in draw(st.lists(st.sampled_from(["svc", "svc-b", ""]), max_size=2)):
            kv = rs.resource.attributes.add()
            kv.key = "service.name"
            set_any(kv.value, name)
        for _ in range(draw(st.integers(1, 2))):
            ss = rs.scope_spans.add()
            for i, (name, pairs) in enumerate(draw(st.lists(span_attrs(), max_size=5))):
                span = ss.spans.add()
                span.name = name
                span.trace_id = bytes([i + 1]) * 16
                span.span_id = draw(st.sampled_from([b"P" * 8, bytes([i + 1]) * 8, b""]))
                span.parent_span_id = draw(st.sampled_from([b"", b"P" * 8]))
                span.start_time_unix_nano = T0 + i
                span.end_time_unix_nano = T0 + draw(st.integers(-5, 5))
                span.status.code = draw(st.sampled_from([0, 1, 2]))
                for key, value in pairs:
                    kv = span.attributes.add()
                    kv.key = key
                    set_any(kv.value, value)
    return req.SerializeToString()


def _same(new: Normalized, ref: normalize_main.Normalized) -> None:
    assert new.calls == ref.calls
    assert new.listings == ref.listings
    assert (new.spans, new.rejected, new.errors) == (ref.spans, ref.rejected, ref.errors)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.sampled_from([REDACT, drop_raw_args]), st.booleans())
def test_current_normaliser_equals_mains_on_both_request_types(body, redact, fast):
    ref = normalize_main.Normalizer(redact, fast=fast).normalize(ExportTraceServiceRequest.FromString(body))
    decoded = otlp.decode_export(body, otlp.PROTOBUF)
    assert is_attr_map(decoded.request) and not decoded.rejected  # the map path really runs
    _same(Normalizer(redact, fast=fast).normalize(decoded.request), ref)
    _same(Normalizer(redact, fast=fast).normalize(ExportTraceServiceRequest.FromString(body)), ref)
    record = decode_record(body, "otlp_proto", 1 << 30, attr_map=True)  # the Kafka receiver's
    assert is_attr_map(record)
    _same(Normalizer(redact, fast=fast).normalize(record), ref)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.data())
def test_mutated_bodies_read_as_maps_only_where_they_read_the_same(body, data):
    # Flipped, dropped and inserted bytes: where the map-typed parse stands in, the original parse
    # succeeds too and normalises to the same; everywhere else decoding goes the original way.
    buf = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        if not buf:
            break
        i = data.draw(st.integers(0, len(buf) - 1))
        op = data.draw(st.integers(0, 2))
        if op == 0:
            buf[i] = data.draw(st.integers(0, 255))
        elif op == 1:
            del buf[i]
        else:
            buf.insert(i, data.draw(st.integers(0, 255)))
    mutated = bytes(buf)
    fast = parse(mutated)
    if fast is None:
        return
    ref = normalize_main.Normalizer(REDACT).normalize(ExportTraceServiceRequest.FromString(mutated))
    _same(Normalizer(REDACT).normalize(fast), ref)


ALL_KEYS = sorted({k for attrs in CONVENTIONS.values() for k in attrs})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.data())
def test_attributes_with_unknown_fields_decode_the_original_way(body, data):
    # A KeyValue carrying a field it does not define (newer schema, odd sender): as a map entry
    # protobuf would drop it from the map, so such requests must not be read as maps.
    req = ExportTraceServiceRequest.FromString(body)
    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    odd = 0
    for span in spans:
        if data.draw(st.booleans()):
            key = data.draw(st.sampled_from(ALL_KEYS)).encode()
            text = data.draw(st.sampled_from([b"execute_tool", b"tools/call", b"TOOL", b"x", b""]))
            value = b"\x0a" + bytes([len(text)]) + text
            entry = b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(value)]) + value + b"\x18\x01"
            span.MergeFromString(b"\x4a" + bytes([len(entry)]) + entry)
            odd += 1
    body = req.SerializeToString()
    decoded = otlp.decode_export(body, otlp.PROTOBUF)
    assert is_attr_map(decoded.request) == (odd == 0)
    ref = normalize_main.Normalizer(REDACT).normalize(ExportTraceServiceRequest.FromString(body))
    _same(Normalizer(REDACT).normalize(decoded.request), ref)


def test_an_attribute_with_an_unknown_field_keeps_the_original_reading():
    # Protobuf would move such a map entry out of the map; the decoder then keeps the original type.
    req = request()
    add_span(req, {**CONVENTIONS["toolwatch"]})
    body = req.SerializeToString()
    tool = sc.GEN_AI_TOOL_NAME.encode()
    entry = b"\x0a" + bytes([len(tool)]) + tool + b"\x12\x05\x0a\x03abc"
    odd = entry + b"\x18\x01"  # field 3 (varint) inside the KeyValue
    span_extra = b"\x4a" + bytes([len(odd)]) + odd
    # Append the odd attribute to the only span: rebuild the length prefixes by re-encoding.
    parsed = ExportTraceServiceRequest.FromString(body)
    span = parsed.resource_spans[0].scope_spans[0].spans[0]
    span.MergeFromString(span_extra)
    body = parsed.SerializeToString()
    assert parse(body) is None
    decoded = otlp.decode_export(body, otlp.PROTOBUF)
    assert type(decoded.request) is ExportTraceServiceRequest
    (call,) = Normalizer().normalize(decoded.request).calls
    assert call.tool == "abc"  # the last gen_ai.tool.name, as main reads it
    _same(Normalizer().normalize(decoded.request), normalize_main.Normalizer().normalize(ExportTraceServiceRequest.FromString(body)))


def test_map_request_matches_the_otlp_schema_but_for_span_attributes():
    ours = AttrMapRequest.DESCRIPTOR.fields_by_name["resource_spans"].message_type
    theirs = ExportTraceServiceRequest.DESCRIPTOR.fields_by_name["resource_spans"].message_type
    stack = [(ours, theirs)]
    while stack:
        a, b = stack.pop()
        assert sorted(a.fields_by_number) == sorted(b.fields_by_number), b.full_name
        for num, fa in a.fields_by_number.items():
            fb = b.fields_by_number[num]
            assert (fa.name, fa.type, fa.is_repeated) == (fb.name, fb.type, fb.is_repeated), fb.full_name
            if b.full_name.endswith(".Span") and fb.name == "attributes":
                assert fa.message_type.GetOptions().map_entry
                continue
            if fa.message_type is not None and fa.message_type is not fb.message_type:
                stack.append((fa.message_type, fb.message_type))


def _decode_export_before(body: bytes, ctype: str) -> otlp.Decoded:
    """``otlp.decode_export``'s protobuf path as of 3026c2a (the map parse tried inline): the reference."""
    fast = parse(body)
    if fast is not None:
        return otlp.Decoded(fast)
    try:
        return otlp.Decoded(otlp.decode_request(body, ctype))
    except otlp.DecodeError as exc:
        if not exc.salvageable:
            raise
        out = otlp._salvage_protobuf(body)
        if not out.request.resource_spans and not out.rejected:
            raise
        return out


def _decode_record_before(value: bytes) -> object:
    """``kafka_records.decode_record(value, "otlp_proto", ..., attr_map=True)`` as of 3026c2a."""
    fast = parse(value)
    return fast if fast is not None else otlp.decode_request(value, otlp.PROTOBUF)


def _outcome(decode, *args, **kw) -> tuple:
    try:
        out = decode(*args, **kw)
    except otlp.DecodeError as exc:
        return ("error", exc.reason, str(exc), exc.salvageable)
    extra: tuple = ()
    if isinstance(out, otlp.Decoded):
        out, extra = out.request, (out.rejected, out.errors)
    return (type(out).__name__, out.SerializeToString(deterministic=True), *extra)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.integers(0, 2)), max_size=4),
       st.binary(max_size=40))
def test_one_map_or_list_decode_serves_both_receivers_as_before(body, edits, noise):
    """``otlp.decode_request(attr_map=True)`` in ``decode_export`` and ``decode_record``: same requests, same
    types, same errors as each one's own map-then-list decode did, for valid, mutated and junk bodies."""
    buf = bytearray(body)
    for at, byte, op in edits:
        i = at % (len(buf) or 1)
        if op == 0 and buf:
            buf[i] = byte
        elif op == 1 and buf:
            del buf[i]
        else:
            buf.insert(i, byte)
    for value in (body, bytes(buf), noise, body + noise):
        assert _outcome(otlp.decode_export, value, otlp.PROTOBUF) == _outcome(_decode_export_before, value, otlp.PROTOBUF)
        if value:
            assert _outcome(decode_record, value, "otlp_proto", 1 << 30, attr_map=True) == \
                _outcome(_decode_record_before, value)


# --- the worker's rows -------------------------------------------------------------------------
def _message(data: bytes) -> tuple:
    return wf.unframe(data[wf.HEADER.size :])


def _arrives_as_built(req, redact, fast: bool) -> Normalized:
    built = Normalizer(redact, fast=fast).normalize(req)
    rows = Normalizer(redact, fast=fast, rows=True).normalize(req)
    assert all(type(r) is tuple and len(r) == len(dataclasses.fields(ToolCall)) for r in rows.calls)  # no token
    assert (rows.spans, rows.rejected, rows.errors, rows.listings) == (built.spans, built.rejected, built.errors, built.listings)
    sent = _message(wf.ingest_frame(3, "otlp_http", rows, 1, ("e",), rows=True))
    # The very message the in-process calls make (repr: 1 and True, 0.0 and -0.0 differ).
    assert repr(sent) == repr(_message(wf.ingest_frame(3, "otlp_http", built, 1, ("e",))))
    got = wf.read_ingest(sent, wf.Canon())[2]
    assert got == built
    for a, b in zip(got.calls, built.calls):
        assert type(a) is ToolCall and a.token == b.token
        assert [type(getattr(a, f.name)) for f in dataclasses.fields(a)] == [type(getattr(b, f.name)) for f in dataclasses.fields(b)]
    return built


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.sampled_from([REDACT, drop_raw_args]), st.booleans())
def test_rows_arrive_as_the_calls_the_in_process_normaliser_builds(body, redact, fast):
    decoded = otlp.decode_export(body, otlp.PROTOBUF)
    _arrives_as_built(decoded.request, redact, fast)
    _arrives_as_built(ExportTraceServiceRequest.FromString(body), redact, fast)


def test_fleet_rows_arrive_as_the_calls_the_in_process_normaliser_builds():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
    import workloads as wl

    calls = 0
    for body in wl.bodies("fleet", 500 * 4, 500, anomaly_rate=0.01, rate=75_000)[:4]:
        calls += len(_arrives_as_built(otlp.decode_export(body, otlp.PROTOBUF).request, REDACT, True).calls)
    assert calls == 2000
