"""Build OTLP ExportTraceServiceRequests by hand, attribute by attribute, for decoder/normaliser tests."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

T0 = 1_700_000_000_000_000_000


def set_any(av: AnyValue, value: Any) -> None:
    if isinstance(value, bool):
        av.bool_value = value
    elif isinstance(value, int):
        av.int_value = value
    elif isinstance(value, float):
        av.double_value = value
    elif isinstance(value, bytes):
        av.bytes_value = value
    elif isinstance(value, (list, tuple)):
        av.array_value.SetInParent()
        for v in value:
            set_any(av.array_value.values.add(), v)
    elif isinstance(value, dict):
        av.kvlist_value.SetInParent()
        for k, v in value.items():
            kv = av.kvlist_value.values.add()
            kv.key = k
            set_any(kv.value, v)
    elif value is None:
        pass
    else:
        av.string_value = str(value)


def request(service: str | None = "svc") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    if service is not None:
        kv = rs.resource.attributes.add()
        kv.key = "service.name"
        kv.value.string_value = service
    rs.scope_spans.add()
    return req


def add_span(
    req: ExportTraceServiceRequest,
    attrs: dict[str, Any],
    *,
    name: str = "span",
    start_ns: int = T0,
    duration_ns: int = 1_000_000,
    span_id: bytes | None = None,
    parent: bytes = b"",
    trace_id: bytes = b"\x01" * 16,
    status_code: int = 0,
) -> Any:
    span = req.resource_spans[-1].scope_spans[-1].spans.add()
    span.name = name
    span.trace_id = trace_id
    span.span_id = span_id or os.urandom(8)
    span.parent_span_id = parent
    span.start_time_unix_nano = start_ns
    span.end_time_unix_nano = start_ns + duration_ns
    span.status.code = status_code
    for key, value in attrs.items():
        kv = span.attributes.add()
        kv.key = key
        set_any(kv.value, value)
    return span
