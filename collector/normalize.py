"""The one place that turns spans of any supported convention into ``ToolCall``/``ToolListing``.

Keys on attributes, never span names. Arguments that did not pass through toolwatch's edge
redaction are redacted here (``redact_args``) before anything is stored, logged or alerted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from toolwatch.detectors.events import ToolCall, ToolDefinition, ToolListing
from toolwatch.instrumentation import semconv as sc

MAX_NAME = 256
MAX_ARGS_TEXT = 64 * 1024
UNKNOWN_AGENT = "unknown"


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


def any_value(av: AnyValue) -> Any:
    kind = av.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in av.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in av.kvlist_value.values}
    if kind == "bytes_value":
        return av.bytes_value.hex()
    return getattr(av, kind)


def _s(attrs: dict[str, AnyValue], key: str, limit: int = MAX_NAME) -> str:
    av = attrs.get(key)
    if av is None:
        return ""
    val = any_value(av)
    if val is None:
        return ""
    text = val if isinstance(val, str) else json.dumps(val) if isinstance(val, (list, dict)) else str(val)
    return text[:limit]


def _i(attrs: dict[str, AnyValue], key: str) -> int:
    av = attrs.get(key)
    if av is None:
        return 0
    val = any_value(av)
    try:
        return max(0, int(val))
    except (TypeError, ValueError):
        return 0


def _f(attrs: dict[str, AnyValue], key: str) -> float:
    av = attrs.get(key)
    if av is None:
        return 0.0
    try:
        val = float(any_value(av))
    except (TypeError, ValueError):
        return 0.0
    return val if 0.0 <= val <= 1.0 else 0.0


def _strs(attrs: dict[str, AnyValue], key: str, limit: int = 256) -> tuple[str, ...]:
    av = attrs.get(key)
    if av is None:
        return ()
    val = any_value(av)
    if isinstance(val, str):
        val = [v for v in val.split(",") if v]
    if not isinstance(val, list):
        return ()
    return tuple(str(v)[:MAX_NAME] for v in val[:limit] if v is not None)


def _ints(attrs: dict[str, AnyValue], key: str, limit: int = 256) -> tuple[int, ...]:
    av = attrs.get(key)
    if av is None:
        return ()
    val = any_value(av)
    if not isinstance(val, list):
        return ()
    out = []
    for v in val[:limit]:
        try:
            out.append(int(v))
        except (TypeError, ValueError):
            return ()
    return tuple(out)


def _is_tool_call(attrs: dict[str, AnyValue]) -> bool:
    op = attrs.get(sc.GEN_AI_OPERATION_NAME)
    if op is not None and op.string_value == sc.OP_EXECUTE_TOOL:
        return True
    method = attrs.get(sc.MCP_METHOD_NAME)
    return method is not None and method.string_value == sc.METHOD_TOOLS_CALL


def _definitions(text: str) -> tuple[ToolDefinition, ...] | None:
    try:
        data = json.loads(text)
    except ValueError:
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

    def __init__(self, redact_args: ArgsRedactor = drop_raw_args) -> None:
        self.redact_args = redact_args

    def normalize(self, req: ExportTraceServiceRequest) -> Normalized:
        out = Normalized()
        for rs in req.resource_spans:
            res_attrs = {kv.key: kv.value for kv in rs.resource.attributes}
            service = _s(res_attrs, sc.SERVICE_NAME)
            spans = [span for ss in rs.scope_spans for span in ss.spans]
            out.spans += len(spans)
            # Agents named on invoke_agent spans, for tool spans that carry no agent of their own.
            parents: dict[bytes, str] = {}
            for span in spans:
                attrs = {kv.key: kv.value for kv in span.attributes}
                if _s(attrs, sc.GEN_AI_OPERATION_NAME) == sc.OP_INVOKE_AGENT:
                    agent = _s(attrs, sc.GEN_AI_AGENT_ID) or _s(attrs, sc.GEN_AI_AGENT_NAME)
                    if agent:
                        parents[span.span_id] = agent
            for span in spans:
                attrs = {kv.key: kv.value for kv in span.attributes}
                try:
                    self._one(span, attrs, service, parents, out)
                except Exception as exc:  # one bad span never costs the rest of the request
                    out.reject(f"span {span.span_id.hex() or '?'}: {type(exc).__name__}: {exc}"[:300])
        return out

    def _agent(self, span: Any, attrs: dict[str, AnyValue], service: str, parents: dict[bytes, str]) -> tuple[str, str]:
        name = _s(attrs, sc.GEN_AI_AGENT_NAME)
        agent = _s(attrs, sc.GEN_AI_AGENT_ID) or name or parents.get(span.parent_span_id, "") or service
        return agent or UNKNOWN_AGENT, name

    def _one(self, span: Any, attrs: dict[str, AnyValue], service: str, parents: dict[bytes, str], out: Normalized) -> None:
        method = _s(attrs, sc.MCP_METHOD_NAME)
        if _is_tool_call(attrs):
            tool = _s(attrs, sc.GEN_AI_TOOL_NAME)
            if not tool:
                name = span.name
                if name.startswith(("tools/call ", "execute_tool ")):
                    tool = name.split(" ", 1)[1][:MAX_NAME]
            if not tool:
                out.reject(f"span {span.span_id.hex()}: a tool call without {sc.GEN_AI_TOOL_NAME}")
                return
            out.calls.append(self._call(span, attrs, tool, service, parents))
        elif method == sc.METHOD_TOOLS_LIST:
            listing = self._listing(span, attrs, service, parents)
            if listing is None:
                out.reject(f"span {span.span_id.hex()}: tools/list without a valid {sc.GEN_AI_TOOL_DEFINITIONS} JSON array")
            else:
                out.listings.append(listing)

    def _call(self, span: Any, attrs: dict[str, AnyValue], tool: str, service: str, parents: dict[bytes, str]) -> ToolCall:
        agent, agent_name = self._agent(span, attrs, service, parents)
        args_text = _s(attrs, sc.GEN_AI_TOOL_CALL_ARGUMENTS, MAX_ARGS_TEXT)
        args_labels = _strs(attrs, sc.TW_ARGS_LABELS)
        args_fps = _strs(attrs, sc.TW_ARGS_FINGERPRINTS)
        dests = _strs(attrs, sc.TW_ARGS_DESTINATIONS)
        args_sketch = _ints(attrs, sc.TW_ARGS_SKETCH)
        args_bytes = _i(attrs, sc.TW_ARGS_BYTES)
        redacted_at_edge = sc.TW_REDACTED in attrs and any_value(attrs[sc.TW_REDACTED]) is True
        if args_text and not redacted_at_edge:
            red = self.redact_args(args_text)
            args_bytes = args_bytes or len(args_text.encode("utf-8", "surrogatepass"))
            args_text = "" if red.value is None else json.dumps(red.value, ensure_ascii=False, default=str)[:MAX_ARGS_TEXT]
            args_labels = tuple(sorted(set(args_labels) | set(red.labels)))
            args_fps = tuple(sorted(set(args_fps) | set(red.fingerprints)))
            dests = tuple(sorted(set(dests) | set(red.destinations)))
            args_sketch = args_sketch or tuple(red.sketch)
        error = _s(attrs, sc.ERROR_TYPE)
        if not error and span.status.code == 2:  # STATUS_CODE_ERROR
            error = "error"
        return ToolCall(
            time_ns=int(span.start_time_unix_nano),
            duration_ns=max(0, int(span.end_time_unix_nano) - int(span.start_time_unix_nano)),
            agent_id=agent,
            agent_name=agent_name,
            tool=tool,
            server=_s(attrs, sc.TW_SERVER_NAME) or _s(attrs, sc.SERVER_ADDRESS),
            server_address=_s(attrs, sc.SERVER_ADDRESS),
            session_id=_s(attrs, sc.MCP_SESSION_ID) or span.trace_id.hex(),
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            request_id=_s(attrs, sc.JSONRPC_REQUEST_ID),
            error_type=error,
            args_json=args_text,
            args_bytes=args_bytes,
            result_bytes=_i(attrs, sc.TW_RESULT_BYTES),
            args_labels=args_labels,
            result_labels=_strs(attrs, sc.TW_RESULT_LABELS),
            args_fingerprints=args_fps,
            result_fingerprints=_strs(attrs, sc.TW_RESULT_FINGERPRINTS),
            args_sketch=args_sketch,
            result_sketch=_ints(attrs, sc.TW_RESULT_SKETCH),
            result_injection_score=_f(attrs, sc.TW_RESULT_INJECTION_SCORE),
            destinations=dests,
            definition_sha256=_s(attrs, sc.TW_TOOL_DEFINITION_SHA256, 64),
            source="toolwatch" if sc.TW_ARGS_BYTES in attrs else "genai",
        )

    def _listing(self, span: Any, attrs: dict[str, AnyValue], service: str, parents: dict[bytes, str]) -> ToolListing | None:
        defs = _definitions(_s(attrs, sc.GEN_AI_TOOL_DEFINITIONS, 4 * 1024 * 1024))
        if defs is None:
            return None
        agent, _ = self._agent(span, attrs, service, parents)
        return ToolListing(
            time_ns=int(span.start_time_unix_nano),
            agent_id=agent,
            server=_s(attrs, sc.TW_SERVER_NAME) or _s(attrs, sc.SERVER_ADDRESS),
            tools=defs,
            session_id=_s(attrs, sc.MCP_SESSION_ID) or span.trace_id.hex(),
            server_version=_s(attrs, sc.TW_SERVER_VERSION),
            instructions_sha256=_s(attrs, sc.TW_SERVER_INSTRUCTIONS_SHA256, 64),
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            source="toolwatch",
        )


def iter_spans(req: ExportTraceServiceRequest) -> Iterable[Any]:
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            yield from ss.spans
