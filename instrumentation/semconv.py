"""Span attribute keys: the contract between emitters (client, proxy) and the collector.

Keys defined by the OpenTelemetry semantic conventions for GenAI and MCP (status: Development)
are used as-is; toolwatch's own keys live under ``toolwatch.``. Every key is declared here once,
so emitters and the collector cannot drift apart. See docs/span-schema.md.
"""

from __future__ import annotations

from typing import Final

# --- OpenTelemetry MCP conventions -------------------------------------------------------------
MCP_METHOD_NAME: Final = "mcp.method.name"
"""JSON-RPC method: ``tools/call``, ``tools/list``, ``initialize``, ``notifications/tools/list_changed``."""
MCP_SESSION_ID: Final = "mcp.session.id"
"""MCP session: the unit of a call sequence."""
MCP_PROTOCOL_VERSION: Final = "mcp.protocol.version"
"""Negotiated MCP protocol version."""
JSONRPC_REQUEST_ID: Final = "jsonrpc.request.id"
"""JSON-RPC request id of the call."""
ERROR_TYPE: Final = "error.type"
"""Set on failure; ``tool_error`` when the tool result has ``isError``."""
NETWORK_TRANSPORT: Final = "network.transport"
"""``pipe`` for stdio, ``tcp`` for HTTP."""
NETWORK_PROTOCOL_NAME: Final = "network.protocol.name"
"""``http`` for streamable HTTP; unset for stdio."""
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
RPC_RESPONSE_STATUS_CODE: Final = "rpc.response.status_code"
"""JSON-RPC error code of an error response, as a string (e.g. ``-32602``)."""

# --- OpenTelemetry GenAI conventions -----------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
"""``execute_tool`` on tool calls; ``invoke_agent`` on agent spans."""
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
"""Arguments as JSON, always redacted by toolwatch emitters."""
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
"""Tool result; toolwatch emitters never set it (results stay on the agent's host)."""
GEN_AI_TOOL_DEFINITIONS: Final = "gen_ai.tool.definitions"
"""JSON array of listed tool definitions (name, description, parameters schema) on ``tools/list``."""
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
SERVICE_NAME: Final = "service.name"
"""Resource attribute; the last fallback for the agent id."""

OP_EXECUTE_TOOL: Final = "execute_tool"
OP_INVOKE_AGENT: Final = "invoke_agent"
METHOD_TOOLS_CALL: Final = "tools/call"
METHOD_TOOLS_LIST: Final = "tools/list"
METHOD_INITIALIZE: Final = "initialize"
METHOD_LIST_CHANGED: Final = "notifications/tools/list_changed"
ERROR_TOOL: Final = "tool_error"

# --- toolwatch's own keys ----------------------------------------------------------------------
TW_SERVER_NAME: Final = "toolwatch.server.name"
"""Server name from ``initialize`` (the conventions have no key for it)."""
TW_SERVER_VERSION: Final = "toolwatch.server.version"
TW_SERVER_INSTRUCTIONS_SHA256: Final = "toolwatch.server.instructions.sha256"
"""Hash of the server's ``instructions`` from ``initialize``."""
TW_ARGS_BYTES: Final = "toolwatch.args.bytes"
TW_RESULT_BYTES: Final = "toolwatch.result.bytes"
TW_ARGS_LABELS: Final = "toolwatch.args.labels"
"""Kinds of sensitive data seen in the arguments (secret, email, card, url, ip, path, high_entropy, …)."""
TW_RESULT_LABELS: Final = "toolwatch.result.labels"
"""As above for the result, plus ``instructions`` when the result addresses the model."""
TW_ARGS_FINGERPRINTS: Final = "toolwatch.args.fingerprints"
"""Keyed hashes (HMAC-SHA256, truncated) of sensitive values in the arguments."""
TW_RESULT_FINGERPRINTS: Final = "toolwatch.result.fingerprints"
TW_RESULT_SKETCH: Final = "toolwatch.result.sketch"
"""MinHash sketch of a large text result, for near-copy detection."""
TW_ARGS_SKETCH: Final = "toolwatch.args.sketch"
TW_RESULT_INJECTION_SCORE: Final = "toolwatch.result.injection_score"
"""0..1 score of text in the result that addresses the model (indirect prompt injection)."""
TW_ARGS_DESTINATIONS: Final = "toolwatch.args.destinations"
"""Hosts, e-mail domains and URLs named in the arguments."""
TW_TOOL_DEFINITION_SHA256: Final = "toolwatch.tool.definition.sha256"
"""On ``tools/call``: hash of the called tool's canonical definition (name, title, description, input and
output schema, annotations) as last listed in the session; see ``spans.definition_sha256``."""
TW_TOOLS_DEFINITION_SHA256: Final = "toolwatch.tools.definition.sha256"
"""On ``tools/list``: one definition hash per listed tool, in the order of ``gen_ai.tool.definitions``."""
TW_TOOLS_AFTER_LIST_CHANGED: Final = "toolwatch.tools.after_list_changed"
"""On ``tools/list``: True when the server sent ``notifications/tools/list_changed`` before it."""
TW_EMITTER: Final = "toolwatch.emitter"
"""Which toolwatch component made the span: ``client`` (instrumented session) or ``proxy``."""
TW_REDACTED: Final = "toolwatch.redacted"
"""True when the emitter already redacted the arguments."""
