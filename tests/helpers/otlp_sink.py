"""An in-process OTLP/HTTP trace receiver for tests: a tiny aiohttp app on 127.0.0.1, port 0.

It decodes real ``ExportTraceServiceRequest`` protobufs, so a test exercises the SDK's OTLP/HTTP
exporter end to end. Arrival is signalled through an ``asyncio.Condition`` (no polling sleeps).
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    name: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    status_message: str
    trace_id: str
    span_id: str
    start_ns: int
    end_ns: int


@dataclass
class OtlpSink:
    spans: list[ReceivedSpan] = field(default_factory=list)
    raw_bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    _cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    async def start(self) -> "OtlpSink":
        app = web.Application()
        app.router.add_post("/v1/traces", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.raw_bodies.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        export = ExportTraceServiceRequest.FromString(body)
        received = []
        for rs in export.resource_spans:
            resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    received.append(ReceivedSpan(
                        name=s.name, kind=s.kind,
                        attributes={kv.key: any_value(kv.value) for kv in s.attributes},
                        resource=resource, status_code=s.status.code, status_message=s.status.message,
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                    ))
        async with self._cond:
            self.spans.extend(received)
            self._cond.notify_all()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0) -> list[ReceivedSpan]:
        async def until() -> None:
            async with self._cond:
                await self._cond.wait_for(lambda: predicate(self.spans))
        await asyncio.wait_for(until(), timeout)
        return list(self.spans)

    def named(self, prefix: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]
