"""OTLP/gRPC receiver: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``."""

from __future__ import annotations

import logging

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from ..metrics import Metrics
from . import Ingest, Overloaded, Receiver

log = logging.getLogger("toolwatch.receiver.otlp_grpc")
NAME = "otlp_grpc"


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: "OtlpGrpcReceiver") -> None:
        self.r = receiver

    async def Export(self, request, context):  # type: ignore[override]
        r = self.r
        if r.bearer_token:
            meta = dict(context.invocation_metadata() or ())
            if meta.get("authorization", "") != f"Bearer {r.bearer_token}":
                r.metrics.requests_rejected.labels(NAME, "unauthorized").inc()
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            result = r.ingest(NAME, request)
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        resp = trace_service_pb2.ExportTraceServiceResponse()
        if result.rejected:
            resp.partial_success.rejected_spans = result.rejected
            resp.partial_success.error_message = result.message
        return resp


class OtlpGrpcReceiver(Receiver):
    name = NAME

    def __init__(self, host: str, port: int, ingest: Ingest, metrics: Metrics, *, max_body_bytes: int, bearer_token: str = "") -> None:
        self.host, self.port = host, port
        self.ingest = ingest
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.bearer_token = bearer_token
        self._server: grpc.aio.Server | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        if self._server is not None:
            return
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", self.max_body_bytes)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), server)
        addr = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self.bound_port = server.add_insecure_port(addr)
        if not self.bound_port:
            raise OSError(f"otlp_grpc: cannot listen on {addr}")
        await server.start()
        self._server = server
        log.info("OTLP/gRPC receiver on %s:%s", self.host, self.bound_port)

    async def shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=1.0)
