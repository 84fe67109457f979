"""Span attributes for MCP ``tools/call`` and ``tools/list``, shared by the client and the proxy.

Both emitters see the same JSON-RPC payloads (the client after pydantic, the proxy on the wire),
so both build their spans here from plain JSON values and cannot drift apart. Arguments are
redacted before they touch a span; results never do — only their size, labels, keyed
fingerprints, near-copy sketch and injection score.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from . import semconv as sc

__all__ = [
    "RedactorLike",
    "SessionInfo",
    "canonical_definition",
    "definition_sha256",
    "tool_call_attributes",
    "tool_list_attributes",
    "record_span",
    "span_name",
]

_INT64_MASK = (1 << 63) - 1
SERVER_INFO_META_KEY = "io.modelcontextprotocol/serverInfo"
"""Where a 2026-07-28 ``server/discover`` result names the server (``_meta``)."""
PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
"""Where a 2026-07-28 request names its protocol version (``params._meta``)."""


class RedactorLike(Protocol):
    """What the span builders need from ``instrumentation.redact.Redactor``."""

    def redact(self, value: Any) -> Any:
        """Return a ``Redaction`` (value, labels, fingerprints, destinations, bytes, sketch)."""
        ...

    def scan_result(self, value: Any) -> Any:
        """Return a ``ResultScan`` (bytes, labels, injection_score, fingerprints, sketch)."""
        ...


@dataclass(slots=True)
class SessionInfo:
    """What every span of one MCP session carries; filled in as ``initialize`` is seen."""

    agent_id: str
    agent_name: str = ""
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    server_name: str = ""
    server_version: str = ""
    protocol_version: str = ""
    instructions_sha256: str = ""
    transport: str = "pipe"
    """``pipe`` (stdio) or ``tcp`` (streamable HTTP)."""
    server_address: str = ""
    server_port: int | None = None
    emitter: str = "client"
    list_changed_pending: bool = False
    """Set by a ``notifications/tools/list_changed``; cleared by the next ``tools/list`` span."""
    tool_hashes: dict[str, str] = field(default_factory=dict)
    """Definition hash per tool name, from the last ``tools/list`` of this session."""

    def adopt_initialize_result(self, result: Mapping[str, Any]) -> None:
        """Take server name/version, protocol and instructions from an ``initialize`` result."""
        info = result.get("serverInfo")
        if isinstance(info, Mapping):
            if not self.server_name and isinstance(info.get("name"), str):
                self.server_name = info["name"]
            if isinstance(info.get("version"), str):
                self.server_version = info["version"]
        if isinstance(result.get("protocolVersion"), str):
            self.protocol_version = result["protocolVersion"]
        instructions = result.get("instructions")
        if isinstance(instructions, str) and instructions:
            self.instructions_sha256 = hashlib.sha256(instructions.encode("utf-8", "surrogatepass")).hexdigest()

    def adopt_discover_result(self, result: Mapping[str, Any]) -> None:
        """Take server identity and instructions from a 2026-era ``server/discover`` result."""
        meta = result.get("_meta")
        info = meta.get(SERVER_INFO_META_KEY) if isinstance(meta, Mapping) else None
        self.adopt_initialize_result({"serverInfo": info, "instructions": result.get("instructions")})

    def adopt_request_meta(self, params: Any) -> None:
        """2026-era requests carry the protocol version in ``params._meta``; take the first seen."""
        if self.protocol_version or not isinstance(params, Mapping):
            return
        meta = params.get("_meta")
        version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, Mapping) else None
        if isinstance(version, str):
            self.protocol_version = version

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            sc.GEN_AI_AGENT_ID: self.agent_id,
            sc.MCP_SESSION_ID: self.session_id,
            sc.NETWORK_TRANSPORT: self.transport,
            sc.TW_EMITTER: self.emitter,
        }
        if self.transport == "tcp":
            attrs[sc.NETWORK_PROTOCOL_NAME] = "http"
        optional = {
            sc.GEN_AI_AGENT_NAME: self.agent_name,
            sc.TW_SERVER_NAME: self.server_name,
            sc.TW_SERVER_VERSION: self.server_version,
            sc.MCP_PROTOCOL_VERSION: self.protocol_version,
            sc.TW_SERVER_INSTRUCTIONS_SHA256: self.instructions_sha256,
            sc.SERVER_ADDRESS: self.server_address,
        }
        attrs.update({k: v for k, v in optional.items() if v})
        if self.server_address and self.server_port is not None:
            attrs[sc.SERVER_PORT] = self.server_port
        return attrs


def span_name(method: str, target: str | None = None) -> str:
    """``{mcp.method.name} {target}`` per the MCP conventions, or the method alone."""
    return f"{method} {target}" if target else method


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def canonical_definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a wire-format tool definition that poisoning and rug-pulls change.

    Same shape as ``detectors.events.ToolDefinition.canonical()`` (missing text fields become
    ``""``, missing schemas ``None``), so emitter and collector hash identically.
    """
    return {
        "name": _text(tool.get("name")),
        "title": _text(tool.get("title")),
        "description": _text(tool.get("description")),
        "inputSchema": tool.get("inputSchema"),
        "outputSchema": tool.get("outputSchema"),
        "annotations": tool.get("annotations"),
    }


def definition_sha256(tool: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, compact) of one tool definition."""
    text = json.dumps(
        canonical_definition(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _strs(values: Any) -> list[str]:
    return [str(v) for v in (values or ())]


def _int64s(values: Any) -> list[int]:
    """OTLP integers are signed 64-bit; fold wider sketch values into range consistently."""
    return [int(v) & _INT64_MASK for v in (values or ())]


def _error_attributes(error: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    code = error.get("code")
    code_text = str(code) if code is not None else "_OTHER"
    message = error.get("message")
    return {sc.ERROR_TYPE: code_text, sc.RPC_RESPONSE_STATUS_CODE: code_text}, _text(message)


def tool_call_attributes(
    info: SessionInfo,
    redactor: RedactorLike,
    *,
    tool: str,
    arguments: Any,
    request_id: Any = None,
    result: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
    error_type: str | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Attributes of a ``tools/call`` span and, on failure, the span status description.

    ``result`` is the JSON-RPC ``result`` object (wire form), ``error`` the JSON-RPC ``error``
    object; ``error_type`` names a failure that produced neither (timeout, closed transport).
    Returns ``(attributes, None)`` on success.
    """
    attrs = info.attributes()
    attrs[sc.MCP_METHOD_NAME] = sc.METHOD_TOOLS_CALL
    attrs[sc.GEN_AI_OPERATION_NAME] = sc.OP_EXECUTE_TOOL
    attrs[sc.GEN_AI_TOOL_NAME] = tool
    if request_id is not None:
        attrs[sc.JSONRPC_REQUEST_ID] = str(request_id)
    if tool in info.tool_hashes:
        attrs[sc.TW_TOOL_DEFINITION_SHA256] = info.tool_hashes[tool]
    args = arguments if arguments is not None else {}
    redaction = redactor.redact(args)
    attrs[sc.GEN_AI_TOOL_CALL_ARGUMENTS] = json.dumps(
        redaction.value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
    )
    attrs[sc.TW_REDACTED] = True
    attrs[sc.TW_ARGS_BYTES] = int(redaction.bytes)
    attrs[sc.TW_ARGS_LABELS] = _strs(redaction.labels)
    attrs[sc.TW_ARGS_FINGERPRINTS] = _strs(redaction.fingerprints)
    attrs[sc.TW_ARGS_DESTINATIONS] = _strs(redaction.destinations)
    if getattr(redaction, "sketch", None):
        attrs[sc.TW_ARGS_SKETCH] = _int64s(redaction.sketch)

    status: str | None = None
    if error is not None:
        err_attrs, status = _error_attributes(error)
        attrs.update(err_attrs)
    elif result is not None:
        scan = redactor.scan_result(dict(result))
        attrs[sc.TW_RESULT_BYTES] = int(scan.bytes)
        attrs[sc.TW_RESULT_LABELS] = _strs(scan.labels)
        attrs[sc.TW_RESULT_FINGERPRINTS] = _strs(scan.fingerprints)
        attrs[sc.TW_RESULT_INJECTION_SCORE] = float(scan.injection_score)
        if scan.sketch:
            attrs[sc.TW_RESULT_SKETCH] = _int64s(scan.sketch)
        if result.get("isError") is True:
            attrs[sc.ERROR_TYPE] = sc.ERROR_TOOL
            status = ""
    if error_type is not None and status is None:
        attrs[sc.ERROR_TYPE] = error_type
        status = error_type
    return attrs, status


def _wire_definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of ``gen_ai.tool.definitions``: GenAI ``function`` shape plus MCP extras."""
    entry: dict[str, Any] = {"type": "function", "name": _text(tool.get("name"))}
    for key, out in (
        ("title", "title"),
        ("description", "description"),
        ("inputSchema", "parameters"),
        ("outputSchema", "outputSchema"),
        ("annotations", "annotations"),
    ):
        if tool.get(key) is not None:
            entry[out] = tool[key]
    return entry


def tool_list_attributes(
    info: SessionInfo,
    *,
    tools: Sequence[Mapping[str, Any]] | None,
    request_id: Any = None,
    error: Mapping[str, Any] | None = None,
    error_type: str | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Attributes of a ``tools/list`` span: the definitions (not secret) and their hashes.

    Consumes ``info.list_changed_pending``, so a listing that follows a
    ``notifications/tools/list_changed`` is marked as such.
    """
    attrs = info.attributes()
    attrs[sc.MCP_METHOD_NAME] = sc.METHOD_TOOLS_LIST
    if request_id is not None:
        attrs[sc.JSONRPC_REQUEST_ID] = str(request_id)
    attrs[sc.TW_TOOLS_AFTER_LIST_CHANGED] = info.list_changed_pending
    info.list_changed_pending = False
    status: str | None = None
    if error is not None:
        err_attrs, status = _error_attributes(error)
        attrs.update(err_attrs)
    elif error_type is not None:
        attrs[sc.ERROR_TYPE] = error_type
        status = error_type
    listed = [t for t in (tools or ()) if isinstance(t, Mapping)]
    if tools is not None and status is None:
        attrs[sc.GEN_AI_TOOL_DEFINITIONS] = json.dumps(
            [_wire_definition(t) for t in listed], ensure_ascii=False, separators=(",", ":"), default=str
        )
        hashes = [definition_sha256(t) for t in listed]
        attrs[sc.TW_TOOLS_DEFINITION_SHA256] = hashes
        info.tool_hashes.update({_text(t.get("name")): h for t, h in zip(listed, hashes, strict=True)})
    return attrs, status


def record_span(
    tracer: Tracer,
    name: str,
    attributes: Mapping[str, Any],
    *,
    start_ns: int,
    end_ns: int,
    status: str | None = None,
) -> None:
    """Emit one finished CLIENT span after the fact (never on the forwarding path)."""
    span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=dict(attributes), start_time=start_ns)
    if status is not None:
        span.set_status(Status(StatusCode.ERROR, status or None))
    span.end(end_time=max(end_ns, start_ns))
