"""One raw OTLP/gRPC ``TraceService/Export`` call, with the body as bytes (good, partial or garbage)."""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def grpc_export(target: str, body: bytes, *, creds: Any = None, metadata: Any = None) -> ExportTraceServiceResponse:
    """Export ``body`` over a new channel (a new connection: with worker processes, the kernel may hand
    it to any of them); raises ``grpc.RpcError`` on a refusal."""
    channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    with channel:
        fn = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString)
        return fn(body, timeout=10, metadata=metadata)
