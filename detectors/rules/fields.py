"""The fields a condition can read: one table of name → type and getter, so parser and docs agree.

A field reads the current ``ToolCall``, its capabilities, and the session context the engine
keeps (the previous call in the session, what the session has seen so far, which destinations
are new for the agent). Nothing here holds a raw argument value: ``args`` is the redacted JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Union

from ..events import ToolCall

FieldType = Literal["str", "num", "list"]
Value = Union[str, float, tuple[str, ...]]


@dataclass(slots=True)
class EvalContext:
    """Everything a condition may look at for one call."""

    call: ToolCall
    capabilities: tuple[str, ...] | frozenset[str] = ()
    """Capabilities of ``server/tool``; stored sorted, so outputs and evidence are stable."""
    prev_tool: str = ""
    prev_server: str = ""
    prev_result_labels: tuple[str, ...] = ()
    prev_injection_score: float = 0.0
    prev_capabilities: tuple[str, ...] = ()
    session_calls: int = 0
    session_result_labels: tuple[str, ...] = ()
    session_capabilities: tuple[str, ...] = ()
    session_servers: tuple[str, ...] = ()
    new_destinations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.capabilities, tuple):
            self.capabilities = tuple(sorted(self.capabilities))


@dataclass(slots=True, frozen=True)
class Field:
    type: FieldType
    get: Callable[[EvalContext], Value]
    doc: str


def _s(get: Callable[[EvalContext], str], doc: str) -> Field:
    return Field("str", get, doc)


def _n(get: Callable[[EvalContext], float], doc: str) -> Field:
    return Field("num", get, doc)


def _l(get: Callable[[EvalContext], tuple[str, ...]], doc: str) -> Field:
    return Field("list", get, doc)


FIELDS: dict[str, Field] = {
    "tool": _s(lambda c: c.call.tool, "tool name"),
    "server": _s(lambda c: c.call.server, "server name"),
    "token": _s(lambda c: c.call.token, "`server/tool`"),
    "agent_id": _s(lambda c: c.call.agent_id, "agent id (the unit of a baseline)"),
    "agent_name": _s(lambda c: c.call.agent_name, "agent name"),
    "session_id": _s(lambda c: c.call.session_id, "MCP session id"),
    "server_address": _s(lambda c: c.call.server_address, "where the server is"),
    "source": _s(lambda c: c.call.source, "span convention that carried the call"),
    "error": _s(lambda c: c.call.error_type, "error type, empty when the call succeeded"),
    "args": _s(lambda c: c.call.args_json, "redacted arguments as JSON text"),
    "args.bytes": _n(lambda c: float(c.call.args_bytes), "argument size before redaction"),
    "result.bytes": _n(lambda c: float(c.call.result_bytes), "result size"),
    "duration_ms": _n(lambda c: c.call.duration_ns / 1e6, "call duration in milliseconds"),
    "result.injection_score": _n(lambda c: c.call.result_injection_score, "0..1 prompt-injection score of the result"),
    "args.labels": _l(lambda c: c.call.args_labels, "kinds of sensitive data in the arguments (secret, email, …)"),
    "result.labels": _l(lambda c: c.call.result_labels, "kinds of sensitive data in the result, plus `instructions`"),
    "args.fingerprints": _l(lambda c: c.call.args_fingerprints, "keyed hashes of sensitive argument values"),
    "result.fingerprints": _l(lambda c: c.call.result_fingerprints, "keyed hashes of sensitive result values"),
    "destinations": _l(lambda c: c.call.destinations, "hosts, e-mail domains, URLs named in the arguments"),
    "destinations.new": _l(lambda c: c.new_destinations, "destinations never seen before for this agent"),
    "capabilities": _l(lambda c: c.capabilities, "capabilities of `server/tool` (CapabilityMap)"),
    "prev.tool": _s(lambda c: c.prev_tool, "tool of the previous call in the session"),
    "prev.server": _s(lambda c: c.prev_server, "server of the previous call in the session"),
    "prev.result.labels": _l(lambda c: c.prev_result_labels, "result labels of the previous call in the session"),
    "prev.result.injection_score": _n(lambda c: c.prev_injection_score,
                                      "0..1 prompt-injection score of the previous call's result"),
    "prev.capabilities": _l(lambda c: c.prev_capabilities, "capabilities of the previous call in the session"),
    "session.calls": _n(lambda c: float(c.session_calls), "calls earlier in this session"),
    "session.result.labels": _l(lambda c: c.session_result_labels, "result labels seen earlier in this session"),
    "session.capabilities": _l(lambda c: c.session_capabilities, "capabilities used earlier in this session"),
    "session.servers": _l(lambda c: c.session_servers, "servers called earlier in this session"),
}
"""Every field a condition, an output template or a ``group-by`` may name."""


DIRECT: dict[str, str] = {
    "tool": "call.tool", "server": "call.server", "agent_id": "call.agent_id", "agent_name": "call.agent_name",
    "session_id": "call.session_id", "server_address": "call.server_address", "source": "call.source",
    "error": "call.error_type", "args": "call.args_json", "result.injection_score": "call.result_injection_score",
    "args.labels": "call.args_labels", "result.labels": "call.result_labels",
    "args.fingerprints": "call.args_fingerprints", "result.fingerprints": "call.result_fingerprints",
    "destinations": "call.destinations", "destinations.new": "new_destinations", "capabilities": "capabilities",
    "prev.tool": "prev_tool", "prev.server": "prev_server", "prev.result.labels": "prev_result_labels",
    "prev.result.injection_score": "prev_injection_score", "prev.capabilities": "prev_capabilities",
    "session.result.labels": "session_result_labels", "session.capabilities": "session_capabilities",
    "session.servers": "session_servers",
}
"""Fields whose ``FIELDS`` getter reads one attribute of the context (dotted path): compiled
conditions and correlation groups read these with a C ``attrgetter`` instead of the lambda."""


def render_value(value: Value) -> str:
    """How a field shows in an output template: lists comma-joined, whole numbers without ``.0``."""
    if isinstance(value, tuple):
        return ",".join(value) if value else "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return value or "-"
