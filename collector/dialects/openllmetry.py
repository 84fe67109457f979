"""OpenLLMetry (traceloop ``opentelemetry-instrumentation-mcp``).

Tool calls: ``traceloop.span.kind=tool``, the tool in ``traceloop.entity.name``, and the raw
request in ``traceloop.entity.input`` as ``{"tool_name": ..., "arguments": {...}}`` (possibly
truncated JSON). Always raw: it is redacted on ingest. The server-side FastMCP wrapper puts the
server's name in ``traceloop.workflow.name``.

Tool lists: the ``tools/list.mcp`` span has no span kind; its ``traceloop.entity.input`` is the
serialised request (``{"method": "tools/list", ...}``) and ``traceloop.entity.output`` the whole
``ListToolsResult`` (``{"tools": [...]}``).
"""

from __future__ import annotations

import json
from typing import Any

from toolwatch.instrumentation import semconv as sc

from . import attrs as a
from .base import CallShape, Dialect, ListingShape

SPAN_KIND = "traceloop.span.kind"
ENTITY_NAME = "traceloop.entity.name"
ENTITY_INPUT = "traceloop.entity.input"
ENTITY_OUTPUT = "traceloop.entity.output"
WORKFLOW_NAME = "traceloop.workflow.name"
KIND_TOOL = "tool"
MAX_INPUT_TEXT = 256 * 1024
MAX_OUTPUT_TEXT = 4 * 1024 * 1024


def _arguments_text(raw: str) -> str:
    """The ``arguments`` part of the traceloop input, as JSON text; the whole text if unparsable."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return raw  # truncated or not JSON: still redacted as a whole, never dropped silently
    if isinstance(data, dict) and "arguments" in data:
        return json.dumps(data["arguments"], ensure_ascii=False, default=str)
    return raw


class OpenLlmetryDialect(Dialect):
    name = "openllmetry"
    marker_keys = (SPAN_KIND, ENTITY_INPUT, ENTITY_OUTPUT)

    def call(self, span: Any, attrs: a.Attrs) -> CallShape | None:
        if not a.string_is(attrs, SPAN_KIND, KIND_TOOL):
            return None
        raw = a.text(attrs, ENTITY_INPUT, MAX_INPUT_TEXT)
        return CallShape(
            tool=a.text(attrs, ENTITY_NAME),
            args_text=_arguments_text(raw) if raw else "",
            server=a.text(attrs, WORKFLOW_NAME) or a.text(attrs, sc.SERVER_ADDRESS),
            server_address=a.text(attrs, sc.SERVER_ADDRESS),
            session_id=a.text(attrs, sc.MCP_SESSION_ID),
            error_type=a.text(attrs, sc.ERROR_TYPE),
        )

    def listing(self, span: Any, attrs: a.Attrs) -> ListingShape | None:
        if SPAN_KIND in attrs or ENTITY_OUTPUT not in attrs:
            return None
        if not self._is_tools_list_request(a.text(attrs, ENTITY_INPUT, 4096)) and not span.name.endswith("tools/list.mcp"):
            return None
        return ListingShape(
            definitions_text=a.text(attrs, ENTITY_OUTPUT, MAX_OUTPUT_TEXT),
            server=a.text(attrs, WORKFLOW_NAME) or a.text(attrs, sc.SERVER_ADDRESS),
        )

    @staticmethod
    def _is_tools_list_request(raw: str) -> bool:
        if sc.METHOD_TOOLS_LIST not in raw:
            return False
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return False
        if isinstance(data, dict) and isinstance(data.get("root"), dict):
            data = data["root"]
        return isinstance(data, dict) and data.get("method") == sc.METHOD_TOOLS_LIST

    def missing_tool_message(self) -> str:
        return f"an OpenLLMetry tool span without {ENTITY_NAME}"


OPENLLMETRY = OpenLlmetryDialect()
