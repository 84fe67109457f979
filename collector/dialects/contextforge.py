"""IBM ContextForge (mcp-context-forge) gateway, its tools telemetry exporter plugin.

Its ``tool.pre_invoke`` span carries ``tool.name``, the raw ``tool.invocation.args`` (JSON) and
the upstream server in ``target_mcp_server.{id,name,url}``; ``request_id`` is the gateway's
request id. The plugin's ``headers`` attribute is never read (it can hold credentials).
"""

from __future__ import annotations

from typing import Any

from toolwatch.instrumentation import semconv as sc

from . import attrs as a
from .base import CallShape, Dialect

INVOCATION_ARGS = "tool.invocation.args"
TOOL_NAME = "tool.name"
TARGET_TOOL_NAME = "tool.target_tool_name"
SERVER_NAME = "target_mcp_server.name"
SERVER_ID = "target_mcp_server.id"
SERVER_URL = "target_mcp_server.url"
MAX_INPUT_TEXT = 256 * 1024


class ContextForgeDialect(Dialect):
    name = "contextforge"
    marker_keys = (INVOCATION_ARGS,)

    def call(self, span: Any, attrs: a.Attrs) -> CallShape | None:
        if INVOCATION_ARGS not in attrs:
            return None
        return CallShape(
            tool=a.text(attrs, TARGET_TOOL_NAME) or a.text(attrs, TOOL_NAME),
            args_text=a.text(attrs, INVOCATION_ARGS, MAX_INPUT_TEXT),
            server=a.text(attrs, SERVER_NAME) or a.text(attrs, SERVER_ID),
            server_address=a.text(attrs, SERVER_URL),
            session_id=a.text(attrs, sc.MCP_SESSION_ID),
            error_type=a.text(attrs, sc.ERROR_TYPE),
        )

    def missing_tool_message(self) -> str:
        return f"a ContextForge span with {INVOCATION_ARGS} but without {TOOL_NAME}"


CONTEXTFORGE = ContextForgeDialect()
