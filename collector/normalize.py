"""The one place that turns spans of any supported convention into ``ToolCall``/``ToolListing``.

Which attributes mean what lives in ``dialects/`` (one module per convention); this module
decides everything common: agent resolution (span, else parent ``invoke_agent`` span, else the
resource's ``service.name``), redaction of arguments that did not pass toolwatch's edge
redaction (``redact_args``, before anything is stored, logged or alerted), limits, and
per-span rejection so one bad span never costs the rest of a request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from toolwatch.detectors.events import ToolCall, ToolDefinition, ToolListing
from toolwatch.instrumentation import semconv as sc

from .dialects import DIALECTS, MARKER_KEYS, CallShape, Dialect
from .dialects import attrs as a
from .dialects.attrs import any_value

__all__ = [
    "ArgsRedactor",
    "Normalized",
    "Normalizer",
    "RedactedArgs",
    "any_value",
    "drop_raw_args",
    "iter_spans",
]

MAX_NAME = a.MAX_NAME
MAX_ARGS_TEXT = 64 * 1024
UNKNOWN_AGENT = "unknown"
STATUS_CODE_ERROR = 2


class RedactedArgs(Protocol):
    value: Any
    labels: tuple[str, ...]
    fingerprints: tuple[str, ...]
    destinations: tuple[str, ...]
    sketch: tuple[int, ...]


ArgsRedactor = Callable[[str], RedactedArgs]


@dataclass(slots=True)
class _Dropped:
    """What ingest keeps of raw arguments when no redactor is configured: nothing but the size."""

    value: Any = None
    labels: tuple[str, ...] = ()
    fingerprints: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    sketch: tuple[int, ...] = ()


def drop_raw_args(text: str) -> RedactedArgs:
    return _Dropped()


@dataclass
class Normalized:
    calls: list[ToolCall] = field(default_factory=list)
    listings: list[ToolListing] = field(default_factory=list)
    spans: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def reject(self, message: str) -> None:
        self.rejected += 1
        if len(self.errors) < 5:
            self.errors.append(message)


def _definitions(text: str) -> tuple[ToolDefinition, ...] | None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        data = data["tools"]
    if not isinstance(data, list):
        return None
    out = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        out.append(
            ToolDefinition(
                name=item["name"][:MAX_NAME],
                title=str(item.get("title") or "")[:MAX_NAME],
                description=str(item.get("description") or ""),
                input_schema=item.get("inputSchema", item.get("parameters")),
                output_schema=item.get("outputSchema"),
                annotations=item.get("annotations"),
            )
        )
    return tuple(out)


class Normalizer:
    """Stateless apart from its redactor; one instance per receiver is fine."""

    def __init__(self, redact_args: ArgsRedactor = drop_raw_args, dialects: tuple[Dialect, ...] = DIALECTS) -> None:
        self.redact_args = redact_args
        self.dialects = dialects
        self._markers = frozenset(k for d in dialects for k in d.marker_keys) if dialects is not DIALECTS else MARKER_KEYS

    def normalize(self, req: ExportTraceServiceRequest) -> Normalized:
        out = Normalized()
        markers = self._markers
        for rs in req.resource_spans:
            service = ""
            for kv in rs.resource.attributes:
                if kv.key == sc.SERVICE_NAME:
                    service = a.text({sc.SERVICE_NAME: kv.value}, sc.SERVICE_NAME)
                    break
            # Agents named on invoke_agent spans, for tool spans that carry no agent of their own.
            parents: dict[bytes, str] = {}
            candidates = []
            for ss in rs.scope_spans:
                spans = ss.spans
                out.spans += len(spans)
                for span in spans:
                    attrs = {kv.key: kv.value for kv in span.attributes}
                    if markers.isdisjoint(attrs):
                        continue  # not a tool span in any dialect: the cheap, common case
                    op = attrs.get(sc.GEN_AI_OPERATION_NAME)
                    if op is not None and op.string_value == sc.OP_INVOKE_AGENT:
                        agent = a.text(attrs, sc.GEN_AI_AGENT_ID) or a.text(attrs, sc.GEN_AI_AGENT_NAME)
                        if agent:
                            parents[span.span_id] = agent
                        continue
                    candidates.append((span, attrs))
            for span, attrs in candidates:
                try:
                    self._one(span, attrs, service, parents, out)
                except Exception as exc:  # one bad span never costs the rest of the request
                    out.reject(f"span {span.span_id.hex() or '?'}: {type(exc).__name__}: {exc}"[:300])
        return out

    def _agent(self, span: Any, attrs: a.Attrs, service: str, parents: dict[bytes, str]) -> tuple[str, str]:
        name = a.text(attrs, sc.GEN_AI_AGENT_NAME)
        agent = a.text(attrs, sc.GEN_AI_AGENT_ID) or name or parents.get(span.parent_span_id, "") or service
        return agent or UNKNOWN_AGENT, name

    def _one(self, span: Any, attrs: a.Attrs, service: str, parents: dict[bytes, str], out: Normalized) -> None:
        for dialect in self.dialects:
            shape = dialect.call(span, attrs)
            if shape is not None:
                if not shape.tool:
                    out.reject(f"span {span.span_id.hex()}: {dialect.missing_tool_message()}")
                else:
                    out.calls.append(self._call(span, attrs, shape, dialect.name, service, parents))
                return
            found = dialect.listing(span, attrs)
            if found is not None:
                defs = _definitions(found.definitions_text) if found.definitions_text else None
                if defs is None:
                    out.reject(f"span {span.span_id.hex()}: a {dialect.name} tools/list span without a valid JSON tool list")
                else:
                    out.listings.append(self._listing(span, attrs, defs, found.server, dialect.name, service, parents))
                return

    def _call(
        self, span: Any, attrs: a.Attrs, shape: CallShape, source: str, service: str, parents: dict[bytes, str]
    ) -> ToolCall:
        agent, agent_name = self._agent(span, attrs, service, parents)
        args_text = shape.args_text
        # toolwatch's edge enrichments; other dialects never carry them, so skip nine lookups.
        edge = (
            sc.TW_ARGS_BYTES in attrs
            or sc.TW_REDACTED in attrs
            or sc.TW_RESULT_BYTES in attrs
            or sc.TW_RESULT_LABELS in attrs
            or sc.TW_SERVER_NAME in attrs
        )
        args_labels = a.strings(attrs, sc.TW_ARGS_LABELS) if edge else ()
        args_fps = a.strings(attrs, sc.TW_ARGS_FINGERPRINTS) if edge else ()
        dests = a.strings(attrs, sc.TW_ARGS_DESTINATIONS) if edge else ()
        args_sketch = a.ints(attrs, sc.TW_ARGS_SKETCH) if edge else ()
        args_bytes = a.count(attrs, sc.TW_ARGS_BYTES) if edge else 0
        if args_text and not shape.args_redacted:
            red = self.redact_args(args_text)
            args_bytes = args_bytes or len(args_text.encode("utf-8", "surrogatepass"))
            args_text = "" if red.value is None else json.dumps(red.value, ensure_ascii=False, default=str)[:MAX_ARGS_TEXT]
            args_labels = tuple(sorted(set(args_labels) | set(red.labels)))
            args_fps = tuple(sorted(set(args_fps) | set(red.fingerprints)))
            dests = tuple(sorted(set(dests) | set(red.destinations)))
            args_sketch = args_sketch or tuple(red.sketch)
        error = shape.error_type
        if not error and span.HasField("status") and span.status.code == STATUS_CODE_ERROR:
            error = "error"
        trace_id = span.trace_id.hex()
        start = span.start_time_unix_nano
        return ToolCall(
            time_ns=start,
            duration_ns=max(0, span.end_time_unix_nano - start),
            agent_id=agent,
            agent_name=agent_name,
            tool=shape.tool,
            server=shape.server,
            server_address=shape.server_address,
            session_id=shape.session_id or trace_id,
            trace_id=trace_id,
            span_id=span.span_id.hex(),
            request_id=a.text(attrs, sc.JSONRPC_REQUEST_ID),
            error_type=error,
            args_json=args_text,
            args_bytes=args_bytes,
            result_bytes=a.count(attrs, sc.TW_RESULT_BYTES) if edge else 0,
            args_labels=args_labels,
            result_labels=a.strings(attrs, sc.TW_RESULT_LABELS) if edge else (),
            args_fingerprints=args_fps,
            result_fingerprints=a.strings(attrs, sc.TW_RESULT_FINGERPRINTS) if edge else (),
            args_sketch=args_sketch,
            result_sketch=a.ints(attrs, sc.TW_RESULT_SKETCH) if edge else (),
            result_injection_score=a.unit_float(attrs, sc.TW_RESULT_INJECTION_SCORE) if edge else 0.0,
            destinations=dests,
            definition_sha256=a.text(attrs, sc.TW_TOOL_DEFINITION_SHA256, 64) if edge else "",
            source="toolwatch" if sc.TW_ARGS_BYTES in attrs else source,
        )

    def _listing(
        self,
        span: Any,
        attrs: a.Attrs,
        defs: tuple[ToolDefinition, ...],
        server: str,
        source: str,
        service: str,
        parents: dict[bytes, str],
    ) -> ToolListing:
        agent, _ = self._agent(span, attrs, service, parents)
        trace_id = span.trace_id.hex()
        return ToolListing(
            time_ns=span.start_time_unix_nano,
            agent_id=agent,
            server=server,
            tools=defs,
            session_id=a.text(attrs, sc.MCP_SESSION_ID) or trace_id,
            server_version=a.text(attrs, sc.TW_SERVER_VERSION),
            instructions_sha256=a.text(attrs, sc.TW_SERVER_INSTRUCTIONS_SHA256, 64),
            trace_id=trace_id,
            span_id=span.span_id.hex(),
            source="toolwatch" if sc.TW_SERVER_NAME in attrs else source,
        )


def iter_spans(req: ExportTraceServiceRequest) -> Iterable[Any]:
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            yield from ss.spans
