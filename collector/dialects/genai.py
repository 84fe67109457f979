"""toolwatch's own schema and the OpenTelemetry MCP / GenAI ``execute_tool`` conventions.

toolwatch's emitters use the OTel keys plus ``toolwatch.*`` extras, so they share one dialect;
``toolwatch.redacted=true`` marks arguments that were already redacted at the edge.
"""

from __future__ import annotations

from typing import Any

from toolwatch.instrumentation import semconv as sc

from . import attrs as a
from .base import CallShape, Dialect, ListingShape

MAX_DEFINITIONS_TEXT = 4 * 1024 * 1024
MAX_ARGS_TEXT = 64 * 1024


class GenAiDialect(Dialect):
    name = "genai"
    marker_keys = (sc.GEN_AI_OPERATION_NAME, sc.MCP_METHOD_NAME)

    def call(self, span: Any, attrs: a.Attrs) -> CallShape | None:
        op = attrs.get(sc.GEN_AI_OPERATION_NAME)
        if op is None or op.string_value != sc.OP_EXECUTE_TOOL:
            method = attrs.get(sc.MCP_METHOD_NAME)
            if method is None or method.string_value != sc.METHOD_TOOLS_CALL:
                return None
        tool = a.text(attrs, sc.GEN_AI_TOOL_NAME)
        if not tool:
            # The conventions' span name is "{method} {tool}"; used only when the key is missing.
            name = span.name
            if name.startswith(("tools/call ", "execute_tool ")):
                tool = name.split(" ", 1)[1][: a.MAX_NAME]
        return CallShape(
            tool=tool,
            args_text=a.text(attrs, sc.GEN_AI_TOOL_CALL_ARGUMENTS, MAX_ARGS_TEXT),
            args_redacted=a.is_true(attrs, sc.TW_REDACTED),
            server=a.text(attrs, sc.TW_SERVER_NAME) or a.text(attrs, sc.SERVER_ADDRESS),
            server_address=a.text(attrs, sc.SERVER_ADDRESS),
            session_id=a.text(attrs, sc.MCP_SESSION_ID),
            error_type=a.text(attrs, sc.ERROR_TYPE),
        )

    def listing(self, span: Any, attrs: a.Attrs) -> ListingShape | None:
        if not a.string_is(attrs, sc.MCP_METHOD_NAME, sc.METHOD_TOOLS_LIST):
            return None
        return ListingShape(
            definitions_text=a.text(attrs, sc.GEN_AI_TOOL_DEFINITIONS, MAX_DEFINITIONS_TEXT),
            server=a.text(attrs, sc.TW_SERVER_NAME) or a.text(attrs, sc.SERVER_ADDRESS),
        )

    def missing_tool_message(self) -> str:
        return f"a tool call without {sc.GEN_AI_TOOL_NAME}"


GENAI = GenAiDialect()
