"""Kafka record payloads -> OTLP requests, in the encodings the OpenTelemetry Collector's Kafka exporter writes.

``otlp_proto``: the record value is a serialised ``ExportTraceServiceRequest``; ``otlp_json``: the
same request in OTLP/JSON (hex ids). ``auto`` sniffs each record (JSON starts with ``{``).
"""

from __future__ import annotations

from typing import Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .. import otlp

OTLP_PROTO: Final = "otlp_proto"
OTLP_JSON: Final = "otlp_json"
AUTO: Final = "auto"
_MEDIA = {OTLP_PROTO: otlp.PROTOBUF, OTLP_JSON: otlp.JSON}


def sniff(value: bytes) -> str:
    """``otlp_json`` when the value looks like a JSON object, else ``otlp_proto``."""
    return OTLP_JSON if value.lstrip()[:1] == b"{" else OTLP_PROTO


def decode_record(value: bytes | None, encoding: str, max_bytes: int, *, attr_map: bool = False) -> ExportTraceServiceRequest:
    """Decode one record value; raises ``otlp.DecodeError`` whose ``reason`` names what is wrong.

    ``attr_map``: protobuf values come back as an ``otlp_attrmap.AttrMapRequest`` wherever that
    reads exactly as the ``ExportTraceServiceRequest`` (what the normaliser reads fastest).
    """
    if value is None or len(value) == 0:
        raise otlp.DecodeError("empty", "record has no value (tombstone or empty payload)")
    if len(value) > max_bytes:
        raise otlp.DecodeError("too_large", f"record value of {len(value)} bytes exceeds the limit of {max_bytes}")
    if encoding == AUTO:
        encoding = sniff(value)
    media = _MEDIA.get(encoding)
    if media is None:
        raise ValueError(f"kafka.encoding: {encoding!r} is not one of otlp_proto, otlp_json, auto")
    return otlp.decode_request(value, media, attr_map=attr_map)
