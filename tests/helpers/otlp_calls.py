"""Tool-call workloads as OTLP requests (protobuf and OTLP/JSON), for Kafka, replay and benchmarks."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from toolwatch.instrumentation import semconv as sc

T0 = 1_760_000_000_000_000_000


@dataclass(frozen=True)
class Call:
    agent: str
    server: str
    tool: str
    n: int
    """Sequence number: makes span id and event time unique and deterministic."""
    session: str = "s1"

    @property
    def time_ns(self) -> int:
        return T0 + self.n * 1_000_000

    @property
    def span_id(self) -> bytes:
        return hashlib.sha256(f"span{self.n}".encode()).digest()[:8]


def request(calls: Iterable[Call], service: str = "agents") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = sc.SERVICE_NAME, service
    ss = rs.scope_spans.add()
    ss.scope.name = "toolwatch.tests"
    for c in calls:
        span = ss.spans.add()
        span.name = f"tools/call {c.tool}"
        span.kind = 3  # CLIENT
        span.trace_id = hashlib.sha256(f"trace{c.n}".encode()).digest()[:16]
        span.span_id = c.span_id
        span.start_time_unix_nano = c.time_ns
        span.end_time_unix_nano = c.time_ns + 500_000
        for key, value in (
            (sc.MCP_METHOD_NAME, sc.METHOD_TOOLS_CALL),
            (sc.GEN_AI_OPERATION_NAME, sc.OP_EXECUTE_TOOL),
            (sc.GEN_AI_TOOL_NAME, c.tool),
            (sc.GEN_AI_AGENT_ID, c.agent),
            (sc.MCP_SESSION_ID, c.session),
            (sc.TW_SERVER_NAME, c.server),
        ):
            a = span.attributes.add()
            a.key, a.value.string_value = key, value
        a = span.attributes.add()
        a.key, a.value.int_value = sc.TW_ARGS_BYTES, 17
        a = span.attributes.add()
        a.key, a.value.bool_value = sc.TW_REDACTED, True
    return req


def _hex_ids(node: Any) -> None:
    if isinstance(node, dict):
        for key, val in node.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(val, str):
                node[key] = base64.b64decode(val).hex()
            else:
                _hex_ids(val)
    elif isinstance(node, list):
        for v in node:
            _hex_ids(v)


def to_otlp_json(req: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON as the Collector writes it (file exporter, Kafka ``otlp_json``): hex ids, one line."""
    data = json_format.MessageToDict(req)
    _hex_ids(data)
    return json.dumps(data, separators=(",", ":")).encode()


def workload(agents: int, calls_per_agent: int, *, new_tool_every: int = 0) -> list[Call]:
    """Round-robin calls over ``agents``; each agent uses two tools, and optionally a third, new one."""
    out = []
    n = 0
    for i in range(calls_per_agent):
        for a in range(agents):
            tool = "read_file" if i % 2 else "list_dir"
            if new_tool_every and i and i % new_tool_every == 0:
                tool = f"new_tool_{i}"
            out.append(Call(agent=f"agent-{a}", server="files", tool=tool, n=n, session=f"s{a}"))
            n += 1
    return out
