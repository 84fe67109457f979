"""Emit tool-call spans with the OpenTelemetry SDK itself, as an instrumented agent would."""

from __future__ import annotations

import json
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind

from toolwatch.instrumentation import semconv as sc


def provider(exporter: SpanExporter, service: str = "test-agent") -> TracerProvider:
    tp = TracerProvider(resource=Resource.create({"service.name": service}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


def emit_call(tp: TracerProvider, *, agent: str, server: str, tool: str, session: str = "s1", args: Any = None, **extra: Any) -> None:
    tracer = tp.get_tracer("toolwatch.tests")
    attrs: dict[str, Any] = {
        sc.MCP_METHOD_NAME: sc.METHOD_TOOLS_CALL,
        sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
        sc.GEN_AI_TOOL_NAME: tool,
        sc.GEN_AI_AGENT_ID: agent,
        sc.MCP_SESSION_ID: session,
        sc.TW_SERVER_NAME: server,
        sc.TW_ARGS_BYTES: len(json.dumps(args or {})),
        sc.TW_REDACTED: True,
    }
    if args is not None:
        attrs[sc.GEN_AI_TOOL_CALL_ARGUMENTS] = json.dumps(args)
    attrs.update(extra)
    with tracer.start_as_current_span(f"tools/call {tool}", kind=SpanKind.CLIENT, attributes=attrs):
        pass
