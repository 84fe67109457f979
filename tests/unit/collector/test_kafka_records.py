"""Kafka record decoding (both exporter encodings) and the file dead letter."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from helpers.otlp_calls import Call, request, to_otlp_json
from toolwatch.collector.otlp import DecodeError
from toolwatch.collector.receivers.dead_letter import DeadRecord, FileDeadLetter
from toolwatch.collector.receivers.kafka_records import decode_record, sniff

REQ = request([Call("a", "files", "read_file", 1), Call("b", "mail", "send", 2)])


@pytest.mark.parametrize("encoding, value", [("otlp_proto", REQ.SerializeToString()), ("otlp_json", to_otlp_json(REQ)),
                                             ("auto", REQ.SerializeToString()), ("auto", to_otlp_json(REQ))])
def test_both_exporter_encodings_decode_to_the_same_request(encoding, value):
    assert decode_record(value, encoding, 1 << 20) == REQ


@pytest.mark.parametrize(
    "value, encoding, reason",
    [(None, "otlp_proto", "empty"), (b"", "auto", "empty"), (b"x" * 2000, "otlp_proto", "too_large"),
     (b"\xff\xfe\x00junk", "otlp_proto", "bad_protobuf"), (b"{nope", "otlp_json", "bad_json"),
     (b'{"resourceSpans": 3}', "auto", "bad_json")],
)
def test_bad_records_get_a_reason(value, encoding, reason):
    with pytest.raises(DecodeError) as info:
        decode_record(value, encoding, 1024)
    assert info.value.reason == reason and str(info.value)


@settings(max_examples=400)
@given(st.binary(max_size=300), st.sampled_from(["otlp_proto", "otlp_json", "auto"]))
def test_any_bytes_decode_or_are_rejected_with_a_reason(value, encoding):
    try:
        req = decode_record(value, encoding, 1 << 16)
    except DecodeError as exc:
        assert exc.reason in {"empty", "too_large", "bad_protobuf", "bad_json"}
    else:
        assert isinstance(req, ExportTraceServiceRequest)


@given(st.binary(max_size=64))
def test_mutated_valid_records_never_escape_as_other_errors(noise):
    good = REQ.SerializeToString()
    cut = len(noise) % len(good)
    for value in (good[:cut] + noise, noise + good, to_otlp_json(REQ)[:cut] + noise):
        try:
            decode_record(value, "auto", 1 << 16)
        except DecodeError:
            pass


def test_sniff():
    assert sniff(b'  {"resourceSpans": []}') == "otlp_json"
    assert sniff(b"\x0a\x02") == "otlp_proto"


def test_file_dead_letter_keeps_reason_source_and_payload(tmp_path):
    path = tmp_path / "dl" / "dead.jsonl"
    dl = FileDeadLetter(path, clock=lambda: 123.0)
    dl.send(DeadRecord("otlp_spans", 2, 41, b"agent-7", b"\xff\x00", "bad_protobuf", "not protobuf"))
    dl.send(DeadRecord("otlp_spans", 0, 5, None, None, "empty", "tombstone"))
    dl.flush()
    dl.close()
    dl.close()  # safe twice
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["source"] == "otlp_spans/2/41" and lines[0]["reason"] == "bad_protobuf"
    assert base64.b64decode(lines[0]["value_b64"]) == b"\xff\x00" and base64.b64decode(lines[0]["key_b64"]) == b"agent-7"
    assert lines[1]["value_b64"] is None and lines[1]["time"] == 123.0
    assert path.stat().st_mode & 0o777 == 0o600
