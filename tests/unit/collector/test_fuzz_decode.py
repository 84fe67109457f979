"""Property tests over both OTLP decoders: every input is decoded, salvaged or clearly rejected."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from helpers.otlp_build import add_span, request
from toolwatch.collector import otlp
from toolwatch.collector.otlp_attrmap import AttrMapRequest

PB, JS = otlp.PROTOBUF, otlp.JSON
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)


def _good_json(n: int = 3) -> dict:
    spans = [
        {
            "traceId": "0af7651916cd43dd8448eb211c80319c",
            "spanId": f"{i + 1:016x}",
            "name": f"tools/call t{i}",
            "startTimeUnixNano": "1700000000000000000",
            "attributes": [{"key": "gen_ai.tool.name", "value": {"stringValue": f"t{i}"}}],
        }
        for i in range(n)
    ]
    return {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"spans": spans}]}]}


def _check(body: bytes, ctype: str) -> otlp.Decoded | None:
    try:
        out = otlp.decode_export(body, ctype)
    except otlp.DecodeError as exc:
        assert exc.reason in ("bad_json", "bad_protobuf", "bad_content_type") and str(exc)
        return None
    assert isinstance(out.request, (ExportTraceServiceRequest, AttrMapRequest)) and out.rejected >= 0
    return out


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_document_is_handled(doc):
    _check(json.dumps(doc).encode(), JS)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_json_keeps_every_span_it_does_not_break(data):
    doc = _good_json(4)
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    victim = data.draw(st.integers(0, 3))
    key = data.draw(st.sampled_from(["name", "startTimeUnixNano", "attributes", "spanId", "kind", "status"]))
    spans[victim][key] = data.draw(json_values)
    out = _check(json.dumps(doc).encode(), JS)
    assert out is not None  # a mutation inside one span never costs the whole request
    kept = len(out.request.resource_spans[0].scope_spans[0].spans) if out.request.resource_spans else 0
    assert kept + out.rejected == 4 and kept >= 3


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=512))
def test_random_bytes_are_handled_as_protobuf_and_json(body):
    _check(body, PB)
    _check(body, JS)


def test_non_utf8_json_is_a_clear_rejection():
    with pytest.raises(otlp.DecodeError) as err:
        otlp.decode_export(json.dumps(_good_json()).encode().replace(b"t1", b"\xff\xfe"), JS)
    assert err.value.reason == "bad_json"


@pytest.mark.parametrize("ctype", [PB, JS])
def test_deep_nesting_is_handled(ctype):
    if ctype == JS:
        body = b'{"resourceSpans":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    else:
        req = request()
        span = add_span(req, {})
        av = span.attributes.add().value
        for _ in range(90):  # protobuf's own recursion limit is 100
            av = av.array_value.values.add()
        av.string_value = "deep"
        body = req.SerializeToString()
    _check(body, ctype)


def test_huge_attribute_value_is_kept_within_body_limit():
    req = request()
    add_span(req, {"gen_ai.tool.name": "t", "gen_ai.operation.name": "execute_tool", "big": "x" * 5_000_000})
    out = _check(req.SerializeToString(), PB)
    assert out is not None and out.rejected == 0


def _pb_with_bad_span(n_good: int) -> bytes:
    req = request()
    for i in range(n_good):
        add_span(req, {"gen_ai.tool.name": f"good{i}"}, name="tools/call good")
    add_span(req, {"gen_ai.tool.name": "BADBADBAD"})
    return req.SerializeToString().replace(b"BADBADBAD", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7")


def test_one_non_utf8_span_among_good_ones_costs_only_itself():
    out = otlp.decode_export(_pb_with_bad_span(5), PB)
    spans = [s for rs in out.request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == 5 and out.rejected == 1 and "UTF-8" in out.errors[0]
    assert out.request.resource_spans[0].resource.attributes[0].value.string_value == "svc"


def test_one_bad_json_span_among_good_ones_costs_only_itself():
    doc = _good_json(3)
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["spanId"] = "not-hex"
    out = otlp.decode_export(json.dumps(doc).encode(), JS)
    names = [s.name for s in out.request.resource_spans[0].scope_spans[0].spans]
    assert names == ["tools/call t0", "tools/call t2"] and out.rejected == 1


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_protobuf_is_salvaged_or_rejected(data):
    body = bytearray(_pb_with_bad_span(3))
    for _ in range(data.draw(st.integers(0, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    _check(bytes(body), PB)
