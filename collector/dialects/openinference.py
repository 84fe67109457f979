"""OpenInference (Arize): ``openinference.span.kind=TOOL`` spans.

The tool is ``tool.name``; the call's raw arguments are ``input.value`` (JSON text when
``input.mime_type`` is ``application/json``). ``tool.parameters`` is the tool's JSON schema,
not the call's arguments, so it is never read as arguments. Session: ``session.id``.
"""

from __future__ import annotations

from typing import Any

from toolwatch.instrumentation import semconv as sc

from . import attrs as a
from .base import CallShape, Dialect

SPAN_KIND = "openinference.span.kind"
KIND_TOOL = "TOOL"
TOOL_NAME = "tool.name"
TOOL_PARAMETERS = "tool.parameters"
INPUT_VALUE = "input.value"
SESSION_ID = "session.id"
MAX_INPUT_TEXT = 256 * 1024


class OpenInferenceDialect(Dialect):
    name = "openinference"
    marker_keys = (SPAN_KIND,)

    def call(self, span: Any, attrs: a.Attrs) -> CallShape | None:
        av = attrs.get(SPAN_KIND)
        if av is None or av.string_value.upper() != KIND_TOOL:
            return None
        return CallShape(
            tool=a.text(attrs, TOOL_NAME),
            args_text=a.text(attrs, INPUT_VALUE, MAX_INPUT_TEXT),
            server=a.text(attrs, sc.TW_SERVER_NAME) or a.text(attrs, sc.SERVER_ADDRESS),
            server_address=a.text(attrs, sc.SERVER_ADDRESS),
            session_id=a.text(attrs, SESSION_ID) or a.text(attrs, sc.MCP_SESSION_ID),
            error_type=a.text(attrs, sc.ERROR_TYPE),
        )

    def missing_tool_message(self) -> str:
        return f"an OpenInference TOOL span without {TOOL_NAME}"


OPENINFERENCE = OpenInferenceDialect()
