"""OTLP/gRPC receiver: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

The request arrives as bytes (no deserializer) so it goes through the same salvaging decoder as
OTLP/HTTP: one span with a non-UTF-8 string costs only itself and is reported as partial
success. Overload answers RESOURCE_EXHAUSTED and start/drain answers UNAVAILABLE, both with a
``google.rpc.RetryInfo`` detail, which the OTLP specification makes retryable.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from .. import otlp
from . import NetworkReceiver, Overloaded, Unavailable

log = logging.getLogger("toolwatch.receiver.otlp_grpc")
NAME = "otlp_grpc"
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def retry_status(code: grpc.StatusCode, message: str, retry_after_s: int) -> bytes:
    """A serialized google.rpc.Status carrying RetryInfo, for the ``grpc-status-details-bin`` trailer."""
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_s))
    st = status_pb2.Status(code=code.value[0], message=message)
    st.details.add().Pack(info)
    return st.SerializeToString()


class OtlpGrpcReceiver(NetworkReceiver):
    name = NAME

    _server: grpc.aio.Server | None = None
    server_options: tuple[tuple[str, Any], ...] = (("grpc.so_reuseport", 0),)
    """gRPC server options beside the body limit. gRPC sets ``SO_REUSEPORT`` by default, with which a
    second toolwatch of this user on the same port shared it silently; in the daemon's process it
    is off, so that start fails (worker processes share the port on purpose: ``otlp_worker_main``)."""

    async def _abort_retryable(self, context: Any, code: grpc.StatusCode, message: str) -> None:
        context.set_trailing_metadata(((STATUS_DETAILS_KEY, retry_status(code, message, self.retry_after_s)),))
        await context.abort(code, message)

    async def export(self, body: bytes, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        if self.bearer_token:
            meta = dict(context.invocation_metadata() or ())
            if not hmac.compare_digest(str(meta.get("authorization", "")), self._auth):
                self._count_rejected("unauthorized")
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            self.refuse_early()  # before the body is decoded only to be refused
        except Overloaded as exc:
            await self._abort_retryable(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        try:
            decoded = otlp.decode_export(body, otlp.PROTOBUF)
        except otlp.DecodeError as exc:
            self._count_rejected(exc.reason)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            result = await self.admit(decoded)
        except Overloaded as exc:
            await self._abort_retryable(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Unavailable as exc:
            await self._abort_retryable(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        resp = trace_service_pb2.ExportTraceServiceResponse()
        if result.rejected:
            resp.partial_success.rejected_spans = result.rejected
            resp.partial_success.error_message = result.message
        return resp

    def _handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(
            self.export,
            request_deserializer=None,  # raw bytes: decoded by otlp.decode_export
            response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"Export": method})

    async def start(self) -> None:
        if self._server is not None:
            return
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", self.max_body_bytes), *self.server_options])
        server.add_generic_rpc_handlers((self._handler(),))
        addr = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            if self.tls:
                creds = grpc.ssl_server_credentials([self.tls.pem_pair()])
                self.bound_port = server.add_secure_port(addr, creds)
            else:
                self.bound_port = server.add_insecure_port(addr)
        except RuntimeError:  # grpcio raises where older versions returned 0 (a port in use)
            self.bound_port = 0
        if not self.bound_port:
            raise OSError(f"otlp_grpc: cannot listen on {addr} (is the port in use? set otlp_grpc to a free port, or off)")
        await server.start()
        self._server = server
        log.info("OTLP/gRPC receiver on %s:%s%s", self.host, self.bound_port, " (TLS)" if self.tls else "")

    async def shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=1.0)
