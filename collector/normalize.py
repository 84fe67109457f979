"""The one place that turns spans of any supported convention into ``ToolCall``/``ToolListing``.

Which attributes mean what lives in ``dialects/`` (one module per convention); this module
decides everything common: agent resolution (span, else parent ``invoke_agent`` span, else the
resource's ``service.name``), redaction of arguments that did not pass toolwatch's edge
redaction (``redact_args``, before anything is stored, logged or alerted), limits, and
per-span rejection so one bad span never costs the rest of a request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Callable, Iterable, Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from toolwatch.detectors.events import ToolCall, ToolDefinition, ToolListing
from toolwatch.instrumentation import semconv as sc

from .dialects import DIALECTS, MARKER_KEYS, CallShape, Dialect
from .dialects.genai import GENAI
from .dialects.genai import MAX_ARGS_TEXT as GENAI_MAX_ARGS_TEXT
from .dialects import attrs as a
from .dialects.attrs import any_value
from .otlp_attrmap import is_attr_map

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
_MAX_STRINGS = 256
"""``a.strings``' default element limit."""

# Keys the GenAI fast path reads (module constants: a global load is cheaper than an attribute).
_OP, _METHOD, _TOOL, _ARGS = sc.GEN_AI_OPERATION_NAME, sc.MCP_METHOD_NAME, sc.GEN_AI_TOOL_NAME, sc.GEN_AI_TOOL_CALL_ARGUMENTS
_EXECUTE_TOOL, _TOOLS_CALL = sc.OP_EXECUTE_TOOL, sc.METHOD_TOOLS_CALL
_REDACTED, _AGENT_ID, _AGENT_NAME = sc.TW_REDACTED, sc.GEN_AI_AGENT_ID, sc.GEN_AI_AGENT_NAME
_SERVER_ADDRESS, _TW_SERVER, _SESSION, _ERROR = sc.SERVER_ADDRESS, sc.TW_SERVER_NAME, sc.MCP_SESSION_ID, sc.ERROR_TYPE
_REQUEST_ID, _TW_ARGS_BYTES, _TW_RESULT_BYTES = sc.JSONRPC_REQUEST_ID, sc.TW_ARGS_BYTES, sc.TW_RESULT_BYTES
_TW_ARGS_LABELS, _TW_RESULT_LABELS = sc.TW_ARGS_LABELS, sc.TW_RESULT_LABELS
_TW_ARGS_FPS, _TW_RESULT_FPS, _TW_DESTS = sc.TW_ARGS_FINGERPRINTS, sc.TW_RESULT_FINGERPRINTS, sc.TW_ARGS_DESTINATIONS
_TW_ARGS_SKETCH, _TW_RESULT_SKETCH = sc.TW_ARGS_SKETCH, sc.TW_RESULT_SKETCH
_TW_INJECTION, _TW_DEFINITION = sc.TW_RESULT_INJECTION_SCORE, sc.TW_TOOL_DEFINITION_SHA256
_INVOKE_AGENT = sc.OP_INVOKE_AGENT
_TOOLCALL_FIELDS = (
    "time_ns", "agent_id", "tool", "server", "session_id", "duration_ns", "trace_id", "span_id", "request_id",
    "agent_name", "server_address", "error_type", "args_json", "args_bytes", "result_bytes", "args_labels",
    "result_labels", "args_fingerprints", "result_fingerprints", "args_sketch", "result_sketch",
    "result_injection_score", "destinations", "definition_sha256", "source",
)  # fmt: skip
if tuple(f.name for f in fields(ToolCall)) != _TOOLCALL_FIELDS:
    raise ImportError(
        "ToolCall's fields changed order or number: update _TOOLCALL_FIELDS and the positional "
        "ToolCall(...) and row in Normalizer._genai_fast (collector/normalize.py) to match"
    )
_call_row = attrgetter(*_TOOLCALL_FIELDS)
"""A built call as a row of ``Normalizer(rows=True)``: its fields in order."""


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
    """Stateless apart from its redactor; one instance per receiver is fine.

    ``rows``: give each call as a row, the tuple of its fields in ``ToolCall`` order, instead of a
    ``ToolCall`` (the OTLP worker processes': they only send the values on, as columns, and the
    daemon builds the calls; ``worker_frames.rows_to_columns`` works out the tokens).
    """

    def __init__(
        self,
        redact_args: ArgsRedactor = drop_raw_args,
        dialects: tuple[Dialect, ...] = DIALECTS,
        *,
        fast: bool = True,
        rows: bool = False,
    ) -> None:
        self.redact_args = redact_args
        self.rows = rows
        self.dialects = dialects
        self._markers = frozenset(k for d in dialects for k in d.marker_keys) if dialects is not DIALECTS else MARKER_KEYS
        # For map-typed attributes, asked key by key (GenAI's first: they decide the common case).
        self._marker_order = tuple(sorted(self._markers, key=lambda k: (k not in GENAI.marker_keys, k)))
        # gen_ai.operation.name is read from every marked span anyway: where it is a marker, its
        # value answers "marked?" too, and only the other markers are asked key by key.
        self._op_marks = _OP in self._markers
        self._other_markers = tuple(k for k in self._marker_order if k != _OP) if self._op_marks else self._marker_order
        # The GenAI fast path stands in for asking the dialects only where GenAI is asked first.
        self._fast = fast and bool(dialects) and dialects[0] is GENAI

    def normalize(self, req: ExportTraceServiceRequest) -> Normalized:
        """``req`` as decoded by ``otlp`` (an ``ExportTraceServiceRequest`` or an ``AttrMapRequest``)."""
        out = Normalized()
        markers = self._markers
        # An AttrMapRequest's span attributes already are a {key: AnyValue} mapping (in C).
        mapped = is_attr_map(req)
        op_marks, other_markers = self._op_marks, self._other_markers
        fast = self._genai_fast if self._fast else None
        general = False  # whether any call came from the general path (a ToolCall, in rows mode too)
        for rs in req.resource_spans:
            service = ""
            for kv in rs.resource.attributes:
                if kv.key == sc.SERVICE_NAME:
                    service = a.text({sc.SERVICE_NAME: kv.value}, sc.SERVICE_NAME)
                    break
            # Agents named on invoke_agent spans, for tool spans that carry no agent of their own.
            parents: dict[bytes, str] = {}
            # In span order: finished calls (fast path), or (span, attrs) left for the general path,
            # which runs once every invoke_agent span of this resource is known.
            items: list[Any] = []
            deferred = 0
            for ss in rs.scope_spans:
                spans = ss.spans
                out.spans += len(spans)
                for span in spans:
                    if mapped:
                        attrs = span.attributes
                        av = attrs.get(_OP)
                        if av is None or not op_marks:
                            for key in other_markers:
                                if key in attrs:
                                    break
                            else:
                                continue  # not a tool span in any dialect: the cheap, common case
                    else:
                        attrs = {kv.key: kv.value for kv in span.attributes}
                        if markers.isdisjoint(attrs):
                            continue
                        av = attrs.get(_OP)
                    op = "" if av is None else av.string_value
                    if op == _INVOKE_AGENT:
                        agent = a.text(attrs, sc.GEN_AI_AGENT_ID) or a.text(attrs, sc.GEN_AI_AGENT_NAME)
                        if agent:
                            parents[span.span_id] = agent
                        continue
                    if fast is not None:
                        # At once, so the attribute wrappers are freed span by span: holding a
                        # request's worth of them alive costs more than reading them.
                        try:
                            call = fast(span, attrs, op)
                        except Exception:
                            call = None  # the general path decides (and words the rejection)
                        if call is not None:
                            items.append(call)
                            continue
                    items.append([span, attrs])  # a list: a finished call is a ToolCall or a row (tuple)
                    deferred += 1
            calls = out.calls
            if deferred == 0:
                calls.extend(items)  # every span took the fast path: nothing waits for the parents
                continue
            general = True
            for item in items:
                if type(item) is not list:
                    calls.append(item)
                    continue
                span, attrs = item
                try:
                    self._one(span, attrs, service, parents, out)
                except Exception as exc:  # one bad span never costs the rest of the request
                    out.reject(f"span {span.span_id.hex() or '?'}: {type(exc).__name__}: {exc}"[:300])
        if self.rows and general:
            out.calls = [c if type(c) is tuple else _call_row(c) for c in out.calls]  # type: ignore[misc]
        return out

    def _genai_fast(self, span: Any, attrs: a.Attrs, op: str) -> ToolCall | tuple[Any, ...] | None:
        """The common case (a GenAI/toolwatch ``execute_tool`` span with string-typed values), inline.

        Gives exactly what ``GENAI.call`` + ``_call`` give, or None whenever anything is unusual (a
        value of another type, a missing tool name, raw arguments to redact, not a GenAI call): the
        general path then decides, as it does for a span naming no agent (its parent may, later
        in the request). Each ``string_value[:n] or a.text(...)`` reads a string attribute without
        asking its type; an empty or non-string value falls through to the general reader.
        ``op`` is the span's ``gen_ai.operation.name`` string ('' if absent), already read by the caller.
        Key tests are ``in`` (a hash lookup, no wrapper) rather than set operations, which would
        walk every key of a map-typed ``attrs``. In ``rows`` mode the call is its row (the same
        values, without the token), which costs a tenth of the call.
        """
        get = attrs.get
        if op != _EXECUTE_TOOL:
            method = get(_METHOD)
            if method is None or method.string_value != _TOOLS_CALL:
                return None
        av = get(_TOOL)
        tool = "" if av is None else av.string_value[:MAX_NAME]
        if not tool:
            return None  # the span-name fallback and the rejection live in the general path
        av = get(_ARGS)
        args_text = "" if av is None else (av.string_value[:GENAI_MAX_ARGS_TEXT] or a.text(attrs, _ARGS, GENAI_MAX_ARGS_TEXT))
        # Each key is asked once: what decides the toolwatch edge below is kept from here.
        redacted = get(_REDACTED)
        if args_text and (redacted is None or not redacted.bool_value):
            return None  # raw arguments: redaction happens in the general path
        av = get(_AGENT_NAME)
        agent_name = "" if av is None else (av.string_value[:MAX_NAME] or a.text(attrs, _AGENT_NAME))
        av = get(_AGENT_ID)
        agent = ("" if av is None else (av.string_value[:MAX_NAME] or a.text(attrs, _AGENT_ID))) or agent_name
        if not agent:
            return None
        av = get(_SERVER_ADDRESS)
        server_address = "" if av is None else (av.string_value[:MAX_NAME] or a.text(attrs, _SERVER_ADDRESS))
        tw_server = get(_TW_SERVER)
        server = ("" if tw_server is None else (tw_server.string_value[:MAX_NAME] or a.text(attrs, _TW_SERVER))) or server_address
        av = get(_SESSION)
        session_id = "" if av is None else (av.string_value[:MAX_NAME] or a.text(attrs, _SESSION))
        av = get(_ERROR)
        error = "" if av is None else (av.string_value[:MAX_NAME] or a.text(attrs, _ERROR))
        if not error and span.HasField("status") and span.status.code == STATUS_CODE_ERROR:
            error = "error"
        av = get(_REQUEST_ID)
        request_id = "" if av is None else (av.string_value[:MAX_NAME] or a.text(attrs, _REQUEST_ID))
        args_bytes_av = get(_TW_ARGS_BYTES)
        toolwatch = args_bytes_av is not None
        result_bytes_av = get(_TW_RESULT_BYTES)
        if (
            toolwatch or redacted is not None or result_bytes_av is not None
            or tw_server is not None or _TW_RESULT_LABELS in attrs
        ):  # fmt: skip
            av = args_bytes_av
            args_bytes = 0 if av is None else (av.int_value if av.int_value > 0 else a.count(attrs, _TW_ARGS_BYTES))
            av = result_bytes_av
            result_bytes = 0 if av is None else (av.int_value if av.int_value > 0 else a.count(attrs, _TW_RESULT_BYTES))
            # Most spans carry few of these: an absent key costs a lookup, not a call.
            av = get(_TW_ARGS_LABELS)
            args_labels = () if av is None else _strings(av, attrs, _TW_ARGS_LABELS)
            av = get(_TW_RESULT_LABELS)
            result_labels = () if av is None else _strings(av, attrs, _TW_RESULT_LABELS)
            av = get(_TW_ARGS_FPS)
            args_fps = () if av is None else _strings(av, attrs, _TW_ARGS_FPS)
            av = get(_TW_RESULT_FPS)
            result_fps = () if av is None else _strings(av, attrs, _TW_RESULT_FPS)
            av = get(_TW_DESTS)
            dests = () if av is None else _strings(av, attrs, _TW_DESTS)
            args_sketch = () if _TW_ARGS_SKETCH not in attrs else a.ints(attrs, _TW_ARGS_SKETCH)
            result_sketch = () if _TW_RESULT_SKETCH not in attrs else a.ints(attrs, _TW_RESULT_SKETCH)
            injection = 0.0 if _TW_INJECTION not in attrs else a.unit_float(attrs, _TW_INJECTION)
            definition = "" if _TW_DEFINITION not in attrs else a.text(attrs, _TW_DEFINITION, 64)
        else:
            args_bytes = result_bytes = 0
            args_labels = result_labels = args_fps = result_fps = dests = args_sketch = result_sketch = ()
            injection = 0.0
            definition = ""
        trace_id = span.trace_id.hex()
        start = span.start_time_unix_nano
        end = span.end_time_unix_nano
        if self.rows:  # the same values as the ToolCall below, in the same order
            return (
                start, agent, tool, server, session_id or trace_id, end - start if end > start else 0, trace_id,
                span.span_id.hex(), request_id, agent_name, server_address, error, args_text, args_bytes, result_bytes,
                args_labels, result_labels, args_fps, result_fps, args_sketch, result_sketch, injection, dests,
                definition, "toolwatch" if toolwatch else GENAI.name,
            )  # fmt: skip
        # Positional (in ``_TOOLCALL_FIELDS`` order): a third of the cost of 25 keywords.
        return ToolCall(
            start, agent, tool, server, session_id or trace_id, end - start if end > start else 0, trace_id,
            span.span_id.hex(), request_id, agent_name, server_address, error, args_text, args_bytes, result_bytes,
            args_labels, result_labels, args_fps, result_fps, args_sketch, result_sketch, injection, dests,
            definition, "toolwatch" if toolwatch else GENAI.name,
        )

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


def _strings(av: Any, attrs: a.Attrs, key: str) -> tuple[str, ...]:
    """``a.strings(attrs, key)`` of the present ``av`` for the common cases (an array of non-empty
    strings, or an empty array) without asking each value's type."""
    values = av.array_value.values
    n = len(values)
    if n == 1:  # the usual one label: no list, no comprehension
        one = values[0].string_value[:MAX_NAME]
        if one:
            return (one,)
    elif n:
        if n <= _MAX_STRINGS:
            out = [v.string_value[:MAX_NAME] for v in values]
            if all(out):
                return tuple(out)
    elif av.WhichOneof("value") == "array_value":
        return ()  # an empty array (a string value reads as an empty array too: a.strings splits it)
    return a.strings(attrs, key)


def iter_spans(req: ExportTraceServiceRequest) -> Iterable[Any]:
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            yield from ss.spans
