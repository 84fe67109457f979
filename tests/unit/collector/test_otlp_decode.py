from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from toolwatch.collector import otlp


def _json_body(trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331"):
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "agent"}}]},
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": trace_id,
                                    "spanId": span_id,
                                    "name": "tools/call x",
                                    "kind": 3,
                                    "startTimeUnixNano": "1700000000000000000",
                                    "attributes": [{"key": "gen_ai.tool.name", "value": {"stringValue": "x"}}],
                                    "futureField": {"ignored": True},
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    ).encode()


def test_json_hex_ids_are_decoded():
    req = otlp.decode_request(_json_body(), "application/json; charset=utf-8")
    span = req.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.span_id.hex() == "b7ad6b7169203331"
    assert span.start_time_unix_nano == 1700000000000000000


def test_json_bad_hex_id_is_rejected():
    with pytest.raises(otlp.DecodeError) as err:
        otlp.decode_request(_json_body(trace_id="zz"), "application/json")
    assert err.value.reason == "bad_json" and "traceId" in str(err.value)


def test_gzip_is_bounded():
    bomb = gzip.compress(b"\x00" * 1_000_000)
    with pytest.raises(otlp.DecodeError) as err:
        otlp.decompress(bomb, "gzip", 10_000)
    assert err.value.reason == "too_large"
    assert otlp.decompress(gzip.compress(b"abc"), "gzip", 10) == b"abc"


def test_unknown_encoding_is_named():
    with pytest.raises(otlp.DecodeError, match="br"):
        otlp.decompress(b"x", "br", 10)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from(["application/x-protobuf", "application/json", "text/plain", None]))
def test_decoder_never_raises_anything_but_decode_error(body, ctype):
    try:
        req = otlp.decode_request(body, ctype)
    except otlp.DecodeError as exc:
        assert exc.reason and str(exc)
    else:
        assert isinstance(req, ExportTraceServiceRequest)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_valid_protobuf_never_crashes(data):
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    span.name = "tools/call t"
    span.trace_id = b"\x01" * 16
    body = bytearray(req.SerializeToString())
    for _ in range(data.draw(st.integers(1, 5))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    try:
        otlp.decode_request(bytes(body), "application/x-protobuf")
    except otlp.DecodeError:
        pass
